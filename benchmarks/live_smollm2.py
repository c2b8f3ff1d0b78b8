"""Live OptScale vs fixed Best-of-N on GSM8K against llama.cpp serving SmolLM2-135M-Instruct.

Both runs use the same server, scorer (SmolLM2 itself as LLM judge), sampling settings and
run seed, so sample ``k`` of a problem is the same response in both (llama.cpp honours
per-request seeds). Printed: samples, tokens, accuracy and wall time of each, and the
ratios. The model is tiny: expect accuracy near zero and judge scores squeezed into the
middle of [0, 1], so the paper's ``s_min = 0.95`` would always ask for the whole budget; the
live OptScale run uses ``--s-min`` (default 0.6), and the paper's setting is replayed on the
Best-of-N samples for comparison.

Usage: python benchmarks/live_smollm2.py [--problems 50] [--n-max 8] [--max-tokens 96] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from optscale.answers import grade
from optscale.io import iter_objects, write_json
from optscale.live.config import build_config
from optscale.live.local import MODEL_ALIAS, LocalServer
from optscale.live.runner import run_live
from optscale.policies import Decision, Problem, Sample, make_policy

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks" / "gsm8k.jsonl"


def summarise(name: str, outcome) -> tuple[int, int, float]:
    done = [r for r in outcome.results if not r.error]
    samples = sum(r.n_samples for r in done)
    tokens = sum(r.tokens for r in done)
    acc = 100 * statistics.mean(bool(r.correct) for r in done)
    flagged = sum(r.summary["n_flagged"] for r in done)
    print(f"   {name:22s} problems {len(done):3d}  samples {samples:4d}  tokens {tokens:7d}  accuracy {acc:5.1f}%  "
          f"flagged {flagged:3d}  wall {outcome.wall_s:7.1f} s")
    return samples, tokens, outcome.wall_s


def replay(outcome, n_max: int, **settings) -> tuple[int, int, float]:
    """The paper's sequential rule on the Best-of-N samples, in the order they were drawn."""
    policy = make_policy("optscale", n_max, **settings)
    samples = tokens = right = 0
    for problem, result in zip(outcome.problems, outcome.results):
        episode = policy.start(Problem(problem.id, problem.question))
        for record in result.samples:
            samples += 1
            tokens += record["tokens"]
            if episode.observe(Sample(record["score"], record["answer"], record["tokens"])) is Decision.STOP:
                break
        right += grade(problem.answer, episode.result().answer)
    return samples, tokens, 100 * right / len(outcome.results)


def texts(folder: Path) -> dict[str, str]:
    """Sample id -> response text, from the run's log (results keep no texts in memory)."""
    return {r["id"]: r["text"] for _, r in iter_objects(folder / "samples.jsonl") if r["type"] == "sample"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(GSM8K))
    ap.add_argument("--problems", type=int, default=50)
    ap.add_argument("--n-max", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--s-min", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="live-smollm2-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"SmolLM2-135M-Instruct (llama.cpp, 2 cores), {args.problems} GSM8K problems, N_max {args.n_max}, "
          f"{args.max_tokens} tokens per response, judge scorer, seed {args.seed}; runs in {out}")
    with LocalServer(log=out / "server.log") as server:
        common = dict(dataset=args.data, limit=args.problems, base_url=[server.base_url], model=MODEL_ALIAS,
                      scorer="judge", n_max=args.n_max, max_tokens=args.max_tokens, seed=args.seed,
                      concurrency=2, in_flight=2)
        bon = asyncio.run(run_live(build_config({}, dict(common, out=str(out / "bon"), policy="bon"))))
        opt = asyncio.run(run_live(build_config({}, dict(common, out=str(out / "optscale"), policy="optscale",
                                                         policy_settings={"s_min": args.s_min}))))
    print("live runs:")
    b = summarise("best-of-N", bon)
    o = summarise(f"optscale s_min={args.s_min:g}", opt)
    print(f"   optscale / best-of-N: samples x{o[0] / b[0]:.2f} ({100 * (1 - o[0] / b[0]):.0f}% saved), "
          f"tokens x{o[1] / b[1]:.2f} ({100 * (1 - o[1] / b[1]):.0f}% saved), wall x{o[2] / b[2]:.2f}")
    bon_texts, opt_texts = texts(out / "bon"), texts(out / "optscale")
    same = sum(1 for p, q in zip(bon.results, opt.results) for a, c in zip(p.samples, q.samples)
               if a["index"] == c["index"] and bon_texts[a["id"]] == opt_texts[c["id"]])
    print(f"   responses identical at the same (problem, index) in both runs: {same} of "
          f"{sum(min(len(p.samples), len(q.samples)) for p, q in zip(bon.results, opt.results))}")
    scores = [s["raw_score"] for r in bon.results for s in r.samples]
    print(f"   judge scores of the best-of-N samples: mean {statistics.mean(scores):.2f}, sd "
          f"{statistics.pstdev(scores):.2f}, max {max(scores):.2f}")
    print("replayed on the best-of-N samples (same policy objects, offline):")
    for s_min in sorted({0.95, 0.8, args.s_min, 0.5}, reverse=True):
        s, t, acc = replay(bon, args.n_max, s_min=s_min)
        label = f"s_min={s_min:g}" + (" (paper)" if s_min == 0.95 else "")
        print(f"   optscale {label:17s} samples {s:4d} (x{s / b[0]:.2f})  tokens {t:7d} (x{t / b[1]:.2f})  "
              f"accuracy {acc:5.1f}%")
    write_json(out / "summary.json", {"bon": b, "optscale": o}, indent=None)


if __name__ == "__main__":
    main()
