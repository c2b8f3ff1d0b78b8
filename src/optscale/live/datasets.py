"""Problems to sample: the reader of problem files, :mod:`optscale.pools.problems` (re-exported here)."""

from __future__ import annotations

from ..pools.problems import DatasetSpec, LiveProblem, load_problems

__all__ = ["LiveProblem", "DatasetSpec", "load_problems"]
