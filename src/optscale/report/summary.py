"""The short summary a report starts with: per N_max, the rule that beats the fixed-N envelope most.

For each (dataset, N_max) of a replay the rule with the largest gain over the envelope of every
fixed-N method (:mod:`optscale.replay.metrics`) is named with its accuracy and 95% interval, and
its mean tokens are set against the **cheapest fixed method of equal accuracy**: the least mean
tokens at which the envelope reaches the rule's accuracy (the envelope is linear between its
vertices, where a random mixture of two fixed methods earns and spends the mixture of theirs;
below its cheapest vertex no fixed method is cheaper). When the rule is more accurate than every
fixed method up to N_max, none reaches it, and the summary says so.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .tables import _finite, _markdown_text

__all__ = ["best_rules", "equal_accuracy_tokens", "featured_rows", "summary_cells", "summary_table"]

#: Accuracies closer than this count as equal (means over the same problems, summed in other orders).
_TOL = 1e-9


def equal_accuracy_tokens(envelope: Sequence[Mapping], accuracy: float) -> float | None:
    """The least mean tokens at which the envelope (its vertex rows: ``mean_tokens``, ``accuracy``)
    reaches ``accuracy``, interpolated linearly between vertices; None when no fixed method reaches it."""
    if not envelope:
        return None
    tok = np.array([float(r["mean_tokens"]) for r in envelope])
    acc = np.array([float(r["accuracy"]) for r in envelope])
    order = np.argsort(tok, kind="stable")
    tok, acc = tok[order], np.maximum.accumulate(acc[order])  # the envelope never falls with more tokens
    k = int(np.searchsorted(acc, accuracy - _TOL, side="left"))  # first vertex at least as accurate
    if k == len(acc):
        return None
    if k == 0 or acc[k] - acc[k - 1] <= _TOL:
        return float(tok[k])
    share = (accuracy - acc[k - 1]) / (acc[k] - acc[k - 1])
    return float(tok[k - 1] + share * (tok[k] - tok[k - 1]))


def best_rules(rows: Sequence[Mapping], envelope: Sequence[Mapping]) -> list[dict]:
    """Per (dataset, N_max) of the policy ``rows`` (:meth:`PolicyStats.as_dict` with ``dataset``), the
    rule with the largest ``gain_vs_envelope`` (ties: fewer tokens), with the tokens of the cheapest
    fixed method of equal accuracy from the ``envelope`` vertex rows (``dataset``, ``n_max``) and the
    rule's tokens as a share of them (both None when no fixed method reaches its accuracy)."""
    keys = list(dict.fromkeys((r.get("dataset"), int(r["n_max"])) for r in rows))
    out = []
    for dataset, n_max in keys:
        cands = [r for r in rows if (r.get("dataset"), int(r["n_max"])) == (dataset, n_max)
                 and _finite(r.get("gain_vs_envelope"))]
        if not cands:
            continue
        best = max(cands, key=lambda r: (r["gain_vs_envelope"], -r["mean_tokens"]))
        hull = [e for e in envelope if (e.get("dataset"), int(e["n_max"])) == (dataset, n_max)]
        fixed = equal_accuracy_tokens(hull, best["accuracy"])
        out.append({"dataset": dataset, "n_max": n_max, "policy": best["policy"], "label": best.get("label"),
                    "accuracy": best["accuracy"], "ci_low": best["ci_low"], "ci_high": best["ci_high"],
                    "gain_vs_envelope": best["gain_vs_envelope"],
                    "gain_vs_envelope_ci_low": best["gain_vs_envelope_ci_low"],
                    "gain_vs_envelope_ci_high": best["gain_vs_envelope_ci_high"],
                    "mean_tokens": best["mean_tokens"], "equal_accuracy_fixed_tokens": fixed,
                    "token_share_of_equal_accuracy_fixed": None if not fixed else best["mean_tokens"] / fixed})
    return out


#: The summary's columns, in order, and their Markdown alignment.
SUMMARY_COLUMNS = {"N_max": "---:", "rule": "---", "accuracy % [95%]": "---:", "gain pp [95%]": "---:",
                   "tokens": "---:", "vs fixed of equal acc.": "---"}

#: What the summary's columns mean, for its readers.
SUMMARY_NOTE = ("rule: the largest gain over the envelope of every fixed-N method (N <= N_max) at the same mean "
                "tokens, with its paired 95% interval; vs fixed of equal acc.: the rule's tokens as a share of "
                "the least tokens at which the envelope (mixing two fixed methods) is as accurate as the rule "
                "(where the envelope is nearly flat, a small difference in accuracy moves it far).")


def summary_cells(best: Mapping) -> list[str]:
    """One summary row as text (:data:`SUMMARY_COLUMNS`): the same words in Markdown and on the terminal."""
    fixed, share = best["equal_accuracy_fixed_tokens"], best["token_share_of_equal_accuracy_fixed"]
    return [str(best["n_max"]), best["policy"],
            f"{100 * best['accuracy']:.1f} [{100 * best['ci_low']:.1f}, {100 * best['ci_high']:.1f}]",
            f"{100 * best['gain_vs_envelope']:+.1f} [{100 * best['gain_vs_envelope_ci_low']:+.1f}, "
            f"{100 * best['gain_vs_envelope_ci_high']:+.1f}]",
            f"{best['mean_tokens']:,.0f}",
            "no fixed method reaches it" if fixed is None else f"{100 * share:.0f}% of {fixed:,.0f}"]


def summary_table(best: Sequence[Mapping]) -> str:
    """The summary as Markdown: one row per (dataset, N_max), then what the columns mean."""
    several = len({b["dataset"] for b in best}) > 1
    lead = {"dataset": "---"} if several else {}
    columns = {**lead, **SUMMARY_COLUMNS}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(columns.values()) + "|"]
    for b in best:
        cells = ([b["dataset"]] if several else []) + summary_cells(b)
        lines.append("| " + " | ".join(map(_markdown_text, cells)) + " |")
    return "\n".join(lines) + "\n\n" + SUMMARY_NOTE + "\n"


def featured_rows(rows: Sequence[Mapping], always: Sequence[str] = (), top: int = 3) -> list[Mapping]:
    """The rows of the policies named in ``always`` and of the ``top`` others with the largest gain over
    the envelope (rows without a gain last), in that order."""
    kept = [r for r in rows if r["policy"] in always]
    others = sorted((r for r in rows if r["policy"] not in always),
                    key=lambda r: -r["gain_vs_envelope"] if _finite(r.get("gain_vs_envelope")) else math.inf)
    return kept + others[:top]
