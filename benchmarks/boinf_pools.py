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

**learned beside it.** ``learned`` needs a calibration pool: for each of ``--splits`` split seeds
the problems of a pool are halved (:func:`optscale.replay.split_problems`), a table is fitted on
the calibration half with ``select=majority`` (answers only: the pools have no scores, so the
table has no score features) at ``--learned-budget`` x the tokens of all answers, and it is
replayed on the held-out half; boinf, ESC, ASC and the vote over all answers are scored on the
same held-out problems. The second table prints the means over splits (accuracy change in
held-out problems).

**Out-of-sample check of boinf's default.** ``bf`` = 25 was chosen on the MATH-500 and AIME pools;
the GPQA-Diamond pools (``gpqa_diamond_*``, 4 choices, never used to choose it) are printed
separately: accuracy against the vote over all answers, and the share of answers used.

Usage: python benchmarks/boinf_pools.py [--data ../shared/data] [--orders 8] [--seeds 0 1 2] [--scan]
[--splits 3] [--learned-budget 0.25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from optscale.policies import make_policy
from optscale.policies.learned import fit_table
from optscale.pools import iter_pool
from optscale.replay import build_batch, split_problems, subset

PATTERNS = ("math500_*.jsonl.gz", "aime2024_*.jsonl.gz")
#: Pools never used to choose boinf's default bf (the out-of-sample check).
HELD_OUT_PATTERNS = ("gpqa_diamond_*.jsonl.gz",)
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


def pools(data: Path, patterns=PATTERNS) -> list[Path]:
    return [p for pattern in patterns for p in sorted((data / "pools" / "boinf").glob(pattern))]


def learned_on_halves(path: Path, orders: int, seed: int, splits: int, budget: float) -> dict:
    """learned (fitted on a calibration half, select=majority) and the others on the held-out half,
    averaged over ``splits`` split seeds; accuracy changes in held-out problems."""
    batch = build_batch(list(iter_pool(path)), orders=orders, seed=seed, source=path.name)
    n = int(batch.available.max())
    rows: dict[str, list] = {k: [] for k in ("vote", "learned", "boinf", "esc", "asc")}
    fit_s = 0.0
    for split in range(splits):
        calib, held = split_problems(batch.shape[0], 0.5, split)
        cal, test = subset(batch, calib), subset(batch, held)
        t0 = time.perf_counter()
        table = fit_table(cal, n, "majority", budget=budget)
        fit_s += time.perf_counter() - t0
        vote = correct_share(test, make_policy("sc", n).replay(test))
        rows["vote"].append(vote)
        for name, pol in (("learned", make_policy("learned", n, table=table)), ("boinf", make_policy("boinf", n)),
                          ("esc", make_policy("esc", n)), ("asc", make_policy("asc", n))):
            d = pol.replay(test)
            rows[name].append(((correct_share(test, d) - vote) * len(held), used_share(test, d), token_share(test, d)))
    out = {"pool": path.name.removesuffix(".jsonl.gz"), "held_out": len(held), "vote": float(np.mean(rows["vote"])),
           "fit_s": fit_s / splits}
    for name in ("learned", "boinf", "esc", "asc"):
        arr = np.array(rows[name])
        out[name] = {"diff": float(arr[:, 0].mean()), "worst": float(arr[:, 0].min()), "used": float(arr[:, 1].mean()),
                     "tokens": float(arr[:, 2].mean())}
    return out


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
    ap.add_argument("--splits", type=int, default=3, help="calibration/held-out split seeds for learned (0: skip)")
    ap.add_argument("--learned-budget", type=float, default=0.25,
                    help="learned: share of all answers' tokens to spend on the calibration half")
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
    oos = pools(args.data, HELD_OUT_PATTERNS)
    if oos:
        print(f"\nout-of-sample check of the default bf={default_bf:g} (chosen on MATH-500 and AIME, never on these), "
              f"{args.orders} orders, seeds {args.seeds}: accuracy vs the vote over all answers")
        print(f"{'pool':36s} {'P':>4s} {'N':>4s} {'vote@all':>8s} {'boinf':>6s} {'diff(problems)':>14s} {'worst':>6s} "
              f"{'used':>6s} {'tokens':>6s}")
        for path in oos:
            res = [evaluate_pool(path, args.orders, seed, [default_bf]) for seed in args.seeds]
            diffs = [(r["boinf"][default_bf][0] - r["vote"]) * r["problems"] for r in res]
            r, vote = res[0], np.mean([x["vote"] for x in res])
            print(f"{r['pool']:36s} {r['problems']:4d} {r['answers']:4d} {100 * vote:8.2f} "
                  f"{100 * np.mean([x['boinf'][default_bf][0] for x in res]):6.2f} {np.mean(diffs):+14.2f} "
                  f"{min(diffs):+6.2f} {100 * np.mean([x['boinf'][default_bf][1] for x in res]):5.1f}% "
                  f"{100 * np.mean([x['tokens'] for x in res]):5.1f}%")
    if args.splits > 0:
        print(f"\nlearned (select=majority, fitted on a calibration half at {args.learned_budget:g} x all answers' "
              f"tokens) vs boinf/ESC/ASC on the held-out half; means over {args.splits} splits, {args.orders} orders; "
              "diff = accuracy change vs the vote over all answers of the held-out half, in problems (worst split)")
        print(f"{'pool':36s} {'held':>4s} {'vote@all':>8s}" + "".join(
            f" {name + ' diff':>16s} {'used':>6s} {'tok':>6s}" for name in ("learned", "boinf", "esc", "asc")))
        for path in files + oos:
            r = learned_on_halves(path, args.orders, args.seeds[0], args.splits, args.learned_budget)
            cells = "".join(f" {r[k]['diff']:+7.2f} ({r[k]['worst']:+6.2f}) {100 * r[k]['used']:5.1f}% "
                            f"{100 * r[k]['tokens']:5.1f}%" for k in ("learned", "boinf", "esc", "asc"))
            print(f"{r['pool']:36s} {r['held_out']:4d} {100 * r['vote']:8.2f}{cells}   (fit {r['fit_s']:.1f} s)")

if __name__ == "__main__":
    sys.exit(main())
