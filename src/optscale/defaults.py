"""The defaults that more than one entry point uses, each in one place.

``optscale replay``, ``sweep``, ``run``, ``pool``, ``serve`` and the demo (and the library
functions behind them) take their defaults from here, so a default changes in one line and the
commands can never drift apart. Where two defaults differ, the reason is stated beside them.
A policy's own settings (``s_min``, ``alpha``, ``peek`` ...) are defaults of its settings model,
not repeated here; the target below is read from that model too.
"""

from __future__ import annotations

__all__ = ["ALPHA", "ALPHA_GRID", "BUDGETS", "DEMO_ALPHA_GRID", "DEMO_ORDERS", "DEMO_S_MIN_GRID", "N_MAX",
           "ORDERS", "POLICY", "S_MIN", "S_MIN_GRID", "SEED", "SERVE_N_MAX"]

#: OptScale's target, Pr(best score >= S_MIN) >= ALPHA: the defaults of its ``s_min`` and ``alpha``
#: settings, and firstpass's threshold ``t`` (stop at the first sample reaching OptScale's target score).
S_MIN = 0.95
ALPHA = 0.9

#: The policy of every command and of the library when none is named: the paper's sequential
#: OptScale (re-estimate after every sample, stop once n >= N*), in replay as live, so that a
#: replay predicts what a run or the server does with the same settings.
POLICY = "optscale"

#: Most samples per problem of a run, a pool draw and a replay: the paper's middle budget.
N_MAX = 16

#: Most samples per request of ``optscale serve`` when a request names none: half of :data:`N_MAX`,
#: deliberately. A client waits for each answer, so the server's default favours latency and cost;
#: a request may ask for more, up to the server's ``max_n_max``.
SERVE_N_MAX = 8

#: The budgets a sweep tunes for (the paper's N_max of 8, 16, 32 and 64): ``optscale sweep`` and the demo.
BUDGETS: tuple[int, ...] = (8, 16, 32, 64)

#: Sweep grids of OptScale's target score ``s_min`` and probability ``alpha`` (``optscale sweep``).
S_MIN_GRID: tuple[float, ...] = (0.8, 0.85, 0.9, 0.925, 0.95, 0.975)
ALPHA_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)

#: The demo's grids: 4 x 4 points of the sweep's 6 x 8, deliberately coarser, as are its
#: :data:`DEMO_ORDERS`: the demo tunes three policies at four budgets and promises to finish in well
#: under a minute on 2 cores.
DEMO_S_MIN_GRID: tuple[float, ...] = (0.85, 0.9, 0.95, 0.975)
DEMO_ALPHA_GRID: tuple[float, ...] = (0.5, 0.7, 0.9, 0.95)

#: Sample orders per problem in a replay or a sweep (order 1 is the pool's own; the others are
#: seeded shuffles), and their seed.
ORDERS = 10
DEMO_ORDERS = 8
SEED = 0
