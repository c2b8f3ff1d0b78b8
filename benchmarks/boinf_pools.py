"""Best-of-infinity stopping (``boinf``) on the shared real answer pools, against the vote over all answers.

For every MATH-500 and AIME 2024 pool in ``../shared/data/pools/boinf/`` (answers of strong
reasoning models, 80-160 per problem, no verifier scores) and several random sample orders, with
``n_max`` = all answers of the pool, prints per pool: the accuracy of the majority vote over all
answers, ``boinf``'s accuracy at the default ``bf`` and the mean share of the answers it used,
and the same for ESC and ASC at their defaults. The target (optscale issue 10, section 4): boinf
keeps the vote-over-all accuracy within one problem with <= 25% of the answers on every pool.
``--scan`` also prints, for a grid of ``bf``, the worst pool's accuracy loss (in problems) and
the largest share of answers used, the table the default ``bf`` was chosen from.

With several ``--seeds`` the table is printed for the first and a line per seed sums up the
others (the same ``orders`` with other random permutations).

Usage: python benchmarks/boinf_pools.py [--data ../shared/data] [--orders 8] [--seeds 0 1 2] [--scan]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from optscale.policies import make_policy
from optscale.pools import iter_pool
from optscale.replay import build_batch

PATTERNS = ("math500_*.jsonl.gz", "aime2024_*.jsonl.gz")
SCAN = (3.0, 10.0, 15.0, 20.0, 22.0, 25.0, 27.0, 30.0, 50.0, 100.0, 1000.0)


def correct_share(batch, decisions) -> float:
    """Accuracy over problems and orders of the samples the policy returned (nothing returned: wrong)."""
    chosen = decisions.chosen
    picked = np.take_along_axis(batch.correct, np.maximum(chosen, 0)[..., None], axis=2)[..., 0]
    return float((picked & (chosen >= 0)).mean())


def used_share(batch, decisions) -> float:
    """Mean share of the available answers the policy drew."""
    return float((decisions.n_used / batch.available[:, None]).mean())


def meets(row: dict, bf: float) -> bool:
    """The target: accuracy within one problem of the vote over all answers, with <= 25% of them."""
    acc, used = row["boinf"][bf]
    return (acc - row["vote"]) * row["problems"] >= -1.0 and used <= 0.25


def token_share(batch, decisions) -> float:
    """Tokens the policy spent over the tokens of all the answers (the vote over all answers' cost)."""
    n = batch.shape[2]
    used = np.arange(n)[None, None, :] < decisions.n_used[..., None]
    return float(np.where(used, batch.tokens, 0.0).sum() / batch.tokens.sum())


def pools(data: Path) -> list[Path]:
    return [p for pattern in PATTERNS for p in sorted((data / "pools" / "boinf").glob(pattern))]


def evaluate_pool(path: Path, orders: int, seed: int, bfs) -> dict:
    problems = list(iter_pool(path))
    batch = build_batch(problems, orders=orders, seed=seed)
    n = int(batch.available.max())
    out = {"pool": path.name.removesuffix(".jsonl.gz"), "problems": len(problems), "answers": n}
    vote = make_policy("sc", n).replay(batch)
    out["vote"] = correct_share(batch, vote)
    for name in ("esc", "asc"):
        d = make_policy(name, n).replay(batch)
        out[name] = (correct_share(batch, d), used_share(batch, d))
    out["boinf"] = {}
    for bf in bfs:
        d = make_policy("boinf", n, bf=bf).replay(batch)
        out["boinf"][bf] = (correct_share(batch, d), used_share(batch, d))
        if bf == make_policy("boinf", 1).bf:
            out["tokens"] = token_share(batch, d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--orders", type=int, default=8, help="random sample orders per problem")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random orders")
    ap.add_argument("--scan", action="store_true", help="also scan bf and print the worst pool per bf")
    args = ap.parse_args()
    files = pools(args.data)
    if not files:
        print(f"skipped: no answer pools under {args.data / 'pools' / 'boinf'} (the shared data set is absent)")
        return
    default_bf = make_policy("boinf", 1).bf
    bfs = sorted(set(SCAN) | {default_bf}) if args.scan else [default_bf]
    start = time.perf_counter()
    runs = {seed: [evaluate_pool(p, args.orders, seed, bfs) for p in files] for seed in args.seeds}
    rows = runs[args.seeds[0]]
    print(f"boinf (bf={default_bf:g}) vs the vote over all answers; {args.orders} random orders (seed "
          f"{args.seeds[0]}); accuracy in %, used = mean share of the answers drawn, tokens = share of all answers' tokens")
    head = (f"{'pool':36s} {'P':>4s} {'N':>4s} {'vote@all':>8s} {'boinf':>6s} {'diff(problems)':>14s} {'used':>6s}"
            f" {'tokens':>6s} {'ESC':>6s} {'used':>6s} {'ASC':>6s} {'used':>6s}  target")
    print(head)
    print("-" * len(head))
    for r in rows:
        acc, used = r["boinf"][default_bf]
        diff = (acc - r["vote"]) * r["problems"]
        print(f"{r['pool']:36s} {r['problems']:4d} {r['answers']:4d} {100 * r['vote']:8.2f} {100 * acc:6.2f} "
              f"{diff:+14.2f} {100 * used:5.1f}% {100 * r['tokens']:5.1f}% {100 * r['esc'][0]:6.2f} {100 * r['esc'][1]:5.1f}% "
              f"{100 * r['asc'][0]:6.2f} {100 * r['asc'][1]:5.1f}%  {'met' if meets(r, default_bf) else 'MISSED'}")
    print("\nper seed: pools meeting the target, worst accuracy change (problems), largest and mean share used")
    for seed, seed_rows in runs.items():
        diffs = [(r["boinf"][default_bf][0] - r["vote"]) * r["problems"] for r in seed_rows]
        used = [r["boinf"][default_bf][1] for r in seed_rows]
        print(f"seed {seed}: {sum(meets(r, default_bf) for r in seed_rows)}/{len(seed_rows)} met, worst "
              f"{min(diffs):+.2f}, used max {100 * max(used):.1f}% mean {100 * np.mean(used):.1f}%")
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.scan:
        print("\nbf scan over all seeds: worst pool's accuracy change vs vote@all (problems), largest / mean share "
              "of answers used, pools meeting the target (all seeds together)")
        print(f"{'bf':>8s} {'worst diff':>10s} {'worst pool':36s} {'max used':>8s} {'mean used':>9s} {'met':>7s}")
        every = [r for seed_rows in runs.values() for r in seed_rows]
        for bf in bfs:
            diffs = [((r["boinf"][bf][0] - r["vote"]) * r["problems"], r["pool"]) for r in every]
            used = [r["boinf"][bf][1] for r in every]
            worst = min(diffs)
            print(f"{bf:8g} {worst[0]:+10.2f} {worst[1]:36s} {100 * max(used):7.1f}% {100 * np.mean(used):8.1f}% "
                  f"{sum(meets(r, bf) for r in every):>3d}/{len(every)}")

if __name__ == "__main__":
    sys.exit(main())
