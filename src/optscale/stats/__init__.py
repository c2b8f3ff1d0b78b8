"""Exact statistics of OptScale: the truncated normal on [0, 1] and the best of N draws."""

from . import truncnorm
from .bestofn import (
    UNBOUNDED,
    best_of_n_logcdf,
    expected_best,
    marginal_gain,
    min_samples,
    min_samples_detail,
    prob_best_at_least,
)

__all__ = [
    "truncnorm",
    "UNBOUNDED",
    "best_of_n_logcdf",
    "expected_best",
    "marginal_gain",
    "min_samples",
    "min_samples_detail",
    "prob_best_at_least",
]
