"""Are wrong answers longer than right ones? Real answer pools against the simulator's assumption.

``learned``'s length feature (the token-count bin of the returned sample) gains partly because
long answers are more often wrong. The simulator (``optscale simulate``) builds that in: a wrong
sample's length is ``wrong_tokens_factor`` (1.5) times what it would be, on top of harder problems
being longer. This script measures the same relation on the shared real answer pools
(``../shared/data/pools/boinf/``: strong reasoning models' answers with real token counts and
graded correctness) and on a simulated pool drawn in the same run, so the assumption can be
judged against data.

Columns, per pool: ``mixed``, problems with both right and wrong answers; ``within``, the median
over those problems of median(tokens of wrong answers) / median(tokens of right ones) (the
length effect at a fixed problem); ``pooled``, mean tokens of all wrong answers / of all right
ones (what a length bin fitted over a whole pool sees: harder problems are both longer and more
often wrong); ``auc``, the probability that a random wrong answer of a mixed problem is longer
than a random right one of the same problem (0.5: length says nothing).

Usage: python benchmarks/answer_lengths.py [--data ../shared/data] [--sim-problems 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from boinf_pools import pools

from optscale.pools import iter_pool
from optscale.simulate import simulate_arrays

PATTERNS = ("math500_*.jsonl.gz", "aime2024_*.jsonl.gz", "gpqa_diamond_*.jsonl.gz")


def length_stats(problems) -> dict:
    """``problems``: (tokens, correct) array pairs, one per problem."""
    ratios, wins, right_all, wrong_all = [], [], [], []
    for tokens, correct in problems:
        right, wrong = tokens[correct], tokens[~correct]
        right_all.append(right)
        wrong_all.append(wrong)
        if right.size and wrong.size:
            ratios.append(np.median(wrong) / np.median(right))
            diff = wrong[:, None] - right[None, :]
            wins.append(((diff > 0).mean() + 0.5 * (diff == 0).mean()))
    right, wrong = np.concatenate(right_all), np.concatenate(wrong_all)
    nan = float("nan")
    return {"problems": len(problems), "mixed": len(ratios),
            "within": float(np.median(ratios)) if ratios else nan,
            "pooled": float(wrong.mean() / right.mean()) if right.size and wrong.size else nan,
            "auc": float(np.mean(wins)) if wins else nan}


def real_pool(path: Path) -> dict:
    problems = [(np.array([s.tokens for s in p.samples], dtype=float), np.array([bool(s.correct) for s in p.samples]))
                for p in iter_pool(path)]
    return length_stats(problems)


def simulated_pool(n_problems: int, n_samples: int, seed: int) -> dict:
    sim = simulate_arrays(n_problems, n_samples, seed)
    return length_stats([(sim.tokens[i].astype(float), sim.correct[i]) for i in range(n_problems)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sim-problems", type=int, default=2000)
    ap.add_argument("--sim-samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [("simulated (default population)", simulated_pool(args.sim_problems, args.sim_samples, args.seed))]
    files = pools(args.data, PATTERNS)
    rows += [(p.name.removesuffix(".jsonl.gz"), real_pool(p)) for p in files]
    print(f"{'pool':42s} {'problems':>8s} {'mixed':>6s} {'within':>7s} {'pooled':>7s} {'auc':>6s}")
    for name, r in rows:
        print(f"{name:42s} {r['problems']:8d} {r['mixed']:6d} {r['within']:7.2f} {r['pooled']:7.2f} {r['auc']:6.3f}")
    if not files:
        print(f"real pools skipped: none under {args.data / 'pools' / 'boinf'} (the shared data set is absent)")
        return
    real = np.array([[r["within"], r["pooled"], r["auc"]] for _, r in rows[1:]])
    sim = rows[0][1]
    print(f"\nreal pools ({len(files)}): within {np.nanmin(real[:, 0]):.2f}-{np.nanmax(real[:, 0]):.2f} "
          f"(median {np.nanmedian(real[:, 0]):.2f}), pooled {real[:, 1].min():.2f}-{real[:, 1].max():.2f} "
          f"(median {np.median(real[:, 1]):.2f}), auc {np.nanmin(real[:, 2]):.3f}-{np.nanmax(real[:, 2]):.3f}")
    print(f"simulator / real median: within {sim['within'] / np.nanmedian(real[:, 0]):.2f}x, "
          f"pooled {sim['pooled'] / np.median(real[:, 1]):.2f}x, auc {sim['auc']:.3f} vs "
          f"{np.nanmedian(real[:, 2]):.3f}")


if __name__ == "__main__":
    main()
