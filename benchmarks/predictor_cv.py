"""5-fold cross-validation of every predictor variant on the MATH score moments, in one run.

Each variant is refitted on the same grouped folds as the constant baseline (training mean),
and the RMSE of the predicted score mean and std is reported with its reduction against that
baseline. Targets of the project: at least 25% on the mean and 15% on the std; a plain TF-IDF +
level ridge reaches about 19% and 10%.

    python benchmarks/predictor_cv.py [--data PATH] [--folds 5] [--seed 0] [--json OUT]

Needs the ``predictor`` extra and the shared data (or ``--data``). Embeddings of the 4,501
questions take minutes on 2 cores (contextual); set ``OPTSCALE_EMBEDDING_CACHE=DIR``
to reuse them across runs. Static token vectors are cached in ``~/.cache/optscale``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from optscale.predictor import EmbeddingPredictor, KernelPredictor, MetadataPredictor, load_training, shared_data_dir
from optscale.predictor.evaluate import cross_validated

VARIANTS = {
    "metadata (level + subject ridge)": lambda: MetadataPredictor(),
    "tfidf + metadata ridge": lambda: EmbeddingPredictor(block_weights={"tfidf": 1.0, "meta": 1.0}),
    "contextual embedding ridge": lambda: EmbeddingPredictor(embedding="contextual", block_weights={"embedding": 1.0}),
    "static embedding ridge": lambda: EmbeddingPredictor(block_weights={"embedding": 1.0}),
    "contextual embedding + tfidf + metadata ridge": lambda: EmbeddingPredictor(embedding="contextual"),
    "static embedding + tfidf + metadata, logit/log targets": lambda: EmbeddingPredictor(target="logit"),
    "static embedding + tfidf + metadata ridge": lambda: EmbeddingPredictor(),
    "static embedding + tfidf + metadata kernel ridge (default)": lambda: KernelPredictor(),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    data_path = args.data or (shared_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data") / "score-moments" / "math_train.jsonl"
    data = load_training(data_path)
    print(f"{data_path}: {len(data)} problems, {args.folds}-fold grouped cross-validation, seed {args.seed}")
    header = f"{'variant':60s} {'mean RMSE':>10s} {'vs const':>9s} {'std RMSE':>10s} {'vs const':>9s} {'cov90 m/s':>10s} {'s':>6s}"
    print(header)
    results = {}
    for name, make in VARIANTS.items():
        start = time.perf_counter()
        _, report = cross_validated(make(), data, args.folds, args.seed)
        elapsed = time.perf_counter() - start
        if not results:
            const = report["constant"]
            print(f"{'constant (training mean)':60s} {const['mean']['rmse']:10.5f} {'':9s} {const['std']['rmse']:10.5f}")
            results["constant"] = const
        model, red = report["model"], report["rmse_reduction_vs_constant"]
        cover = model["coverage"]
        print(f"{name:60s} {model['mean']['rmse']:10.5f} {100 * red['mean']:8.1f}% {model['std']['rmse']:10.5f} "
              f"{100 * red['std']:8.1f}% {cover['mean']['0.9']:5.2f}/{cover['std']['0.9']:4.2f} {elapsed:6.1f}")
        results[name] = {**model, "rmse_reduction_vs_constant": red, "seconds": elapsed}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
