"""``learned``: an optimal-stopping table fitted by empirical Bayes on a calibration pool (ours).

**State** after ``n`` samples of a problem: ``n``; the quantile bin ``b`` of the best score
so far (bin edges: quantiles of the best-so-far scores of the calibration pool); ``k``, how
many samples share the *leading* answer (the answer the selection rule would return now,
capped at ``agree_cap``; 0: no such feature); ``m``, the leader's count minus the runner-up's
(capped at ``margin_cap``; 0: none); with ``consensus``, whether that answer is also the most
frequent one *and* holds the best-scored sample; and the quantile bin ``l`` of the returned
sample's length in tokens (``length_bins``; long answers are more often wrong, and long
problems cost more per further sample).

**Values.** Stopping in state ``s`` earns ``q(s) = P(the answer select returns now is
correct | s)``; every sample costs ``lambda`` per token. With ``t'`` the next sample's tokens
and ``s'`` the next state, backward induction from ``n_max`` gives (tokens already spent are
sunk and cancel)::

    W(s) = q(s)                                          if n = n_max
    W(s) = max(q(s), E[W(s') - lambda * t' | s])          otherwise; stop where q(s) >= E[...]

``q`` and the expectation are calibration averages over (problem, order) rows in state ``s``
(empirical transition frequencies), shrunk toward the pooled state one feature coarser
``(n, b, k, m, c, l) -> (n, b, k, m, c) -> ... -> (n, b) -> (n)`` with ``shrink`` pseudo-rows::

    est(s) = (sum over rows in s + shrink * est(parent(s))) / (rows in s + shrink)

so a state seen a handful of times in calibration borrows the estimate of the states around
it instead of stopping (or sampling on) on a few lucky rows. ``--budget F`` bisects ``lambda``
(log scale) to the least value whose calibration mean tokens are at most ``F`` times those
of Best-of-``n_max`` (negative, a reward per token, where lambda 0 spends less), and mixes in
the table of the lambda just below it on a share of the problems chosen by their keys, so that
the calibration mean lands on ``F`` (:mod:`.fit`). ``policy fit`` chooses the selection rule,
the features and ``shrink`` by cross-validation (:mod:`.cv`).

Modules: :mod:`.state` (the state of a prefix of samples), :mod:`.table` (the table in memory
and its file, a pydantic model), :mod:`.fit` (statistics, shrinkage, induction, budget),
:mod:`.cv` (the cross-validated search of ``policy fit``), :mod:`.policy` (the policy).

This is the classical finite-horizon optimal-stopping recursion (Chow, Robbins & Siegmund,
*Great Expectations: The Theory of Optimal Stopping*, 1971) with the value and transition
kernel estimated by empirical Bayes (Robbins, 1956) from a calibration pool, in the spirit of
learned stopping for Best-of-N sampling (e.g. the agreement- and score-aware rules of
arXiv 2509.21091 and 2510.01394). The fitted table is a small, versioned JSON file
(:data:`FORMAT`) holding its settings, the calibration pool's sha256 and statistics, and the
decision in every state; :func:`fit_table` writes it, ``--set table=FILE`` uses it.

**No report on calibration problems.** The table records the problems it was fitted on
(``calibration.problem_keys``: the sorted :func:`optscale.priors.problem_key` of each problem's
``(id, question)``, 16 hex digits each) and the policy refuses (:class:`InputError` at
``settings.table``) to replay or run on any of them, with the same check as the population
prior's (:func:`optscale.priors.check_unseen`): a table scored on its own calibration problems
looks better than it is. Fit on a separate calibration pool. Tables without that list (written
before it existed) are refused with a request to refit.

**Limits.** ``bins`` <= :data:`MAX_BINS`, ``agree_cap`` <= :data:`MAX_AGREE_CAP`,
``margin_cap`` <= :data:`MAX_MARGIN_CAP`, ``length_bins`` <= :data:`MAX_LENGTH_BINS`, and the
table's size ``n_max x bins x (agree_cap + 1) x (margin_cap + 1) x C x L`` <=
:data:`MAX_TABLE_CELLS`; fits and table files beyond them are refused.
"""

from __future__ import annotations

from .fit import MIN_PROBLEMS, _Calibration, _induction, _prepare, _q_values, _shrunk, check_pool, fit_table
from .policy import Learned
from .state import (DEFAULT_AGREE_CAP, DEFAULT_BINS, DEFAULT_LENGTH_BINS, DEFAULT_MARGIN_CAP, DEFAULT_SHRINK,
                    MAX_AGREE_CAP, MAX_BINS, MAX_LENGTH_BINS, MAX_MARGIN_CAP, MAX_TABLE_CELLS, table_cells,
                    table_states)
from .table import (FORMAT, FORMATS, PROBLEM_KEY_TEXT, StoppingTable, TableFile, _cached_table, file_sha256,
                    load_table, mix_fraction)

__all__ = ["DEFAULT_AGREE_CAP", "DEFAULT_BINS", "DEFAULT_LENGTH_BINS", "DEFAULT_MARGIN_CAP", "DEFAULT_SHRINK", "FORMAT",
           "FORMATS", "Learned", "MAX_AGREE_CAP", "MAX_BINS", "MAX_LENGTH_BINS", "MAX_MARGIN_CAP", "MAX_TABLE_CELLS",
           "MIN_PROBLEMS", "PROBLEM_KEY_TEXT", "StoppingTable", "TableFile", "check_pool", "file_sha256", "fit_table",
           "load_table", "mix_fraction", "table_cells", "table_states"]
# Also importable from here, as from the module this package replaced: _Calibration, _induction, _prepare,
# _q_values, _shrunk, _cached_table.
