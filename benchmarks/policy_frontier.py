"""Every registered policy against the envelope of every fixed-N method, settings chosen on calibration.

Pools: simulated (``optscale simulate``), the default population and its weak-verifier variant
(``verifier="weak"``), PROBLEMS x 64 samples, each replayed in ORDERS sample orders. For each of
6 split seeds the problems are halved (calibration / held-out); for each budget N_max in
16/32/64 and each policy, every setting of a small grid is replayed and the setting is chosen on
the calibration half only; the numbers printed are the held-out half's.

Baseline: the *envelope* of every fixed-N method (Best-of-N, majority vote, score-weighted vote;
N = 1..N_max): the upper concave hull of the (mean tokens, accuracy) points, interpolated
linearly (mixing two fixed budgets reaches any point on the segment), flat beyond its most
accurate point. Computed here; ``optscale.replay`` gets its own envelope in the same issue.

Objectives (chosen on calibration): ``gain``, the setting with the largest accuracy gain over the
envelope at its own mean tokens; ``match``, the cheapest setting whose accuracy reaches the
envelope's best (its most accurate fixed-N method within N_max).

Columns: held-out accuracy (mean over splits); tok/N: mean tokens as a share of fixed N_max's;
gain: accuracy minus the held-out envelope at the policy's held-out tokens, in points (mean and
range over splits); beat: splits with gain > 0; match: splits whose ``match`` choice reached the
held-out envelope's best accuracy with at most 50% of that point's tokens, and its mean token
share of that point.

Targets (issue 10): the recommended policy (``learned``) beats the envelope in >= 5 of 6 splits
at every budget, and reaches the envelope's best accuracy with <= 50% of its tokens at one budget
or more. Usage: python benchmarks/policy_frontier.py [--quick] [--problems 2000] [--orders 2]
[--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from optscale.errors import InputError
from optscale.policies import POLICIES, make_policy
from optscale.policies.base import ReplayBatch
from optscale.policies.learned import fit_table, table_states
from optscale.replay import split_problems, subset
from optscale.replay.batch import order_indices
from optscale.simulate import simulate_arrays

BUDGETS = (16, 32, 64)
SPLITS = 6
RULES = ("best", "majority", "weighted")

#: Small settings grids (policies absent from the registry are skipped; unknown ones run with defaults).
GRIDS: dict[str, list[dict]] = {
    "optscale0": [{"s_min": s, "alpha": a} for s in (0.9, 0.95, 0.99) for a in (0.5, 0.9)],
    "optscale": [{"s_min": s, "alpha": a} for s in (0.9, 0.95, 0.99) for a in (0.5, 0.9)],
    "optscale-t": [{"s_min": s, "alpha": a} for s in (0.9, 0.95, 0.99) for a in (0.5, 0.9)],
    "esc": [{"window": w} for w in (2, 3, 4, 6)],
    "asc": [{"threshold": t} for t in (0.8, 0.9, 0.95, 0.99)],
    "firstpass": [{"t": t} for t in (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)],
    "agree": [{"t": t, "k": k} for t in (0.8, 0.9, 0.95, 0.98) for k in (2, 3)],
    "deepconf": [{"tau": tau, "warmup": w} for tau in (0.7, 0.8, 0.9, 0.95) for w in (2, 4, 8)],
    "boinf": [{"bf": bf} for bf in (3.0, 10.0, 30.0, 100.0)],
    "pandora": [{"cost": c} for c in (0.0003, 0.001, 0.003, 0.01)],
    "beacon": [{}],
}
#: Fixed-N rules are the envelope itself.
FIXED = {"bon", "sc"}
#: learned: one table per (selection rule, token budget in samples' worth: budget = x / N_max, or lam = 0),
#: each fitted on the calibration half with the default features.
LEARNED_SELECT = ("best", "weighted")
LEARNED_SAMPLES = (1.25, 1.5, 2.0, 3.0, None)


def learned_grid(n_max: int) -> list[dict]:
    return [{"select": s, **({"lam": 0.0} if x is None else {"budget": x / n_max})}
            for s in LEARNED_SELECT for x in LEARNED_SAMPLES]


@dataclass
class Outcome:
    """Per-problem accuracy and mean tokens of one policy setting (means over orders)."""

    correct: np.ndarray
    tokens: np.ndarray


def simulated_batch(problems: int, orders: int, verifier: str, seed: int) -> ReplayBatch:
    sim = simulate_arrays(problems, 64, seed, verifier=verifier)
    p, n = sim.scores.shape
    idx = order_indices(np.full(p, n), n, orders, seed)
    take = lambda a: np.take_along_axis(a[:, None, :].repeat(orders, 1), idx, axis=2)  # noqa: E731
    return ReplayBatch(score=take(sim.scores), answer=take(sim.answer), tokens=take(sim.tokens.astype(float)),
                       correct=take(sim.correct), available=np.full(p, n), ids=tuple(f"sim/{i}" for i in range(p)),
                       questions=(None,) * p)


def outcome(batch: ReplayBatch, policy) -> Outcome:
    d = policy.replay(batch)
    picked = np.take_along_axis(batch.correct, np.maximum(d.chosen, 0)[..., None], axis=2)[..., 0] & (d.chosen >= 0)
    used = np.arange(batch.shape[2])[None, None, :] < d.n_used[..., None]
    tokens = np.where(used, batch.tokens, 0.0).sum(axis=2)
    return Outcome(picked.mean(axis=1), tokens.mean(axis=1))


def fixed_curves(batch: ReplayBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per rule: per-problem accuracy and tokens of fixed N = 1..64, shape (64, P)."""
    p, r, n = batch.shape
    cum = np.cumsum(batch.tokens, axis=2).mean(axis=1).T  # (n, P)
    out = {}
    for rule in RULES:
        _, chosen = table_states(batch.flat("score"), batch.flat("answer"), batch.flat("tokens"), n, np.zeros(0), 1, False,
                                 np.zeros(0), rule)
        right = np.take_along_axis(batch.flat("correct"), np.maximum(chosen, 0), axis=1) & (chosen >= 0)
        out[rule] = (right.reshape(p, r, n).mean(axis=1).T, cum)
    return out


class Envelope:
    """Upper concave hull of fixed-N points (mean tokens, accuracy), flat beyond its best point."""

    def __init__(self, tokens: np.ndarray, accuracy: np.ndarray):
        order = np.lexsort((-accuracy, tokens))
        t, a = tokens[order], accuracy[order]
        hull: list[int] = []
        for i in range(len(t)):
            if hull and t[i] == t[hull[-1]]:
                continue
            while len(hull) >= 2:
                (t1, a1), (t2, a2) = (t[hull[-2]], a[hull[-2]]), (t[hull[-1]], a[hull[-1]])
                if (a2 - a1) * (t[i] - t1) <= (a[i] - a1) * (t2 - t1):
                    hull.pop()
                else:
                    break
            hull.append(i)
        ht, ha = t[hull], a[hull]
        top = int(np.argmax(ha))
        self.t, self.a = ht[: top + 1], ha[: top + 1]
        self.best_accuracy, self.best_tokens = float(self.a[-1]), float(self.t[-1])

    def __call__(self, tokens: float) -> float:
        return float(np.interp(tokens, self.t, self.a, left=np.nan, right=self.best_accuracy))


def envelope(curves, rows: np.ndarray, n_max: int) -> Envelope:
    tok, acc = [], []
    for right, cum in curves.values():
        acc.append(right[:n_max, rows].mean(axis=1))
        tok.append(cum[:n_max, rows].mean(axis=1))
    return Envelope(np.concatenate(tok), np.concatenate(acc))


def choose(points: list[tuple[float, float]], env: Envelope, objective: str) -> int | None:
    """Index of the chosen (tokens, accuracy) point on calibration, or None when none qualifies."""
    if objective == "gain":
        gains = [a - env(t) for t, a in points]
        return int(np.nanargmax(gains))
    ok = [i for i, (t, a) in enumerate(points) if a >= env.best_accuracy - 1e-12]
    return min(ok, key=lambda i: points[i][0]) if ok else None


def run_pool(batch: ReplayBatch, names: list[str], budgets, splits: int, notes: list[str]) -> dict:
    p = batch.shape[0]
    curves = fixed_curves(batch)
    halves = [split_problems(p, 0.5, seed) for seed in range(splits)]
    results: dict = {}
    for n_max in budgets:
        envs = [(envelope(curves, c, n_max), envelope(curves, h, n_max)) for c, h in halves]
        fixed_tok = [curves["best"][1][n_max - 1, h].mean() for _, h in halves]
        rows = {}
        for name in names:
            per_split = []  # one list of Outcome per split (grid settings)
            if name == "learned":
                grid = learned_grid(n_max)
                for calib, _ in halves:
                    cal = subset(batch, calib)
                    outs = []
                    for g in grid:
                        table = fit_table(cal, n_max, **g)
                        outs.append(outcome(batch, make_policy("learned", n_max, table=table)))
                    per_split.append(outs)
            elif name == "optscale-t":
                from optscale.priors import PopulationPriors

                grid = GRIDS[name]
                for calib, _ in halves:
                    prior = PopulationPriors.fit([batch.score[i, 0] for i in calib], [batch.ids[i] for i in calib],
                                                 strict=False)
                    per_split.append([outcome(batch, make_policy(name, n_max, priors=prior, **g)) for g in grid])
            else:
                grid, outs = [], []
                for g in GRIDS.get(name, [{}]):
                    try:
                        pol = make_policy(name, n_max, **g)
                    except InputError as exc:
                        notes.append(f"{name}@{n_max} {g}: skipped ({exc})")
                        continue
                    grid.append(g)
                    outs.append(outcome(batch, pol))
                per_split = [outs] * splits
            if not grid:
                continue
            rows[name] = summarise(per_split, grid, halves, envs, fixed_tok)
        results[n_max] = {"rows": rows, "envelope_best": [float(e[1].best_accuracy) for e in envs],
                          "envelope_best_share": [float(e[1].best_tokens / f) for e, f in zip(envs, fixed_tok)]}
    return results


def summarise(per_split, grid, halves, envs, fixed_tok) -> dict:
    gain, acc, share, beat, chosen, matched, match_share = [], [], [], 0, [], 0, []
    for outs, (calib, held), (env_c, env_h), ftok in zip(per_split, halves, envs, fixed_tok):
        pts_c = [(o.tokens[calib].mean(), o.correct[calib].mean()) for o in outs]
        pts_h = [(o.tokens[held].mean(), o.correct[held].mean()) for o in outs]
        i = choose(pts_c, env_c, "gain")
        t, a = pts_h[i]
        g = a - env_h(t)
        gain.append(g)
        acc.append(a)
        share.append(t / ftok)
        beat += g > 0
        chosen.append(grid[i])
        j = choose(pts_c, env_c, "match")
        if j is not None:
            t, a = pts_h[j]
            match_share.append(t / env_h.best_tokens)
            matched += (a >= env_h.best_accuracy - 1e-12) and t <= 0.5 * env_h.best_tokens
    return {"accuracy": float(np.mean(acc)), "token_share": float(np.mean(share)), "gain": [float(x) for x in gain],
            "beat": int(beat), "chosen": chosen, "matched": int(matched),
            "match_share": float(np.mean(match_share)) if match_share else None}


def print_table(pool: str, n_max: int, res: dict, splits: int) -> None:
    best = np.mean(res["envelope_best"])
    print(f"\n{pool} pool, N_max {n_max}: envelope best {100 * best:.2f}% at "
          f"{100 * np.mean(res['envelope_best_share']):.0f}% of fixed-{n_max} tokens (held-out, mean of {splits})")
    print(f"{'policy':<11} {'acc %':>6} {'tok/N':>6} {'gain pp (range)':>22} {'beat':>5} {'match':>6} {'tok/best':>8}")
    for name, r in sorted(res["rows"].items(), key=lambda kv: -np.mean(kv[1]["gain"])):
        g = 100 * np.array(r["gain"])
        ms = "-" if r["match_share"] is None else f"{100 * r['match_share']:.0f}%"
        print(f"{name:<11} {100 * r['accuracy']:6.2f} {100 * r['token_share']:5.0f}% "
              f"{g.mean():+7.2f} ({g.min():+.2f}..{g.max():+.2f}) {r['beat']:>3}/{splits} "
              f"{r['matched']:>3}/{splits} {ms:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 problems, 1 order")
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--splits", type=int, default=SPLITS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated pools")
    ap.add_argument("--pools", default="default,weak")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--policies", default="", help="comma-separated subset (default: every registered policy)")
    ap.add_argument("--json", default="", help="also write every number to this JSON file")
    args = ap.parse_args()
    problems, orders = (600, 1) if args.quick else (args.problems, args.orders)
    names = [n for n in (args.policies.split(",") if args.policies else POLICIES.names()) if n not in FIXED]
    budgets = [int(b) for b in args.budgets.split(",")]
    out, notes = {}, []
    start = time.perf_counter()
    for pool in args.pools.split(","):
        batch = simulated_batch(problems, orders, pool, args.seed)
        out[pool] = run_pool(batch, names, budgets, args.splits, notes)
        for n_max in budgets:
            print_table(pool, n_max, out[pool][n_max], args.splits)
    print(f"\n{problems} problems x 64 samples x {orders} orders per pool, {args.splits} splits; "
          f"{time.perf_counter() - start:.0f} s")
    for note in sorted(set(notes)):
        print("note:", note)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"problems": problems, "orders": orders, "results": out, "notes": notes}, fh, indent=1,
                      default=str)


if __name__ == "__main__":
    main()
