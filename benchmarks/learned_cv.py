"""``learned`` with default flags (``policy fit``'s cross-validated search) against the fixed-N envelope; its speed.

Sections (``--sections``, default all three):

- ``speed``: :func:`optscale.policies.learned.cv.fit_auto` (``--select auto --features auto``, 5 folds)
  on a simulated calibration pool of ``--speed-problems`` (10,000) x 64 samples x 4 orders (the CLI's
  default) at budget 0.5, and in the same run the plain fit of one fixed design
  (:func:`~optscale.policies.learned.fit_table`, ``select=best``, the old default features) on the same
  pool: both times and their ratio; ``--cli`` also times the whole ``optscale policy fit`` on a pool
  file (reading it included). Target (issue 15): the auto search <= 60 s on 2 cores.
- ``simulated``: the default and weak-verifier simulated pools (:func:`optscale.simulate.simulate_arrays`,
  seed 0, ``--problems`` x 64, ``--orders``), 6 split seeds halving the problems: a table fitted with
  default flags on the calibration half at each budget (a share of BoN@N_max's tokens), replayed on
  the held-out half; gain = held-out accuracy minus the **calibrated envelope** at its tokens (the
  fixed methods, every selection rule and N = 1..N_max, that the calibration half puts on its
  envelope, measured on the held-out half: the baseline with settings chosen on calibration data,
  :meth:`optscale.replay.Baseline.calibrated`), with the paired 95% bootstrap interval; beside it the
  gain over the held-out envelope, which picks rule and N on the held-out problems in hindsight.
  Targets: beat the envelope in >= 5 of 6 splits (default pool), >= 0 pp in >= 5 of 6 (weak
  verifier); a gain within 1e-9 of 0 (a table on a vertex of the envelope) counts as 0.
- ``answers``: the shared answer-only pools (``../shared/data/pools/boinf``, no scores, so
  ``select=majority``): per pool and split, ``boinf`` (default bf) is replayed on the calibration
  half, learned is fitted there at boinf's token share (so it spends no more), and both are scored
  on the held-out half against both envelopes (a half is 15 problems on AIME: there the hindsight
  envelope's choice of N is worth several points). Targets: mean gain over the (calibrated) envelope
  >= -0.3 pp, and learned at least as accurate as boinf with no more tokens.

Usage: python benchmarks/learned_cv.py [--quick] [--sections speed,simulated,answers] [--cli] [--problems 2000]
[--orders 2] [--budgets 0.25,0.5] [--n-max 16,64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from optscale.policies import make_policy
from optscale.policies.learned import fit_table
from optscale.policies.learned.cv import fit_auto
from optscale.pools import iter_pool
from optscale.replay import TIE, build_batch, outcome_of, policy_stats, split_problems, subset
from optscale.replay.metrics import baseline_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_frontier import simulated_batch  # noqa: E402

SPLITS = 6
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def held_out_row(cal, test, policies, bootstrap: int, seed: int) -> list:
    """Held-out statistics with both envelopes: the held-out one (hindsight) and the calibrated one."""
    base = baseline_of(test, bootstrap, seed)
    return policy_stats(policies, [outcome_of(test, p.replay(test), p) for p in policies], base,
                        calibration=baseline_of(cal, bootstrap, seed))


def speed(problems: int, orders: int, cli: bool = False) -> dict:
    batch = simulated_batch(problems, orders, "default", 0)
    t0 = time.perf_counter()
    fit_table(batch, 64, "best", budget=0.5)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = fit_auto(batch, 64, budget=0.5)
    auto = time.perf_counter() - t0
    cv = table.fitted["cross_validated"]
    print(f"speed: {problems} problems x 64 samples x {orders} orders, budget 0.5: auto search ({cv['candidates']} "
          f"candidates x {cv['folds']} folds) {auto:.1f} s, plain fit of one design {plain:.1f} s, ratio "
          f"{auto / plain:.1f}x; chose {cv['chosen']}")
    out = {"problems": problems, "orders": orders, "auto_s": auto, "plain_s": plain, "chosen": cv["chosen"]}
    if cli:
        import subprocess
        import tempfile

        from optscale.pools import write_pool
        from optscale.simulate import simulate_pool

        with tempfile.TemporaryDirectory() as tmp:
            pool = Path(tmp) / "calib.jsonl"
            write_pool(pool, simulate_pool(problems, 64, 0))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optscale", "policy", "fit", str(pool), "--n-max", "64", "--budget",
                            "0.5", "--orders", str(orders), "--out", str(Path(tmp) / "t.json")], check=True)
            out["cli_s"] = time.perf_counter() - t0
        print(f"optscale policy fit (read + auto search + fit + write), {problems} x 64 x {orders} orders: "
              f"{out['cli_s']:.1f} s")
    return out


def simulated(problems: int, orders: int, budgets, n_maxes, bootstrap: int, splits: int,
              pools=("default", "weak")) -> dict:
    out = {}
    for pool in pools:
        batch = simulated_batch(problems, orders, pool, 0)
        for n_max in n_maxes:
            for budget in budgets:
                rows = []
                for seed in range(splits):
                    calib, held = split_problems(batch.shape[0], 0.5, seed)
                    table = fit_auto(subset(batch, calib), n_max, budget=budget, seed=seed)
                    s = held_out_row(subset(batch, calib), subset(batch, held),
                                     [make_policy("learned", n_max, table=table)], bootstrap, seed)[0]
                    cv = table.fitted["cross_validated"]
                    rows.append({"gain": s.gain_vs_calibrated_envelope,
                                 "ci": [s.gain_vs_calibrated_envelope_ci_low, s.gain_vs_calibrated_envelope_ci_high],
                                 "hindsight_gain": s.gain_vs_envelope,
                                 "accuracy": s.accuracy, "share": s.mean_tokens / s.bon_tokens,
                                 "cv_gain": cv["gain"], "chosen": cv["chosen"]})
                g = np.array([r["gain"] for r in rows])
                h = np.array([r["hindsight_gain"] for r in rows])
                key = f"{pool}/N{n_max}/b{budget}"
                beat, nonneg, h_beat = int((g > TIE).sum()), int((g >= -TIE).sum()), int((h > TIE).sum())
                out[key] = {"splits": rows, "beat": beat, "nonneg": nonneg, "mean_gain": float(g.mean()),
                            "hindsight_beat": h_beat, "hindsight_mean_gain": float(h.mean())}
                print(f"{pool:>7} N_max {n_max:>2} budget {budget:<4}: held-out gain over the calibrated envelope "
                      f"{100 * g.mean():+.2f} pp ({100 * g.min():+.2f}..{100 * g.max():+.2f}), beat {beat}/"
                      f"{splits}, >= 0 {nonneg}/{splits}; over the held-out (hindsight) envelope "
                      f"{100 * h.mean():+.2f} pp, beat {h_beat}/{splits}; accuracy "
                      f"{100 * np.mean([r['accuracy'] for r in rows]):.2f}%"
                      f" at {100 * np.mean([r['share'] for r in rows]):.0f}% of BoN tokens; chosen: "
                      f"{', '.join(sorted({r['chosen'] for r in rows}))}")
    return out


#: Bayes factors of ``boinf``'s held-out curve (its accuracy at another policy's tokens).
BF_GRID = (2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 25.0, 35.0, 50.0, 75.0, 110.0, 160.0, 250.0, 400.0, 1000.0)


def boinf_curve(test, n: int, tokens: float) -> float:
    """``boinf``'s held-out accuracy at ``tokens``: its (mean tokens, accuracy) over :data:`BF_GRID`, in
    token order, joined linearly (mixing two bf per problem); NaN outside the grid's range."""
    pols = [make_policy("boinf", n, bf=b) for b in BF_GRID]
    outs = [outcome_of(test, p.replay(test), p) for p in pols]
    x = np.array([o.tokens.mean() for o in outs])
    y = np.array([o.correct.mean() for o in outs])
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    return float(np.interp(tokens, x, y)) if x[0] <= tokens <= x[-1] else float("nan")


def answers(data: Path, orders: int, bootstrap: int, splits: int, patterns) -> dict:
    out = {}
    for path in [p for pat in patterns for p in sorted((data / "pools" / "boinf").glob(pat))]:
        batch = build_batch(list(iter_pool(path)), orders=orders, seed=0, source=path.name)
        n = int(batch.available.min())
        rows = []
        for seed in range(splits):
            calib, held = split_problems(batch.shape[0], 0.5, seed)
            cal, test = subset(batch, calib), subset(batch, held)
            boinf = make_policy("boinf", n)
            d = boinf.replay(cal)
            used = np.arange(batch.shape[2])[None, None, :] < d.n_used[..., None]
            share = float(np.where(used, cal.tokens, 0).sum(axis=2).mean() / cal.tokens[:, :, :n].sum(axis=2).mean())
            table = fit_auto(cal, n, budget=min(1.0, share), folds=min(5, len(calib)), seed=seed)
            lrn, bf = held_out_row(cal, test, [make_policy("learned", n, table=table), boinf], bootstrap, seed)
            rows.append({"gain": lrn.gain_vs_calibrated_envelope, "boinf_gain": bf.gain_vs_calibrated_envelope,
                         "hindsight_gain": lrn.gain_vs_envelope, "boinf_hindsight_gain": bf.gain_vs_envelope,
                         "acc_minus_boinf": lrn.accuracy - bf.accuracy,
                         "acc_minus_boinf_curve": lrn.accuracy - boinf_curve(test, n, lrn.mean_tokens),
                         "tokens_over_boinf": lrn.mean_tokens / bf.mean_tokens, "chosen": table.fitted[
                             "cross_validated"]["chosen"]})
        name = path.name.removesuffix(".jsonl.gz")
        g = np.array([r["gain"] for r in rows])
        acc = np.array([r["acc_minus_boinf"] for r in rows])
        tok = np.array([r["tokens_over_boinf"] for r in rows])
        mean = lambda k: float(np.nanmean([r[k] for r in rows]))  # noqa: E731
        out[name] = {"splits": rows, "mean_gain": float(g.mean()), "boinf_gain": mean("boinf_gain"),
                     "hindsight_gain": mean("hindsight_gain"), "boinf_hindsight_gain": mean("boinf_hindsight_gain"),
                     "acc_minus_boinf": float(acc.mean()), "tokens_over_boinf": float(tok.mean()),
                     "acc_minus_boinf_curve": mean("acc_minus_boinf_curve")}
        v = out[name]
        print(f"{name:<40} learned {100 * g.mean():+.2f} pp vs the calibrated envelope (boinf "
              f"{100 * v['boinf_gain']:+.2f}), {100 * v['hindsight_gain']:+.2f} vs the hindsight one (boinf "
              f"{100 * v['boinf_hindsight_gain']:+.2f}); learned - boinf {100 * acc.mean():+.2f} pp at "
              f"{tok.mean():.2f}x boinf's tokens, {100 * v['acc_minus_boinf_curve']:+.2f} pp at equal tokens")
    if out:
        m = {k: np.nanmean([v[k] for v in out.values()]) for k in next(iter(out.values())) if k != "splits"}
        print(f"answer-only pools, mean over {len(out)}: learned {100 * m['mean_gain']:+.2f} pp vs the calibrated "
              f"envelope (target >= -0.30; boinf {100 * m['boinf_gain']:+.2f}), {100 * m['hindsight_gain']:+.2f} vs "
              f"the hindsight envelope (boinf {100 * m['boinf_hindsight_gain']:+.2f}); learned - boinf "
              f"{100 * m['acc_minus_boinf']:+.2f} pp at {m['tokens_over_boinf']:.2f}x boinf's tokens, "
              f"{100 * m['acc_minus_boinf_curve']:+.2f} pp against boinf's curve (bf {BF_GRID[0]:g}..{BF_GRID[-1]:g}) "
              "at learned's tokens")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 problems, 1 order, 200 resamples, 2000-problem speed "
                    "pool, the AIME and GPQA answer pools only")
    ap.add_argument("--sections", default="speed,simulated,answers")
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--speed-problems", type=int, default=10_000)
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--n-max", default="16,64")
    ap.add_argument("--pools", default="default,weak", help="simulated pools")
    ap.add_argument("--splits", type=int, default=SPLITS)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cli", action="store_true", help="speed: also time the whole command on a written pool file")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    quick = args.quick
    problems, orders, bootstrap = (600, 1, 200) if quick else (args.problems, args.orders, args.bootstrap)
    sections = args.sections.split(",")
    out: dict = {}
    start = time.perf_counter()
    if "speed" in sections:
        out["speed"] = speed(2000 if quick else args.speed_problems, 4, args.cli)
    if "simulated" in sections:
        out["simulated"] = simulated(problems, orders, [float(b) for b in args.budgets.split(",")],
                                     [int(n) for n in args.n_max.split(",")], bootstrap, args.splits,
                                     args.pools.split(","))
    if "answers" in sections:
        patterns = ("aime2024_*.jsonl.gz", "gpqa_diamond_*.jsonl.gz") if quick else ("*.jsonl.gz",)
        out["answers"] = answers(args.data, 2 if quick else 4, bootstrap, args.splits, patterns)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
