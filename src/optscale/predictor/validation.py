"""Validation of everything a predictor reads: hyper-parameters and saved model folders.

Hyper-parameters come from ``--param NAME=VALUE`` (JSON) or from a saved ``config.json``, and
reach numpy, scikit-learn and torch unchecked otherwise: a string where a list belongs, a
negative grid length, NaN or 1e308 all surfaced as tracebacks from deep inside a fit, and a
large grid length allocated gigabytes. So every kind declares its parameters as a pydantic
model (:class:`Params`): strict JSON types (no ``true`` for a number, no ``"3"`` for an
integer), finite numbers, ranges, and bounded sizes (grid lengths, dimensions), with the
field's ``description`` saying what is allowed. The kind's ``state`` in ``config.json`` is a
pydantic model too.

A weights file (``.npz``) is a zip of arrays whose headers declare their shapes, so a small
hand-made file could make numpy allocate any amount: :func:`read_npz` checks each declared
size against a bound and against the member's own size before reading it, and refuses
object arrays (pickles). :class:`Weights` then checks each array's dtype, shape and
finiteness as a kind takes it. Every failure is one :class:`~optscale.errors.InputError`
naming the parameter, or the file and field.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError,
                      model_validator)

from ..errors import InputError
from ..pools.io import format_loc

__all__ = ["BLOCKS", "MAX_GRID", "Params", "State", "EncoderState", "LogGrid", "NgramRange", "BlockWeights",
           "Finite", "Positive", "validate", "read_npz", "Weights"]

#: Feature blocks of the CPU predictors.
BLOCKS = ("embedding", "tfidf", "meta")
#: Most values a penalty grid may hold: each costs a solve (RidgeCV) or two n x n products (kernel).
MAX_GRID = 100
#: Exponents of the penalty grid: 10**-10 to 10**10 spans every useful ridge penalty and never
#: underflows to 0 or overflows.
MAX_EXPONENT = 10
#: Largest block weight: weights times distances (at most 4) times gammas must stay finite.
MAX_BLOCK_WEIGHT = 1000.0
#: Longest word n-grams: the vocabulary grows with n, and 5-grams are already near-unique.
MAX_NGRAM = 5
#: Largest uncompressed weights file (the packaged default is 1.3 MB): bounds a zip bomb.
MAX_WEIGHTS_BYTES = 1 << 30

#: A number, never a boolean or a string; finite because both base models set ``allow_inf_nan=False``.
Finite = StrictFloat
Positive = Annotated[StrictFloat, Field(gt=0)]


def _check_blocks(weights: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(BLOCKS))
    if unknown:
        raise ValueError(f"unknown feature block(s): {', '.join(unknown)}")
    if not all(0 <= w <= MAX_BLOCK_WEIGHT for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"block weights must be >= 0 (at most {MAX_BLOCK_WEIGHT:g}) with at least one positive")
    return weights


def _check_ngrams(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] > value[1]:
        raise ValueError("the shortest n-gram must not be longer than the longest")
    return value


#: ``numpy.logspace(start, stop, num)`` of a ridge penalty grid.
LogGrid = tuple[Annotated[StrictFloat, Field(ge=-MAX_EXPONENT, le=MAX_EXPONENT)],
                Annotated[StrictFloat, Field(ge=-MAX_EXPONENT, le=MAX_EXPONENT)],
                Annotated[StrictInt, Field(ge=1, le=MAX_GRID)]]
LOG_GRID = (f"[start, stop, num] of numpy.logspace: exponents from -{MAX_EXPONENT} to {MAX_EXPONENT}, "
            f"num an integer from 1 to {MAX_GRID}")
NgramRange = Annotated[tuple[Annotated[StrictInt, Field(ge=1, le=MAX_NGRAM)], Annotated[StrictInt, Field(ge=1, le=MAX_NGRAM)]],
                       AfterValidator(_check_ngrams)]
NGRAM_RANGE = f"[shortest, longest] word n-gram, integers from 1 to {MAX_NGRAM}"
BlockWeights = Annotated[dict[str, StrictFloat], AfterValidator(_check_blocks)]
BLOCK_WEIGHTS = (f"an object of weights of the blocks {', '.join(BLOCKS)}: numbers from 0 to {MAX_BLOCK_WEIGHT:g}, "
                 f"at least one positive (a missing block weighs 0)")


class Params(BaseModel):
    """A kind's hyper-parameters: JSON values of strict type, finite, in range, of bounded size.

    Subclasses declare each as a field with its default and a ``description`` of what is
    allowed (errors quote it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class State(BaseModel):
    """What a kind's ``_save_weights`` returns, as ``config.json`` stores it under ``state``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EncoderState(State):
    """A saved :class:`~optscale.predictor.baselines.MetadataEncoder`: categories and their frequencies."""

    levels: list[StrictStr]
    subjects: list[StrictStr]
    level_freq: list[Annotated[StrictFloat, Field(ge=0, le=1)]]
    subject_freq: list[Annotated[StrictFloat, Field(ge=0, le=1)]]

    @model_validator(mode="after")
    def _consistent(self) -> "EncoderState":
        if len(self.level_freq) != len(self.levels) or len(self.subject_freq) != len(self.subjects):
            raise ValueError(f"{len(self.levels)} levels and {len(self.subjects)} subjects, but "
                             f"{len(self.level_freq)} and {len(self.subject_freq)} frequencies")
        if len(set(self.levels)) != len(self.levels) or len(set(self.subjects)) != len(self.subjects):
            raise ValueError("a level or subject is listed twice")
        return self


def _message(err: dict) -> str:
    cause = (err.get("ctx") or {}).get("error")
    if cause is not None:  # our own validators' ValueError: its text, without pydantic's "Value error, "
        return str(cause)
    got = json.dumps(err.get("input"), default=repr)  # as the user wrote it: JSON
    return f"{err['msg']} (got {got[:100] + '...' if len(got) > 100 else got})"


def validate(model: type[BaseModel], values: Any, where: str | None = None, field: str = "") -> BaseModel:
    """``values`` as an instance of ``model``, or one :class:`InputError` for the first problem.

    Without ``where`` (hyper-parameters given in code or by ``--param``) the error names the
    parameter, and its message says what is allowed. With ``where`` (a file), it names
    ``where field FIELD.path``, ``field`` being where ``values`` sit in that file (``state``).
    """
    def place(path: str) -> str:
        dotted = ".".join(part for part in (field, path) if part).replace(".[", "[")
        return f"{where} field {dotted}" if dotted else str(where)

    if not isinstance(values, dict):
        raise InputError(f"expected a JSON object, got {type(values).__name__}", place("") if where else "params")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = format_loc(err["loc"])
        if where is not None:
            raise InputError(_message(err), place(path)) from None
        name = str(err["loc"][0]) if err["loc"] else "params"
        inner = path[len(name):].lstrip(".")
        allowed = model.model_fields[name].description if name in model.model_fields else None
        raise InputError((f"at {inner}: " if inner else "") + _message(err) + (f"; allowed: {allowed}" if allowed else ""),
                         name) from None


def read_npz(path: Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``np.savez`` file, read within ``max_bytes`` (:data:`MAX_WEIGHTS_BYTES`)
    and without unpickling.

    Each member's header is read first: the array it declares must fit in the member's own
    (uncompressed) size, so no header makes numpy allocate more than the bound.
    """
    where = str(path)
    max_bytes = MAX_WEIGHTS_BYTES if max_bytes is None else max_bytes
    if not path.is_file():
        raise InputError("file not found", where)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise InputError(f"its arrays take {total} bytes, more than the {max_bytes} this reader accepts", where)
            arrays = {}
            for member in members:
                name = member.filename[:-4]
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(handle)
                    if dtype.hasobject:
                        raise InputError("holds Python objects (pickles), which are never loaded", f"{where} field {name}")
                    if math.prod(shape) * dtype.itemsize > member.file_size:
                        raise InputError(f"declares a {shape} array larger than its data", f"{where} field {name}")
                with archive.open(member) as handle:
                    arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InputError(f"not a readable weights file ({type(exc).__name__}: {exc})", where) from None
    return arrays


class Weights:
    """The arrays of a weights file, each checked as a kind takes it; errors name ``file field array``."""

    def __init__(self, path: Path):
        self.path = path
        self.arrays = read_npz(path)

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def error(self, name: str, message: str) -> InputError:
        return InputError(message, f"{self.path} field {name}")

    def take(self, name: str, shape: tuple[int | None, ...], integer: bool = False) -> np.ndarray:
        """Array ``name`` of this ``shape`` (``None``: any length), numeric and finite; as float
        (as int64 where ``integer``)."""
        if name not in self.arrays:
            raise self.error(name, "missing")
        array = self.arrays[name]
        kinds = "iu" if integer else "fiu"
        if array.dtype.kind not in kinds:
            raise self.error(name, f"expected {'integers' if integer else 'numbers'}, got dtype {array.dtype}")
        if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
            expected = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise self.error(name, f"expected shape {expected}, got {array.shape}")
        if integer:
            return array.astype(np.int64)
        if not np.isfinite(array).all():
            raise self.error(name, "holds NaN or infinite values")
        return array.astype(float)
