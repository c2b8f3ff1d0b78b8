"""Answer extraction, vote keys and grading.

:func:`extract_answer` finds a response's final answer, :func:`normalize_answer` turns it into
the key majority voting counts, and :func:`grade` checks it against the gold answer with
math-verify in a separate process with a time limit (:func:`grade_detail` says how a verdict
was reached, :func:`grade_async` grades without blocking an event loop).
"""

from .extract import extract_answer, extract_boxed, extract_final_number, normalize_answer
from .grade import Grade, grade, grade_async, grade_detail, grade_many

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_final_number",
    "normalize_answer",
    "Grade",
    "grade",
    "grade_async",
    "grade_detail",
    "grade_many",
]
