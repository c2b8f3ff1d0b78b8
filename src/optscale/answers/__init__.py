"""Answer extraction, vote keys and grading.

:func:`extract_answer` finds a response's final answer, :func:`normalize_answer` turns it into
the key majority voting counts, and :func:`grade` checks it against the gold answer with
math-verify.
"""

from .extract import extract_answer, extract_boxed, extract_final_number, normalize_answer
from .grade import grade, grade_many

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_final_number",
    "normalize_answer",
    "grade",
    "grade_many",
]
