"""How good a predictor is: errors against labels, calibration of its intervals, a plot.

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
from .base import Prediction, Predictor, calibrated, cross_validate
from .baselines import ConstantPredictor
from .data import TrainingSet

__all__ = ["COVERAGES", "metrics", "cross_validated", "read_priors_moments", "compare_file", "calibration_plot"]

#: Nominal coverages of the central predictive intervals that reports check.
COVERAGES = (0.5, 0.8, 0.9)


def _errors(pred: np.ndarray, true: np.ndarray) -> dict:
    resid = pred - true
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(resid))), "rmse": float(np.sqrt(np.mean(resid**2))),
            "r2": 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")}


def metrics(pred: Prediction | tuple[np.ndarray, np.ndarray], mean, std) -> dict:
    """MAE, RMSE and R^2 of mean and std; with a :class:`Prediction`, also interval coverage."""
    p_mean, p_std = (pred.mean, pred.std) if isinstance(pred, Prediction) else pred
    out = {"mean": _errors(np.asarray(p_mean), np.asarray(mean)), "std": _errors(np.asarray(p_std), np.asarray(std))}
    if isinstance(pred, Prediction):
        cover = {"mean": {}, "std": {}}
        for c in COVERAGES:
            m_lo, m_hi, s_lo, s_hi = pred.interval(c)
            cover["mean"][str(c)] = float(np.mean((mean >= m_lo) & (mean <= m_hi)))
            cover["std"][str(c)] = float(np.mean((std >= s_lo) & (std <= s_hi)))
        out["coverage"] = cover
        out["predictive_sd"] = {"mean": float(np.mean(pred.mean_sd)), "std": float(np.mean(pred.std_sd))}
    return out


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


def calibration_plot(pred: Prediction, mean, std, path: str | Path, title: str) -> Path:
    """PNG: predicted vs true mean and std, and empirical vs nominal interval coverage."""
    from ..report.plots import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, p, t, name in ((axes[0], pred.mean, mean, "score mean"), (axes[1], pred.std, std, "score std")):
        lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
        ax.scatter(p, t, s=4, alpha=0.35)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"predicted {name}", ylabel=f"true {name}", title=f"{name}: RMSE {np.sqrt(np.mean((p - t) ** 2)):.4f}")
    levels = np.linspace(0.05, 0.95, 19)
    for k, name in ((0, "mean"), (1, "std")):
        truth = mean if k == 0 else std
        covered = []
        for c in levels:
            bounds = pred.interval(c)
            covered.append(np.mean((truth >= bounds[2 * k]) & (truth <= bounds[2 * k + 1])))
        axes[2].plot(levels, covered, marker="o", ms=3, label=f"score {name}")
    axes[2].plot([0, 1], [0, 1], "k--", lw=1)
    axes[2].set(xlabel="nominal coverage", ylabel="empirical coverage", title="central predictive intervals")
    axes[2].legend()
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)
