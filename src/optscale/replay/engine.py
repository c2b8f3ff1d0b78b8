"""Replay policies over a stored pool, chunk by chunk, and collect comparable statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..policies.base import ReplayBatch
from ..policies.common import PolicyBase
from .arrays import as_source
from .batch import check_seed
from .metrics import (Baseline, BonCurve, FixedCurves, PolicyStats, ReplayOutcome, fixed_curves, outcome_of,
                      policy_stats)

__all__ = ["ReplayResult", "collect", "replay_policies"]


@dataclass
class ReplayResult:
    """Statistics of several policies on one pool, with its fixed-N curves and their envelope."""

    dataset: str
    curve: BonCurve
    stats: list[PolicyStats]
    baseline: Baseline | None = None
    labels: str = "gold"  # where "correct" came from: gold answers or consensus (optscale.replay.labels)

    def envelope_rows(self) -> list[dict]:
        """The envelope's vertices for each n_max of the policies."""
        if self.baseline is None:
            return []
        return [row for n in sorted({s.n_max for s in self.stats}) for row in self.baseline.rows(n)]

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "labels": self.labels,
            "policies": [s.as_dict() for s in self.stats],
            "bon_curve": self.curve.rows(),
            "fixed_curves": self.baseline.curves.rows() if self.baseline else [],
            "envelope": self.envelope_rows(),
        }


def collect(data, policies: Sequence[PolicyBase],
            on_progress: Callable[[int, int], None] | None = None) -> tuple[FixedCurves, list[ReplayOutcome]]:
    """Every fixed-N method and every policy on every problem of ``data`` (a :class:`ReplayBatch`
    or an :class:`~optscale.replay.arrays.OrderedPool`), one chunk of problems at a time.

    A chunk's layout is shared by all policies, so fits cached in its batch (OptScale's) serve
    every setting of a grid. ``on_progress(done, total)`` counts (chunk, policy) steps.
    """
    source = as_source(data)
    p, r, n = source.shape
    chunks = getattr(source, "n_chunks", 1)
    curves: FixedCurves | None = None
    outcomes: list[list[ReplayOutcome]] = [[] for _ in policies]
    done = 0
    for rows, batch in source.chunks():
        part = fixed_curves(batch)
        if curves is None:  # filled chunk by chunk: concatenating the parts would hold them twice
            curves = FixedCurves(part.rules, np.empty((*part.accuracy.shape[:2], p)), np.empty((part.n_max, p)),
                                 np.empty((part.n_max, p)))
        curves.accuracy[:, :, rows], curves.tokens[:, rows], curves.samples[:, rows] = \
            part.accuracy, part.tokens, part.samples
        del part
        for i, policy in enumerate(policies):
            outcomes[i].append(outcome_of(batch, policy.replay(batch), policy))
            done += 1
            if on_progress is not None:
                on_progress(done, chunks * len(policies))
    return curves, [ReplayOutcome.concat(o) for o in outcomes]


def replay_policies(
    data,
    policies: Sequence[PolicyBase],
    dataset: str = "pool",
    seed: int = 0,
    on_done: Callable[[PolicyBase], None] | None = None,
    bootstrap: int = 2000,
    labels: str = "gold",
    calibration: ReplayBatch | None = None,
) -> ReplayResult:
    """Run each policy on every problem and order of ``data``; the fixed-N curves span the pool.

    ``labels`` records where the data's "correct" came from (``gold`` or ``consensus``, see
    :func:`~optscale.replay.relabel`) in the result and its JSON. ``calibration``, the batch the
    policies' settings were chosen on, adds the gain over its calibrated envelope
    (:meth:`~optscale.replay.Baseline.calibrated`) to every row."""
    seed = check_seed(seed)
    curves, outcomes = collect(data, policies)
    baseline = Baseline(curves, bootstrap, seed)
    curve = curves.bon()
    calib = None if calibration is None else Baseline(fixed_curves(calibration), bootstrap, seed)
    stats = policy_stats(policies, outcomes, baseline, curve, calib)
    for policy in policies:
        if on_done is not None:
            on_done(policy)
    return ReplayResult(dataset, curve, stats, baseline, labels)
