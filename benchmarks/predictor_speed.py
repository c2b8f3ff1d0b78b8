"""Prediction throughput of the packaged predictor on CPU, from question text to priors.

Times ``PredictorPriors.priors`` (embedding, regression or kernel, moment matching) on the MATH-500
questions, with the embedding model loaded before the clock starts and a fresh cache folder:

- ``cold``: no static token vector is known yet, so every new token goes through the model
  once (a one-time cost per machine: the vocabulary is finite);
- ``warm``: the in-process tables are emptied and reloaded from the disk cache, as in a new
  process on a machine that has embedded these tokens before (median of ``--repeats``).

    python benchmarks/predictor_speed.py [--benchmark PATH] [--repeats 5] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="optscale-speed-")
os.environ.pop("OPTSCALE_EMBEDDING_CACHE", None)

from optscale.predictor import DEFAULT_MODEL, PredictorPriors, encoder, load, load_problems, shared_data_dir  # noqa: E402


def _timed(source, problems) -> float:
    start = time.perf_counter()
    source.priors(problems.ids, problems.questions)
    return len(problems) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    path = args.benchmark or (shared_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data") / "benchmarks" / "math500.jsonl"
    problems = load_problems(path)
    source = PredictorPriors(load(args.model))
    source.priors(["warm-up"], ["Load the embedding model before timing: what is 1 + 1?"])
    import torch

    cold = _timed(source, problems)
    warm = []
    for _ in range(args.repeats):
        encoder._tokens.clear()
        encoder._memo.clear()
        warm.append(_timed(source, problems))
    params = source.predictor.params
    print(f"{path.name}: {len(problems)} problems; model {args.model.name} ({source.predictor.kind} kind, "
          f"{params.get('embedding', 'static')} embedding); "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"cold cache: {cold:.1f} problems/s")
    print(f"warm cache: {statistics.median(warm):.1f} problems/s (median of {args.repeats}: "
          f"{', '.join(f'{r:.0f}' for r in warm)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
