"""The ``learned`` policy: stop where the fitted table says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ...errors import InputError
from ..common import PolicyBase
from ..episode import Step
from ..registry import register_policy
from ..selection import Selection
from .table import StoppingTable, load_table


@register_policy
class Learned(PolicyBase):
    """Optimal stopping by a table fitted on calibration data (``optscale policy fit``): stop when
    P(correct now) >= E[value after one more sample] - lambda x its tokens."""

    name: ClassVar[str] = "learned"
    label: ClassVar[str] = "Learned stopping table"  # row name in report tables
    table: Any = Field(None, validate_default=True,
                       description="stopping table: a JSON file written by `optscale policy fit`, or a StoppingTable; "
                                   "select defaults to the table's")

    @model_validator(mode="before")
    @classmethod
    def _read_table_once(cls, data):
        """Read a table file once, here: the policy keeps the object it checked (a later change of
        the file does not reach it), and ``select`` defaults to the table's."""
        if isinstance(data, dict) and data.get("table") is not None:
            try:
                table = _as_table(data["table"])
            except (InputError, TypeError):
                return data  # reported, located, by the table's own validator
            data = {**data, "table": table}
            if "select" not in data:
                data["select"] = table.select
        return data

    @field_validator("table")
    @classmethod
    def _check_table(cls, value, info):
        if value is None:
            raise PydanticCustomError("table", "learned needs a stopping table: fit one with `optscale policy fit` "
                                               "and pass its JSON file")
        try:
            table = _as_table(value)
        except (InputError, TypeError) as exc:
            raise PydanticCustomError("table", "{message}", {"message": str(exc)}) from None
        n_max, rule = info.data.get("n_max"), info.data.get("select")
        if n_max is not None and table.n_max != n_max:
            raise PydanticCustomError("table", "{message}", {"message": (
                f"{_where(value)} was fitted for n_max {table.n_max}, not {n_max}; fit a table for this n_max")})
        if rule is not None and table.select != Selection(rule).value:
            raise PydanticCustomError("table", "{message}", {"message": (
                f"{_where(value)} was fitted for select={table.select}, not {Selection(rule).value}; fit a table "
                "for this selection rule or leave select unset")})
        return table

    @field_serializer("table")
    def _table_text(self, value):
        return value.path if value.path is not None else value.label()

    def stopping_table(self) -> StoppingTable:
        """The table read and checked when the policy was built (never read again)."""
        return self.table

    def episode_context(self, problem) -> dict:
        self.table.check_problems([problem.id], [problem.question])
        return {"mixed": self.table.mixed([problem.id], [problem.question])}

    def requires_scores(self) -> bool:
        return self.stopping_table().uses_scores

    def initial_plan(self) -> int:
        return 1

    def decide(self, episode) -> Step:
        table = self.stopping_table()
        score, code = episode.arrays()
        states, _ = table.states(score, code, np.array([episode.tokens], dtype=float), episode.n)
        if episode.n < self.n_max and not table.stops(states, episode.context["mixed"])[0, -1]:
            return Step(False, episode.n + 1)
        return Step(True, episode.n, "table")

    def replay_stops(self, batch):
        table = self.stopping_table()
        table.check_problems(batch.ids, batch.questions)
        width = min(self.n_max, batch.shape[2])
        states, _ = table.states(batch.flat("score"), batch.flat("answer"), batch.flat("tokens"), width)
        hit = table.stops(states, np.repeat(table.mixed(batch.ids, batch.questions), batch.shape[1]))
        n_used = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.n_max)
        return n_used, {}


def _as_table(value) -> StoppingTable:
    if isinstance(value, StoppingTable):
        return value
    if isinstance(value, (str, Path)):
        return load_table(value)
    raise TypeError("table must be a stopping-table file path or a StoppingTable")


def _where(value) -> str:
    if isinstance(value, StoppingTable) and value.path is not None:
        return value.path
    return str(value) if isinstance(value, (str, Path)) else "the table"
