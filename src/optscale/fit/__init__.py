"""Estimators of the per-problem score distribution from a few (peek) samples."""

from .estimators import (
    MIN_PRIOR_WIDTH,
    MU_BOUNDS,
    SIGMA_BOUNDS,
    FitFlag,
    FitResult,
    SufficientStats,
    fit_map,
    fit_mle,
    fit_stats,
    loglik,
    moments_to_params,
)

__all__ = [
    "MIN_PRIOR_WIDTH",
    "MU_BOUNDS",
    "SIGMA_BOUNDS",
    "FitFlag",
    "FitResult",
    "SufficientStats",
    "fit_map",
    "fit_mle",
    "fit_stats",
    "loglik",
    "moments_to_params",
]
