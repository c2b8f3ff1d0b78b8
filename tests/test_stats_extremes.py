"""The truncated normal at the edges of float64 that the property tests of test_stats.py reach only
by chance (hypothesis found this one: a subnormal mean under a huge spread)."""

from __future__ import annotations

import math

import pytest

from optscale.stats import truncnorm


@pytest.mark.parametrize("mu", [6.88651501772219e-309, 5e-324, -5e-324, 1e-300, 0.0])
@pytest.mark.parametrize("x", [0.25, 0.5, 0.9])
def test_a_nearly_uniform_spread_gives_the_uniform_cdf_for_a_subnormal_mean(mu, x):
    """sigma = 1e7 is the uniform on [0, 1] to 1e-14 whatever mu in [-1, 2]; a subnormal ``mu / sigma**2``
    kept one or two digits and gave log F(0.25) = -1.2528 instead of log 0.25 = -1.3863."""
    assert float(truncnorm.logcdf(x, mu, 1e7)) == pytest.approx(math.log(x), rel=1e-12)
    assert float(truncnorm.logsf(x, mu, 1e7)) == pytest.approx(math.log1p(-x), rel=1e-12)
