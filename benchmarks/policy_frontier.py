"""Every registered policy against the envelope of every fixed-N method, settings chosen on calibration.

Pools: simulated (``optscale simulate``), the default population and its weak-verifier variant
(``verifier="weak"``), PROBLEMS x 64 samples, each replayed in ORDERS sample orders. For each of
6 split seeds the problems are halved (calibration / held-out, :func:`optscale.replay.split_problems`);
for each budget N_max in 16/32/64 and each policy, every setting of a small grid is replayed and
the setting is chosen on the calibration half only; the numbers printed are the held-out half's.

Baseline and selection are the library's (:mod:`optscale.replay.metrics`, the machinery of
``optscale sweep``): the fixed curves of every selection rule (best score, majority, score-weighted
vote; N = 1..N_max), their upper concave envelope at the policy's mean tokens, the paired bootstrap
interval of the gain, and the sweep objectives, each decided on the calibration half:

- ``gain``: the setting with the largest positive gain over the calibration envelope (none: not met);
- ``match``: the cheapest setting whose calibration accuracy reaches the calibration envelope's
  best accuracy (its most accurate fixed method up to N_max; none: not met).

Columns: held-out accuracy of the ``gain`` choice (mean over splits); tok/N: its mean tokens as a
share of fixed BoN@N_max's; met: splits where the ``gain`` objective was met on calibration (a
setting was chosen); gain: held-out accuracy minus the held-out envelope at its held-out tokens,
in points, mean and range over the met splits only ("not met" where none was; rows are sorted by
that mean, policies met in no split last); beat:
splits with gain > 0 (ci: whole 95% paired interval > 0); cal. gain and its beat: the same against
the calibrated envelope (:meth:`optscale.replay.Baseline.calibrated`: the fixed methods on the
calibration half's envelope, measured on the held-out half: a fixed method tuned like the policy,
where the held-out envelope picks its rule and N on the held-out problems in hindsight); match: splits whose ``match`` choice
reached the held-out envelope's best accuracy with at most 50% of that method's tokens; tok/best:
that choice's mean token share of the envelope's best method (over splits where one was chosen).

``learned`` is fitted per split on the calibration half with the default flags of ``optscale policy
fit`` (:func:`optscale.policies.learned.cv.fit_auto`: selection rule, features and shrinkage chosen
by 5-fold cross-validation inside the calibration half), one table per budget of ``learned_grid``;
the budget is chosen like every other policy's setting, on calibration outcomes, here in-sample
(each table replayed on its own calibration problems: the tables are built with ``strict=False``
for that; the reported numbers are always the held-out half's).

Targets (issue 10): the recommended policy beats the envelope in >= 5 of 6 splits at every budget,
and reaches the envelope's best accuracy with <= 50% of its tokens at one budget or more.
Usage: python benchmarks/policy_frontier.py [--quick] [--problems 2000] [--orders 2] [--seed 0]
[--policies a,b] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from optscale.errors import InputError
from optscale.policies import POLICIES, make_policy
from optscale.policies.base import ReplayBatch
from optscale.policies.learned.cv import fit_auto
from optscale.replay import TIE, Baseline, collect, outcome_of, policy_stats, split_problems, subset
from optscale.replay.batch import order_indices
from optscale.replay.sweep import choose
from optscale.simulate import simulate_arrays

BUDGETS = (16, 32, 64)
SPLITS = 6
#: Share of the envelope's best method's tokens the ``match`` target allows.
MATCH_SHARE = 0.5

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
#: learned: one table (default flags of ``policy fit``) per token budget in samples' worth: budget = x / N_max.
LEARNED_SAMPLES = (2.0, 4.0)


def learned_grid(n_max: int) -> list[dict]:
    return [{"budget": x / n_max} for x in LEARNED_SAMPLES if x < n_max]


def simulated_batch(problems: int, orders: int, verifier: str, seed: int) -> ReplayBatch:
    sim = simulate_arrays(problems, 64, seed, verifier=verifier)
    p, n = sim.scores.shape
    idx = order_indices(np.full(p, n), n, orders, seed)
    take = lambda a: np.take_along_axis(a[:, None, :].repeat(orders, 1), idx, axis=2)  # noqa: E731
    return ReplayBatch(score=take(sim.scores), answer=take(sim.answer), tokens=take(sim.tokens.astype(float)),
                       correct=take(sim.correct), available=np.full(p, n),
                       ids=tuple(f"sim{seed}/{i}" for i in range(p)), questions=(None,) * p)


def split_policies(name: str, n_max: int, cal: ReplayBatch) -> tuple[list[dict], list]:
    """Grid and policies of a policy whose settings are fitted on the calibration half."""
    if name == "learned":
        grid = learned_grid(n_max)
        # strict=False: the budget is chosen on the tables' own calibration problems.
        return grid, [make_policy("learned", n_max, table=fit_auto(cal, n_max, strict=False, **g)) for g in grid]
    from optscale.priors import PopulationPriors

    prior = PopulationPriors.from_batch(cal, strict=False)
    grid = GRIDS[name]
    return grid, [make_policy(name, n_max, priors=prior, **g) for g in grid]


def run_pool(batch: ReplayBatch, names: list[str], budgets, splits: int, notes: list[str], bootstrap: int) -> dict:
    p = batch.shape[0]
    halves = [split_problems(p, 0.5, seed) for seed in range(splits)]
    fitted = {"learned", "optscale-t"}
    static, keys = [], []  # policies replayed once for every split
    for name in names:
        if name in fitted:
            continue
        for n_max in budgets:
            for g in GRIDS.get(name, [{}]):
                try:
                    static.append(make_policy(name, n_max, **g))
                    keys.append((name, n_max, g))
                except InputError as exc:
                    notes.append(f"{name}@{n_max} {g}: skipped ({exc})")
    curves, outcomes = collect(batch, static)
    results: dict = {n_max: {"rows": {}, "envelope": []} for n_max in budgets}
    for seed, (calib, held) in enumerate(halves):
        base = {half: Baseline(curves.take(idx), bootstrap, seed) for half, idx in (("c", calib), ("h", held))}
        groups: dict[tuple[str, int], tuple[list[dict], list, list]] = {}
        for (name, n_max, g), pol, out in zip(keys, static, outcomes):
            grid, pols, outs = groups.setdefault((name, n_max), ([], [], []))
            grid.append(g), pols.append(pol), outs.append(out)
        cal = subset(batch, calib) if fitted & set(names) else None
        for name in names:
            if name not in fitted or (name == "optscale-t" and name not in POLICIES.names()):
                continue
            for n_max in budgets:
                grid, pols = split_policies(name, n_max, cal)
                groups[name, n_max] = (grid, pols, [outcome_of(batch, q.replay(batch), q) for q in pols])
        for n_max in budgets:
            env_c, env_h = base["c"].at(n_max, np.inf), base["h"].at(n_max, np.inf)
            results[n_max]["envelope"].append({k: env_h[k] for k in ("envelope_best_accuracy",
                                                                      "envelope_best_tokens", "envelope_best_method")}
                                              | {"fixed_tokens": float(base["h"].curves.bon().mean_tokens[n_max - 1])})
            for (name, nm), (grid, pols, outs) in groups.items():
                if nm != n_max:
                    continue
                rows_c = policy_stats(pols, [o.take(calib) for o in outs], base["c"])
                rows_h = policy_stats(pols, [o.take(held) for o in outs], base["h"], calibration=base["c"])
                fixed_tok = float(base["c"].curves.bon().mean_tokens[n_max - 1])
                i, _ = choose(rows_c, "gain", 0.0, fixed_tok, 1.0)
                j, _ = choose(rows_c, "match", env_c["envelope_best_accuracy"], fixed_tok, 1.0)
                rec = results[n_max]["rows"].setdefault(name, {"splits": []})
                rec["splits"].append({
                    "gain_choice": None if i is None else {"settings": grid[i], **_row(rows_h[i])},
                    "match_choice": None if j is None else {"settings": grid[j], **_row(rows_h[j])},
                })
    for n_max in budgets:
        for rec in results[n_max]["rows"].values():
            rec.update(_summary(rec["splits"]))
    return results


def _row(s) -> dict:
    return {"accuracy": s.accuracy, "mean_tokens": s.mean_tokens, "bon_tokens": s.bon_tokens,
            "gain": s.gain_vs_envelope, "ci": [s.gain_vs_envelope_ci_low, s.gain_vs_envelope_ci_high],
            "calibrated_gain": s.gain_vs_calibrated_envelope,
            "beats_ci": s.beats_envelope, "envelope_best_accuracy": s.envelope_best_accuracy,
            "envelope_best_tokens": s.envelope_best_tokens, "share_of_best": s.token_share_of_envelope_best,
            "envelope_mix": s.envelope_mix}


def matched(r: dict | None) -> bool:
    return r is not None and r["accuracy"] >= r["envelope_best_accuracy"] - 1e-12 and r["share_of_best"] <= MATCH_SHARE


def _summary(splits: list[dict]) -> dict:
    g = [s["gain_choice"] for s in splits]
    m = [s["match_choice"] for s in splits]
    chosen = [r for r in g if r is not None]
    return {
        "chosen": len(chosen),
        "accuracy": float(np.mean([r["accuracy"] for r in chosen])) if chosen else float("nan"),
        "token_share": float(np.mean([r["mean_tokens"] / r["bon_tokens"] for r in chosen])) if chosen else float("nan"),
        # None: the objective was not met on calibration in that split (nothing chosen).
        "gain": [None if r is None or not np.isfinite(r["gain"]) else float(r["gain"]) for r in g],
        "beat": sum(r is not None and r["gain"] > TIE for r in g),
        "calibrated_gain": [None if r is None or not np.isfinite(r["calibrated_gain"]) else float(r["calibrated_gain"])
                            for r in g],
        "calibrated_beat": sum(r is not None and r["calibrated_gain"] > TIE for r in g),
        "beat_ci": sum(r is not None and r["beats_ci"] for r in g),
        "matched": sum(matched(r) for r in m),
        "match_chosen": sum(r is not None for r in m),
        "match_share": float(np.mean([r["share_of_best"] for r in m if r is not None])) if any(m) else None,
        "match_gap": [None if r is None else float(r["accuracy"] - r["envelope_best_accuracy"]) for r in m],
    }


def print_table(pool: str, n_max: int, res: dict, splits: int) -> None:
    env = res["envelope"]
    best = np.mean([e["envelope_best_accuracy"] for e in env])
    share = np.mean([e["envelope_best_tokens"] / e["fixed_tokens"] for e in env])
    methods = sorted({e["envelope_best_method"] for e in env})
    print(f"\n{pool} pool, N_max {n_max}: envelope best {100 * best:.2f}% ({'/'.join(methods)}) at "
          f"{100 * share:.0f}% of BoN@{n_max} tokens (held-out, mean of {splits})")
    print(f"{'policy':<11} {'acc %':>6} {'tok/N':>6} {'met':>5} {'gain pp (range)':>22} {'beat':>5} {'ci':>4} "
          f"{'cal. gain pp (range)':>22} {'beat':>5} {'match':>6} {'tok/best':>8} {'acc-best pp (match)':>20}")
    for name, r in sorted(res["rows"].items(), key=lambda kv: sort_key(kv[1]["gain"])):
        g = 100 * np.array([x for x in r["gain"] if x is not None])
        ms = "-" if r["match_share"] is None else f"{100 * r['match_share']:.0f}%"
        gaps = [x for x in r["match_gap"] if x is not None]
        gap = f"{100 * np.mean(gaps):+.2f} ({len(gaps)})" if gaps else "-"
        acc = "     -" if not np.isfinite(r["accuracy"]) else f"{100 * r['accuracy']:6.2f}"
        tok = "     -" if not np.isfinite(r["token_share"]) else f"{100 * r['token_share']:5.0f}%"
        print(f"{name:<11} {acc} {tok} {g.size:>3}/{splits} {gain_text(r['gain']):>22} {r['beat']:>3}/{splits} "
              f"{r['beat_ci']:>4} {gain_text(r['calibrated_gain']):>22} {r['calibrated_beat']:>3}/{splits} "
              f"{r['matched']:>3}/{splits} {ms:>8} {gap:>20}")


def sort_key(gains: list) -> tuple:
    """Rows by mean gain over the splits where the objective was met, best first; never met: last."""
    met = [x for x in gains if x is not None]
    return (0, -float(np.mean(met))) if met else (1, 0.0)


def gain_text(gains: list) -> str:
    """Mean and range (in points) over the met splits, or "not met"."""
    g = 100 * np.array([x for x in gains if x is not None])
    return f"{g.mean():+7.2f} ({g.min():+.2f}..{g.max():+.2f})" if g.size else "not met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 problems, 1 order, 200 bootstrap resamples")
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--splits", type=int, default=SPLITS)
    ap.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples of the gain interval")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated pools (the benchmark's: 0)")
    ap.add_argument("--pools", default="default,weak")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--policies", default="", help="comma-separated subset (default: every registered policy)")
    ap.add_argument("--json", default="", help="also write every number to this JSON file")
    args = ap.parse_args()
    problems, orders, bootstrap = (600, 1, 200) if args.quick else (args.problems, args.orders, args.bootstrap)
    names = [n for n in (args.policies.split(",") if args.policies else POLICIES.names()) if n not in FIXED]
    budgets = [int(b) for b in args.budgets.split(",")]
    out, notes = {}, []
    start = time.perf_counter()
    for pool in args.pools.split(","):
        batch = simulated_batch(problems, orders, pool, args.seed)
        out[pool] = run_pool(batch, names, budgets, args.splits, notes, bootstrap)
        for n_max in budgets:
            print_table(pool, n_max, out[pool][n_max], args.splits)
    print(f"\n{problems} problems x 64 samples x {orders} orders per pool (simulate seed {args.seed}), "
          f"{args.splits} splits, {bootstrap} bootstrap resamples; {time.perf_counter() - start:.0f} s")
    for note in sorted(set(notes)):
        print("note:", note)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"problems": problems, "orders": orders, "seed": args.seed, "results": out, "notes": notes},
                      fh, indent=1, default=str)


if __name__ == "__main__":
    main()
