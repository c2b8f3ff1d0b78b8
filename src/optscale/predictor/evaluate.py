"""How good a predictor is: cross-validated against the constant baseline, and priors files
against labels (the metrics themselves are :func:`optscale.predictor.base.metrics`; the
calibration plot is :func:`optscale.report.plots.calibration_plot`).

Scores are compared on the moments (score mean and std), the quantities that were measured;
a priors file holding only parameters (``mu``, ``sigma``) is converted to moments first.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import iter_objects
from ..stats import truncnorm
from .base import Prediction, Predictor, calibrated, cross_validate, metrics
from .baselines import ConstantPredictor
from .data import TrainingSet

__all__ = ["cross_validated", "read_priors_moments", "compare_file"]


def cross_validated(template: Predictor, data: TrainingSet, folds: int = 5, seed: int = 0) -> tuple[Prediction, dict]:
    """Held-out predictions of ``template``'s kind and parameters, and a report against the constant.

    The constant baseline runs on the very same folds. The predictive scale is the RMS of the
    held-out residuals themselves (one number per moment), so coverage checks the shape of the
    intervals, not their overall width.
    """
    report = {"folds": folds, "seed": seed, "rows": len(data)}
    preds = {}
    for name, model in (("model", template), ("constant", ConstantPredictor())):
        _, points = cross_validate(model, data, folds, seed)
        preds[name] = calibrated(points, data.mean, data.std)
        report[name] = metrics(preds[name], data.mean, data.std)
    report["model"]["kind"] = template.kind
    report["rmse_reduction_vs_constant"] = {
        m: 1.0 - report["model"][m]["rmse"] / report["constant"][m]["rmse"] for m in ("mean", "std")}
    return preds["model"], report


def read_priors_moments(path: str | Path) -> dict[str, tuple[float, float]]:
    """``id -> (score mean, score std)`` of a priors file (ours, the paper's, or parameters only).

    Negative stds (the paper's published predictor emits a few) are kept as they are: this
    measures the file, it does not repair it.
    """
    out: dict[str, tuple[float, float]] = {}
    for where, row in iter_objects(path, require=("id",)):
        for a, b in (("score_mean", "score_std"), ("prior_mean", "prior_std"), ("mu", "sigma")):
            if a in row and b in row:
                x, y = row[a], row[b]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
                    raise InputError(f"{a}/{b} must be finite numbers", where)
                if a == "mu":
                    x, y = (float(v) for v in truncnorm.mean_std(np.float64(x), np.float64(max(y, 1e-9))))
                out[str(row["id"])] = (float(x), float(y))
                break
        else:
            raise InputError("needs score_mean/score_std, prior_mean/prior_std or mu/sigma", where)
    if not out:
        raise InputError("holds no priors (the file is empty)", str(path))
    return out


def compare_file(path: str | Path, data: TrainingSet) -> dict:
    """Errors of a priors file on the labelled problems it covers (matched by id), if any."""
    moments = read_priors_moments(path)
    ids = data.problems.ids
    hit = np.array([i in moments for i in ids])
    values = np.array(list(moments.values()))
    report = {"file": str(path), "problems": len(moments), "labelled_matches": int(hit.sum()),
              "predicted_mean": {"mean": float(values[:, 0].mean()), "median": float(np.median(values[:, 0]))},
              "negative_stds": int(np.sum(values[:, 1] < 0))}
    if hit.any():
        pairs = np.array([moments[i] for i, h in zip(ids, hit) if h])
        report["errors"] = metrics((pairs[:, 0], pairs[:, 1]), data.mean[hit], data.std[hit])
    return report
