"""The paper's main table against its own fixed-N Best-of-N curves.

For every method and budget of the official results, prints the accuracy of fixed-N BoN at the
same mean tokens (interpolated on the official BoN curve of the same pools) and the best fixed N
that costs no more. Reads ../shared/data/official/results/. Usage:
python benchmarks/paper_vs_bon_curve.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np

from optscale.replay import BonCurve

DATASETS = {"MATH500": "MATH500", "GSM8K": "GSM8K", "AIME24": "AIME24", "AIME25": "AIME25", "AMC23": "AMC23"}


def load_curves(path: Path) -> dict[str, BonCurve]:
    rows: dict[str, list] = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["dataset"], []).append((int(r["n"]), float(r["accuracy"]), float(r["mean_tokens"])))
    out = {}
    for ds, items in rows.items():
        items.sort()
        n, acc, tok = (np.array(x) for x in zip(*items))
        out[ds] = BonCurve(n, acc, tok, n.astype(float))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    results = args.data / "official" / "results"
    curves = load_curves(results / "bon_curves.csv")
    print(f"{'method':44s} {'dataset':8s} {'acc':>6s} {'tokens':>9s} {'BoN@same tokens':>16s} {'gain':>6s}  best fixed N within tokens")
    with (results / "results_table.csv").open() as fh:
        for r in csv.DictReader(fh):
            name = r["Baseline"]
            if not name.strip():
                continue
            if not re.search(r"OptScale|ESC|ASC|DSC", name):
                continue
            for ds in DATASETS:
                acc = float(r[f"{ds} acc."]) / 100
                tok = float(r[f"{ds} token."])
                curve = curves[ds]
                same = curve.accuracy_at_tokens(tok)
                best_n, best_acc = curve.best_within_tokens(tok)
                best = f"N={best_n}: {100 * best_acc:.1f} ({curve.mean_tokens[best_n - 1]:,.0f} tokens)" if best_n else "-"
                print(f"{name[:44]:44s} {ds:8s} {100 * acc:6.1f} {tok:9,.0f} {100 * same:16.1f} {100 * (acc - same):+6.1f}  {best}")


if __name__ == "__main__":
    main()
