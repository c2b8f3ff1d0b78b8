"""Which samples count as correct: graded against gold answers, or by consensus with full sampling.

Traffic served by ``optscale serve`` has no gold answers. **Consensus labels** need none: a
sample counts as correct when its answer equals the answer that the selection rule (``best``,
``majority`` or ``weighted``) returns on the first ``n_max`` samples of its problem, the answer
that full sampling would have served. Replaying a policy on such labels measures how often its
early answer is *the same answer as full sampling*, and what it saves for that.

What consensus cannot see: an error that full sampling makes (every sample, or the winning
vote, wrong in the same way) counts as correct; a problem whose full answer is none (no sample
has an answer, or the best-scored one has none) has every sample counted wrong. Accuracy on
consensus labels is agreement with full sampling, not accuracy, and is reported as such.
"""

from __future__ import annotations

from ..policies.consensus import LABELS, check_labels, consensus_labels, full_answers, relabel
from ..policies.selection import Selection

__all__ = ["LABELS", "check_labels", "consensus_labels", "full_answers", "labels_note", "relabel"]


def labels_note(labels: str, select: Selection | str | None = None, n_max: int | None = None) -> str:
    """One sentence for reports: where "correct" came from."""
    if check_labels(labels) == "gold":
        return "labels: gold (each sample graded against the problem's gold answer)"
    rule = Selection(select).value if select is not None else "the policy's rule"
    return (f"labels: consensus (no gold: a sample counts as correct when its answer equals the {rule} answer over "
            f"the first {n_max} samples of its problem; accuracy is agreement with full sampling, and errors that "
            "full sampling makes are not seen)")
