"""The completion-pool format: validation, streaming, atomic writes, converters and CLI."""

from __future__ import annotations

import csv
import gzip
import json
import stat
import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from conftest import need_module, run_cli, shared_data
from optscale.answers import grade
from optscale.errors import InputError
from optscale.pools import (
    MAX_TOKENS,
    PoolProblem,
    convert_flat,
    detect_format,
    iter_pool,
    json_schema,
    read_pool,
    write_pool,
)


def sample(answer: str | None = "1", score: float = 0.5, tokens: int = 10, **extra: Any) -> dict:
    return {"answer": answer, "score": score, "tokens": tokens, **extra}


def problem(id: str = "p1", answer: str = "1", samples: list | None = None, **extra: Any) -> dict:
    return {
        "id": id,
        "answer": answer,
        "samples": [sample()] if samples is None else samples,
        **extra,
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_problems(path: Path, problems: list[dict]) -> Path:
    return write_lines(path, [json.dumps(p) for p in problems])


# --- reading and writing ---------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    problems = [
        problem(
            "a",
            r"\frac{1}{2}",
            [
                sample(
                    "0.5", 0.9, 120, correct=True, text=r"... \boxed{0.5}", step_scores=[0.2, 0.9]
                ),
                sample(None, 0.1, 30, correct=False, finish_reason="length"),
            ],
            question="Half of one?",
            subject="Algebra",
            level=3,
            meta={"source": "MATH", "tags": ["x"]},
        ),
        problem("b", "7", [sample("7", 1.0, 0, correct=True)]),
    ]
    source = write_problems(tmp_path / "pool.jsonl", problems)
    first = read_pool(source)
    written = write_pool(tmp_path / "copy.jsonl", first)
    assert written == 2
    assert read_pool(tmp_path / "copy.jsonl") == first
    # Nothing is lost or invented: the written lines are the input objects.
    lines = (tmp_path / "copy.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == problems


def test_unknown_optional_fields_are_not_written(tmp_path: Path) -> None:
    pool = read_pool(write_problems(tmp_path / "in.jsonl", [problem()]), grade_missing=False)
    write_pool(tmp_path / "out.jsonl", pool)
    line = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert line == problem()  # no "question": null, "correct": null ...


def test_blank_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pool.jsonl",
        [
            "",
            json.dumps(problem("a")),
            "   ",
            "",
            json.dumps(problem("b", samples=[sample(score=2)])),
        ],
    )
    with pytest.raises(InputError) as info:
        read_pool(path)
    assert info.value.where == f"{path}:5 field samples[0].score"


def test_missing_correct_is_graded(tmp_path: Path) -> None:
    samples = [sample("0.5"), sample("1/3"), sample(None), sample("2", correct=True)]
    path = write_problems(tmp_path / "pool.jsonl", [problem("a", r"\frac{1}{2}", samples)])
    (graded,) = read_pool(path)
    expected = [grade(r"\frac{1}{2}", s["answer"]) for s in samples[:3]] + [True]
    assert [s.correct for s in graded.samples] == expected
    assert expected == [True, False, False, True]
    (raw,) = read_pool(path, grade_missing=False)
    assert [s.correct for s in raw.samples] == [None, None, None, True]


def _line(obj: Any) -> str:
    return json.dumps(obj)


def _raw_score(literal: str, tail: str = "") -> str:
    """A pool line whose score is a literal json.loads accepts but JSON forbids (NaN ...)."""
    sample = f'{{"answer": "1", "score": {literal}, "tokens": 1}}'
    return f'{{"id": "a", "answer": "1", "samples": [{sample}]{tail}}}'


BAD_POOLS: list[tuple[str, list[str], str, str]] = [
    # (case, lines, where (after "pool.jsonl:"), message fragment)
    ("malformed json", [_line(problem("a")), '{"id": "b", '], "2", "malformed JSON"),
    ("not an object", ["[1, 2]"], "1", "expected a JSON object"),
    ("missing id", [_line({"answer": "1", "samples": [sample()]})], "1 field id", "missing"),
    ("missing gold", [_line({"id": "a", "samples": [sample()]})], "1 field answer", "missing"),
    ("missing samples", [_line({"id": "a", "answer": "1"})], "1 field samples", "missing"),
    (
        "missing score",
        [_line(problem(samples=[sample(), {"answer": "1", "tokens": 3}]))],
        "1 field samples[1].score",
        "missing",
    ),
    (
        "missing answer key",
        [_line(problem(samples=[{"score": 0.1, "tokens": 3}]))],
        "1 field samples[0].answer",
        "missing",
    ),
    (
        "score as text",
        [_line(problem(samples=[sample(score="0.5")]))],
        "1 field samples[0].score",
        "valid number",
    ),
    (
        "score as bool",
        [_line(problem(samples=[sample(score=True)]))],
        "1 field samples[0].score",
        "valid number",
    ),
    (
        "score above 1",
        [_line(problem(samples=[sample()] * 3 + [sample(score=1.5)]))],
        "1 field samples[3].score",
        "less than or equal to 1",
    ),
    (
        "score below 0",
        [_line(problem(samples=[sample(score=-0.1)]))],
        "1 field samples[0].score",
        "greater than or equal to 0",
    ),
    (
        "score NaN",
        [_raw_score("NaN")],
        "1 field samples[0].score",
        "NaN and Infinity",
    ),
    (
        "score Infinity",
        [_raw_score("Infinity")],
        "1 field samples[0].score",
        "NaN and Infinity",
    ),
    (
        "score overflow",
        [_raw_score("1e999")],
        "1 field samples[0].score",
        "NaN and Infinity",
    ),
    (
        "NaN in metadata",
        [_raw_score("1", tail=', "meta": {"t": [-Infinity]}')],
        "1 field meta.t[0]",
        "NaN and Infinity",
    ),
    (
        "fractional tokens",
        [_line(problem(samples=[sample(tokens=3.5)]))],
        "1 field samples[0].tokens",
        "valid integer",
    ),
    (
        "negative tokens",
        [_line(problem(samples=[sample(tokens=-1)]))],
        "1 field samples[0].tokens",
        "greater than or equal to 0",
    ),
    (
        "answer as number",
        [_line(problem(samples=[sample(answer=3)]))],
        "1 field samples[0].answer",
        "valid string",
    ),
    (
        "correct as text",
        [_line(problem(samples=[sample(correct="yes")]))],
        "1 field samples[0].correct",
        "valid boolean",
    ),
    (
        "step score above 1",
        [_line(problem(samples=[sample(step_scores=[0.5, 2])]))],
        "1 field samples[0].step_scores[1]",
        "less than or equal to 1",
    ),
    ("empty samples", [_line(problem(samples=[]))], "1 field samples", "at least 1 item"),
    ("empty id", [_line(problem(id=""))], "1 field id", "at least 1 character"),
    ("numeric id", [_line(problem() | {"id": 3})], "1 field id", "valid string"),
    (
        "duplicate id",
        [_line(problem("a")), _line(problem("b")), _line(problem("a"))],
        "3 field id",
        "duplicate id 'a' (first on line 1)",
    ),
]


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [case[1:] for case in BAD_POOLS],
    ids=[case[0] for case in BAD_POOLS],
)
def test_bad_pools_name_the_place(
    tmp_path: Path, lines: list[str], where: str, message: str
) -> None:
    path = write_lines(tmp_path / "pool.jsonl", lines)
    with pytest.raises(InputError) as info:
        read_pool(path)
    assert info.value.where == f"{path}:{where}"
    assert message in info.value.detail
    assert str(info.value) == f"{path}:{where}: {info.value.detail}"


def test_several_errors_report_the_first_and_a_count(tmp_path: Path) -> None:
    path = write_problems(tmp_path / "pool.jsonl", [problem(samples=[sample(score=2, tokens=-1)])])
    with pytest.raises(InputError) as info:
        read_pool(path)
    assert info.value.where.endswith("field samples[0].score")
    assert "and 1 more error" in info.value.detail


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_pool(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="empty pool") as info:
        read_pool(path)
    assert info.value.where == str(path)


def test_unreadable_pools(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as info:
        read_pool(tmp_path / "missing.jsonl")
    assert info.value.where == str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="not a regular file") as info:
        read_pool(tmp_path)
    assert info.value.where == str(tmp_path)
    if Path("/proc/self/mem").exists():  # a path that exists but cannot be read as a file
        with pytest.raises(InputError) as info:
            read_pool("/proc/self/mem")
        assert info.value.where.startswith("/proc/self/mem")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(problem()).encode() + b"\n" + '{"id": "é"}'.encode("latin-1") + b"\n"
    )
    with pytest.raises(InputError, match="not UTF-8") as info:
        read_pool(path)
    assert info.value.where == f"{path}:2"


def test_iter_pool_streams(tmp_path: Path) -> None:
    # Only the lines consumed so far are read: the broken third line is never reached.
    path = write_lines(
        tmp_path / "pool.jsonl", [_line(problem("a")), _line(problem("b")), "{broken"]
    )
    problems = iter_pool(path)
    assert next(problems).id == "a"
    assert next(problems).id == "b"
    with pytest.raises(InputError):
        next(problems)
    # Nothing is opened until the first problem is asked for.
    lazy = iter_pool(tmp_path / "does-not-exist.jsonl")
    with pytest.raises(InputError, match="file not found"):
        next(lazy)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(problem()).encode() + b"\n")
    assert [p.id for p in read_pool(path)] == ["p1"]


def test_gzipped_pools_are_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + (_line(problem("a")) + "\n\n" + "{").encode()))
    problems = iter_pool(path)
    assert next(problems).id == "a"
    with pytest.raises(InputError, match="malformed JSON") as info:
        next(problems)
    assert info.value.where == f"{path}:3"


@pytest.mark.parametrize("tokens", [2**53, int("9" * 401), 1e300])
def test_token_counts_are_bounded(tmp_path: Path, tokens: Any) -> None:
    # A 401-digit count used to pass validation and crash replay (int too large for a float).
    path = write_lines(tmp_path / "pool.jsonl", [_line(problem("a")), _line(problem("b", samples=[sample(tokens=tokens)]))])
    with pytest.raises(InputError, match="less than or equal to 9007199254740991") as info:
        read_pool(path)
    assert info.value.where == f"{path}:2 field samples[0].tokens"
    assert read_pool(write_lines(path, [_line(problem("a", samples=[sample(tokens=MAX_TOKENS)]))]))[0].samples[0].tokens == MAX_TOKENS


def test_numbers_beyond_the_json_parser_limit_name_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pool.jsonl", [_line(problem("a")), '{"id": "b", "answer": "1", "n": ' + "9" * 5000 + "}"])
    with pytest.raises(InputError, match="malformed JSON") as info:
        read_pool(path)
    assert info.value.where == f"{path}:2"


# --- atomic writes ---------------------------------------------------------------------------


def test_failed_write_keeps_the_old_pool(tmp_path: Path) -> None:
    target = write_problems(tmp_path / "pool.jsonl", [problem("old")])
    before = target.read_bytes()
    good = PoolProblem.model_validate(problem("new"))
    for bad_value, error in [(float("nan"), ValueError), ({1, 2}, TypeError)]:
        unserialisable = PoolProblem.model_validate(problem("bad", meta=bad_value))
        with pytest.raises(error):
            write_pool(target, [good, unserialisable])
        assert target.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]

    def interrupted():
        yield good
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pool(target, interrupted())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def test_write_keeps_permissions_and_reports_bad_folders(tmp_path: Path) -> None:
    target = write_problems(tmp_path / "pool.jsonl", [problem("old")])
    target.chmod(0o640)
    write_pool(target, [PoolProblem.model_validate(problem("new"))])
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.id for p in read_pool(target)] == ["new"]
    with pytest.raises(InputError, match="cannot write") as info:
        write_pool(tmp_path / "no" / "such" / "pool.jsonl", [])
    assert info.value.where == str(tmp_path / "no" / "such" / "pool.jsonl")


# --- JSON schema and pydantic agree ----------------------------------------------------------

VALID = [
    problem(),
    problem(
        question=None,
        samples=[sample(None, 0, 0), sample("x", 1, 5, correct=None, text=None, step_scores=None)],
    ),
    problem(question="q", subject="Algebra", level=5, meta={"any": [1, None]}),
    problem(samples=[sample(tokens=3.0)]),
    problem(samples=[sample(score=1), sample(step_scores=[]), sample(extra_key="kept")]),
    problem(answer=""),
    problem(samples=[{"answer": "1", "tokens": 1}]),  # answer-only pools: score is optional
    problem(samples=[{"answer": "1", "score": None, "tokens": 1}]),
    problem() | {"answer": None},  # traffic pools have no gold (issue 16)
    {"id": "a", "samples": [sample()]},
]
INVALID = [
    {"answer": "1", "samples": [sample()]},
    {"id": "a", "answer": "1"},
    problem() | {"id": ""},
    problem() | {"id": 1},
    problem() | {"question": 3},
    problem() | {"samples": []},
    problem() | {"samples": sample()},
    problem(samples=[{"score": 0.5, "tokens": 1}]),
    problem(samples=[{"answer": "1", "score": 0.5}]),
    problem(samples=[sample(score=1.01)]),
    problem(samples=[sample(score=-1)]),
    problem(samples=[sample(score="0.5")]),
    problem(samples=[sample(score=True)]),
    problem(samples=[sample(tokens=2.5)]),
    problem(samples=[sample(tokens=-3)]),
    problem(samples=[sample(tokens=True)]),
    problem(samples=[sample(tokens="3")]),
    problem(samples=[sample(answer=1)]),
    problem(samples=[sample(correct=1)]),
    problem(samples=[sample(correct="true")]),
    problem(samples=[sample(text=5)]),
    problem(samples=[sample(step_scores=[0.1, 1.2])]),
    problem(samples=[sample(step_scores=0.5)]),
    problem(samples=["not a sample"]),
    [problem()],
    "a string",
]


@pytest.mark.parametrize(
    "obj",
    VALID + INVALID,
    ids=[f"valid{i}" for i in range(len(VALID))] + [f"invalid{i}" for i in range(len(INVALID))],
)
def test_json_schema_agrees_with_models(obj: Any) -> None:
    jsonschema = need_module("jsonschema")  # a test-only dependency
    validator = jsonschema.Draft202012Validator(json_schema())
    try:
        PoolProblem.model_validate(obj)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert validator.is_valid(obj) == model_ok
    assert model_ok == (obj in VALID)


def test_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema = need_module("jsonschema")
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# --- converters ------------------------------------------------------------------------------

# One sample per row, user's own column names, problems interleaved.
FLAT_ROWS: list[dict[str, Any]] = [
    {
        "qid": "q2",
        "prompt": "Half of 1?",
        "solution": r"\frac{1}{2}",
        "pred": "0.5",
        "reward": 0.75,
        "n_tokens": 120,
        "is_correct": None,
        "response": None,
        "steps": [0.5, 0.75],
    },
    {
        "qid": "q1",
        "prompt": "1+1?",
        "solution": "2",
        "pred": "2",
        "reward": 0.9,
        "n_tokens": 40,
        "is_correct": True,
        "response": "easy",
        "steps": None,
    },
    {
        "qid": "q2",
        "prompt": None,
        "solution": r"\frac{1}{2}",
        "pred": None,
        "reward": 0.25,
        "n_tokens": 300,
        "is_correct": False,
        "response": r"<think>\boxed{1}</think> so \boxed{\frac{1}{3}}",
        "steps": None,
    },
    {
        "qid": "q1",
        "prompt": "1+1?",
        "solution": "2",
        "pred": None,
        "reward": 0.0,
        "n_tokens": 7,
        "is_correct": None,
        "response": None,
        "steps": None,
    },
]
MAPPING = {
    "id": "qid",
    "question": "prompt",
    "gold": "solution",
    "answer": "pred",
    "score": "reward",
    "tokens": "n_tokens",
    "correct": "is_correct",
    "text": "response",
    "step_scores": "steps",
}


def _csv_cell(value: Any) -> Any:
    """How spreadsheets and pandas write cells: empty for null, lists as JSON, lower-case bools."""
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return value


def write_flat(path: Path, rows: list[dict[str, Any]], fmt: str) -> Path:
    if fmt == "jsonl":
        write_lines(path, [json.dumps(row) for row in rows])
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def expected_pool() -> list[dict]:
    """What FLAT_ROWS must become, derived from the rows themselves."""
    pool: dict[str, dict] = {}
    for row in FLAT_ROWS:
        entry = pool.setdefault(
            row["qid"],
            {"id": row["qid"], "question": row["prompt"], "answer": row["solution"], "samples": []},
        )
        item = {"answer": row["pred"], "score": row["reward"], "tokens": row["n_tokens"]}
        if row["pred"] is None and row["response"] is not None:
            item["answer"] = r"\frac{1}{3}"  # the last box after </think>
        for ours, theirs in (
            ("correct", "is_correct"),
            ("text", "response"),
            ("step_scores", "steps"),
        ):
            if row[theirs] is not None:
                item[ours] = row[theirs]
        entry["samples"].append(item)
    return list(pool.values())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_convert_flat_all_formats(tmp_path: Path, fmt: str) -> None:
    src = write_flat(tmp_path / f"flat.{fmt}", FLAT_ROWS, fmt)
    dst = tmp_path / "pool.jsonl"
    pool = convert_flat(src, dst, columns=MAPPING)
    written = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert written == expected_pool()
    assert [p.model_dump() for p in pool] == written
    assert [p.id for p in read_pool(dst)] == ["q2", "q1"]


def test_convert_flat_default_columns_and_explicit_format(tmp_path: Path) -> None:
    rows = [
        {
            "id": 1,
            "gold": 18,
            "answer": None,
            "text": "She pays $18.\n#### 18",
            "score": "0.5",
            "tokens": "12",
            "extra": "ignored",
        }
    ]
    src = write_lines(tmp_path / "flat.txt", [json.dumps(r) for r in rows])
    with pytest.raises(InputError, match="unknown suffix"):
        convert_flat(src, tmp_path / "pool.jsonl")
    (p,) = convert_flat(src, tmp_path / "pool.jsonl", fmt="jsonl")
    # Numbers in text columns become text; CSV-style text in number columns becomes numbers.
    assert (p.id, p.answer) == ("1", "18")
    assert p.samples[0].model_dump() == {
        "answer": "18",
        "score": 0.5,
        "tokens": 12,
        "text": rows[0]["text"],
    }


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("a.csv", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_detect_format_from_suffix(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


def test_detect_format_explicit() -> None:
    assert detect_format("a.csv", "parquet") == "parquet"
    with pytest.raises(InputError, match="unknown format 'xml'"):
        detect_format("a.csv", "xml")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_convert_flat_reads_gzipped_text_tables(tmp_path: Path, fmt: str) -> None:
    plain = write_flat(tmp_path / f"flat.{fmt}", FLAT_ROWS, fmt)
    src = tmp_path / f"flat.{fmt}.gz"
    src.write_bytes(gzip.compress(plain.read_bytes()))
    dst = tmp_path / "pool.jsonl"
    convert_flat(src, dst, columns=MAPPING)
    assert [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()] == expected_pool()
    with pytest.raises(InputError, match="unknown suffix '.parquet.gz'"):
        detect_format("flat.parquet.gz")


def test_convert_refuses_to_overwrite_its_source(tmp_path: Path) -> None:
    # `optscale convert X X` used to replace the table with the pool built from it.
    src = write_flat(tmp_path / "flat.jsonl", FLAT_ROWS, "jsonl")
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for dst in (src, link, tmp_path / "sub" / ".." / "flat.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(InputError, match="names the same file as") as info:
            convert_flat(src, dst, columns=MAPPING)
        assert info.value.where == "dst"
        assert src.read_bytes() == before


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_convert_flat_conflicting_gold_names_the_row(tmp_path: Path, fmt: str) -> None:
    rows = [dict(row) for row in FLAT_ROWS]
    rows[3]["solution"] = "3"
    src = write_flat(tmp_path / f"flat.{fmt}", rows, fmt)
    with pytest.raises(InputError) as info:
        convert_flat(src, tmp_path / "pool.jsonl", columns=MAPPING)
    # Row 4 of the table: line 4 of JSON Lines, line 5 of CSV (after the header), row 4 of Parquet.
    number = {"jsonl": 4, "csv": 5, "parquet": 4}[fmt]
    first = {"jsonl": 2, "csv": 3, "parquet": 2}[fmt]
    assert info.value.where == f"{src}:{number} column solution"
    assert f"'3' of id 'q1' differs from '2' given at {src}:{first}" in info.value.detail
    assert not (tmp_path / "pool.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "column", "message"),
    [
        ({"reward": 1.5}, "reward", "less than or equal to 1"),
        ({"reward": "high"}, "reward", "not a number"),
        ({"n_tokens": -2}, "n_tokens", "greater than or equal to 0"),
        ({"is_correct": "maybe"}, "is_correct", "expected true or false"),
        ({"steps": "[0.5, 7]"}, "steps", "less than or equal to 1"),
        ({"steps": "[0.5,"}, "steps", "expected a JSON list"),
        ({"solution": None}, "solution", "empty"),
        ({"qid": ""}, "qid", "empty"),
    ],
)
def test_convert_flat_bad_cells(tmp_path: Path, change: dict, column: str, message: str) -> None:
    rows = [dict(row) for row in FLAT_ROWS]
    rows[1].update(change)
    src = write_flat(tmp_path / "flat.jsonl", rows, "jsonl")
    with pytest.raises(InputError) as info:
        convert_flat(src, tmp_path / "pool.jsonl", columns=MAPPING)
    assert info.value.where == f"{src}:2 column {column}"
    assert message in info.value.detail


def test_convert_flat_csv_with_long_responses(tmp_path: Path) -> None:
    rows = [dict(row) for row in FLAT_ROWS]
    rows[1]["response"] = "step\n" * 100_000 + r"\boxed{2}"
    src = write_flat(tmp_path / "flat.csv", rows, "csv")
    pool = convert_flat(src, tmp_path / "pool.jsonl", columns=MAPPING)
    assert pool[1].samples[0].text == rows[1]["response"]


def test_convert_flat_bad_csv_cell_names_the_line(tmp_path: Path) -> None:
    rows = [dict(row) for row in FLAT_ROWS]
    rows[2]["reward"] = float("nan")
    src = write_flat(tmp_path / "flat.csv", rows, "csv")
    with pytest.raises(InputError, match="finite number") as info:
        convert_flat(src, tmp_path / "pool.jsonl", columns=MAPPING)
    assert info.value.where == f"{src}:4 column reward"


def test_convert_flat_missing_columns(tmp_path: Path) -> None:
    src = write_flat(tmp_path / "flat.csv", FLAT_ROWS, "csv")
    with pytest.raises(
        InputError, match=r"no such column \(map yours: id=NAME\)"
    ) as info:
        convert_flat(src, tmp_path / "pool.jsonl")
    assert info.value.where == f"{src}:2 column id"
    with pytest.raises(InputError, match="no such column") as info:
        convert_flat(src, tmp_path / "pool.jsonl", columns=MAPPING | {"text": "transcript"})
    assert info.value.where == f"{src}:2 column transcript"
    with pytest.raises(InputError, match="unknown column 'prediction'") as info:
        convert_flat(src, tmp_path / "pool.jsonl", columns={"prediction": "pred"})
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(InputError, match="no rows"):
        convert_flat(empty, tmp_path / "pool.jsonl")


def test_convert_flat_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        convert_flat(tmp_path / "missing.csv", tmp_path / "pool.jsonl")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        convert_flat(folder, tmp_path / "pool.jsonl")
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable Parquet file") as info:
        convert_flat(fake, tmp_path / "pool.jsonl")
    assert info.value.where == str(fake)


# --- command line ----------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capsys):
    """The real entry point in-process: ``cli(*args) -> (exit code, stdout, stderr)``."""
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal width
    return lambda *args: run_cli(args, monkeypatch, capsys)


def _column_flags() -> list[str]:
    return [flag for ours, theirs in MAPPING.items() for flag in ("--column", f"{ours}={theirs}")]


def test_cli_convert_and_validate(tmp_path: Path, cli) -> None:
    src = write_flat(tmp_path / "flat.csv", FLAT_ROWS, "csv")
    dst = tmp_path / "pool.jsonl"
    code, out, err = cli("convert", src, dst, *_column_flags())
    assert code == 0, err
    assert "wrote 2 problems, 4 samples" in out
    code, out, err = cli("validate", dst)
    assert code == 0, err
    pool = read_pool(dst)
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.count("│") == 3
    }
    counts = sorted(len(p.samples) for p in pool)
    samples = [s for p in pool for s in p.samples]
    answered = sum(s.answer is not None for s in samples) / len(samples)
    accuracy = sum(sum(s.correct for s in p.samples) / len(p.samples) for p in pool) / len(pool)
    assert rows == {
        "problems": str(len(pool)),
        "samples": str(len(samples)),
        "samples per problem (min / median / max)": (
            f"{counts[0]} / {statistics.median(counts):g} / {counts[-1]}"
        ),
        "samples with an answer": f"{100 * answered:.1f}%",
        "accuracy of a random sample": f"{100 * accuracy:.1f}%",
        "answers whose grading timed out (counted wrong)": "0",
        "answers whose grading failed (counted wrong)": "0",
        "mean tokens per sample": f"{sum(s.tokens for s in samples) / len(samples):.1f}",
    }


def test_cli_validate_without_grading(tmp_path: Path, cli) -> None:
    path = write_problems(
        tmp_path / "pool.jsonl", [problem("a", samples=[sample(correct=True)]), problem("b")]
    )
    code, out, err = cli("validate", path, "--no-grade")
    assert code == 0, err
    assert "100.0% (over the 1 problems with graded samples)" in out


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["validate", "{bad}"], "{bad}:2"),
        (["validate", "{huge}"], "{huge}:1 field samples[0].tokens"),
        (["validate", "{folder}"], "{folder}"),
        (["convert", "{flat}", "{out}", "--column", "gold"], "--column"),
        (["convert", "{flat}", "{out}", "--column", "prediction=pred"], "--column"),
        (["convert", "{flat}", "{out}", "--format", "xml"], "--format"),
        (["convert", "{flat}", "{flat}"], "DST"),
    ],
)
def test_cli_bad_input_is_one_located_line(tmp_path: Path, cli, args: list[str], where: str) -> None:
    paths = {
        "bad": write_lines(tmp_path / "bad.jsonl", [_line(problem()), "{"]),
        "huge": write_problems(tmp_path / "huge.jsonl", [problem(samples=[sample(tokens=int("9" * 401))])]),
        "folder": tmp_path,
        "flat": write_flat(tmp_path / "flat.csv", FLAT_ROWS, "csv"),
        "out": tmp_path / "out.jsonl",
    }
    before = paths["flat"].read_bytes()
    code, out, err = cli(*(arg.format(**paths) for arg in args))
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {where.format(**paths)}: "), err
    assert paths["flat"].read_bytes() == before and not paths["out"].exists()


def test_cli_reports_one_line_without_traceback(tmp_path: Path, cli) -> None:
    bad = write_problems(
        tmp_path / "pool.jsonl", [problem("a"), problem("b", samples=[sample(), sample(score=7)])]
    )
    code, out, err = cli("validate", bad)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {bad}:2 field samples[1].score: Input should be less than or equal to 1 (got 7)"
    ]


def test_cli_convert_then_validate(tmp_path: Path, cli) -> None:
    src = write_flat(tmp_path / "flat.parquet", FLAT_ROWS, "parquet")
    dst = tmp_path / "pool.jsonl"
    code, out, err = cli("convert", src, dst, *_column_flags())
    assert code == 0, err
    assert [
        json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()
    ] == expected_pool()
    code, out, err = cli("validate", dst)
    assert code == 0, err
    assert "valid pool" in out


# --- answer-only pools (no scores) -------------------------------------------------------------


def answer_only(id: str = "p1", answers: tuple = ("1", "2", "1")) -> dict:
    return problem(id, samples=[{"answer": a, "tokens": 10 + k} for k, a in enumerate(answers)])


def test_answer_only_pools_read_and_write_without_scores(tmp_path: Path) -> None:
    path = write_problems(tmp_path / "pool.jsonl", [answer_only("a"), answer_only("b", ("3", None))])
    pool = read_pool(path)
    assert [s.score for p in pool for s in p.samples] == [None] * 5
    assert [s.correct for s in pool[0].samples] == [True, False, True]  # still graded
    out = tmp_path / "out.jsonl"
    write_pool(out, pool)
    assert '"score"' not in out.read_text()  # absent and null mean the same: not written
    assert read_pool(out) == pool


@pytest.mark.parametrize(
    ("problems", "where", "fragment"),
    [
        # scores on the first problem, then a sample without one (a later line)
        ([problem("a"), answer_only("b")], "2 field samples[0].score", "missing, but line 1 samples[0] has one"),
        # no score first, then one with a score on the same line
        ([problem("a", samples=[{"answer": "1", "tokens": 1}, sample()])], "1 field samples[1].score",
         "present, but line 1 samples[0] has none"),
        ([answer_only("a"), answer_only("b"), problem("c")], "3 field samples[0].score", "present"),
    ],
)
def test_pools_with_scores_on_some_samples_only_are_refused(
    tmp_path: Path, problems: list[dict], where: str, fragment: str
) -> None:
    path = write_problems(tmp_path / "pool.jsonl", problems)
    with pytest.raises(InputError) as info:
        read_pool(path)
    assert info.value.where == f"{path}:{where}"
    assert fragment in info.value.detail and "on every sample or on none" in info.value.detail


def test_convert_flat_without_a_score_column_gives_an_answer_only_pool(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "reward"} for row in FLAT_ROWS]
    src = write_flat(tmp_path / "flat.csv", rows, "csv")
    mapping = {k: v for k, v in MAPPING.items() if k != "score"}
    pool = convert_flat(src, tmp_path / "pool.jsonl", columns=mapping)
    assert all(s.score is None for p in pool for s in p.samples)
    assert [s.score for p in read_pool(tmp_path / "pool.jsonl") for s in p.samples] == [None] * len(rows)
    # A score column that is filled in some rows only is refused at the first row that differs.
    rows = [dict(row) for row in FLAT_ROWS]
    rows[2]["reward"] = None
    src = write_flat(tmp_path / "flat.jsonl", rows, "jsonl")
    with pytest.raises(InputError, match="empty, but not at") as info:
        convert_flat(src, tmp_path / "pool2.jsonl", columns=MAPPING)
    assert info.value.where == f"{src}:3 column reward"
    assert not (tmp_path / "pool2.jsonl").exists()


def test_cli_validate_and_replay_answer_only_gzipped_pools(tmp_path: Path, cli) -> None:
    """Answer-only pools, gzipped: validate and an answer-based replay work, a score-based one is refused."""
    path = tmp_path / "pool.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(6):
            handle.write(json.dumps(answer_only(f"p{i}", ("1", "2", "1", "1", None))) + "\n")
    code, out, err = cli("validate", path)
    assert code == 0, err
    code, out, err = cli("replay", path, "--policy", "sc", "--n-max", "4")
    assert code == 0, err
    assert "sc@4" in out
    code, out, err = cli("replay", path, "--policy", "optscale0", "--n-max", "4")
    assert code != 0
    assert "policy 'optscale0' needs sample scores" in err and "samples[].score" in err
    assert "Traceback" not in err and err.count("error") == 1


def test_shared_answer_pools_validate_and_replay() -> None:
    """The shared real answer pools (gzipped, no scores): read, laid out, answer-based replay only."""
    from optscale.policies import make_policy
    from optscale.replay import build_batch

    folder = shared_data("pools", "boinf")
    paths = sorted(folder.glob("*.jsonl.gz"))
    assert paths
    for path in paths[:3]:
        pool = read_pool(path)
        batch = build_batch(pool, orders=2, seed=0, source=path.name)
        assert not batch.has_scores and batch.answer.max() >= 0
        decisions = make_policy("sc", 8).replay(batch)
        assert (decisions.chosen >= 0).mean() > 0.9
        with pytest.raises(InputError) as info:
            make_policy("optscale0", 8).replay(batch)
        assert info.value.where == f"{path.name} field samples[].score"
        assert "policy 'optscale0' needs sample scores" in info.value.detail


# ----------------------------------------------------------------------------- review 9 regressions


@pytest.mark.parametrize("dst", [".", "/", ""])
def test_convert_to_a_folder_fails_before_reading(tmp_path: Path, cli, monkeypatch, dst: str) -> None:
    # `convert flat.jsonl .` crashed with "PosixPath('.') has an empty name" after reading the table.
    import optscale.pools.convert as convert_module

    src = write_flat(tmp_path / "flat.jsonl", FLAT_ROWS, "jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(convert_module._READERS, "jsonl", lambda path: pytest.fail("read before checking DST"))
    code, _, err = cli("convert", src, dst, *_column_flags())
    assert code == 2 and err.startswith("error: DST: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_convert_refuses_a_destination_that_is_not_json_lines(tmp_path: Path, cli) -> None:
    # `convert flat.jsonl out.csv` wrote JSON Lines into a .csv file.
    src = write_flat(tmp_path / "flat.jsonl", FLAT_ROWS, "jsonl")
    for name in ("out.csv", "out.jsonl.gz", "out.parquet"):
        code, _, err = cli("convert", src, tmp_path / name, *_column_flags())
        assert code == 2 and err.startswith("error: DST: ") and ".jsonl" in err, err
        assert not (tmp_path / name).exists()


def test_atomic_open_refuses_paths_without_a_file_name(tmp_path: Path) -> None:
    from optscale.io import atomic_open, write_text

    for path in (".", "/", "", tmp_path):
        with pytest.raises(InputError, match="is a folder, not a file name"):
            write_text(path, "x")
    with pytest.raises(InputError) as info, atomic_open(tmp_path / "..", "w"):
        pass
    assert info.value.where == str(tmp_path / "..")


def test_a_symlink_loop_is_not_reported_as_missing(tmp_path: Path, cli) -> None:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    code, _, err = cli("validate", loop)
    assert code == 2 and err.strip() == f"error: {loop}: cannot read: a symbolic link loop", err


def test_validate_counts_grading_timeouts(tmp_path: Path, cli, monkeypatch) -> None:
    import importlib

    grading = importlib.import_module("optscale.answers.grade")
    monkeypatch.setattr(grading._worker, "grade", lambda gold, prediction, timeout: grading.Grade(False, "timeout"))
    grading._grade_cached.cache_clear()
    path = write_problems(tmp_path / "pool.jsonl", [problem("a", samples=[sample("7"), sample("8")]),
                                                     problem("b", samples=[sample("7", correct=True)])])
    try:
        code, out, err = cli("validate", path)
    finally:
        grading._grade_cached.cache_clear()
    assert code == 0, err
    row = next(line for line in out.splitlines() if "timed out" in line)
    assert row.split("│")[2].strip() == "2"


def test_samples_per_problem_are_bounded(tmp_path: Path) -> None:
    """A small gzipped file must not make the readers (and replay, which pads every problem to the
    widest) allocate without bound: a problem holds at most MAX_SAMPLES samples."""
    from optscale.pools import MAX_SAMPLES

    path = tmp_path / "wide.jsonl.gz"
    sample = {"answer": "1", "score": 0.5, "tokens": 1}
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"id": "a", "answer": "1", "samples": [sample] * MAX_SAMPLES}) + "\n")
        fh.write(json.dumps({"id": "b", "answer": "1", "samples": [sample] * (MAX_SAMPLES + 1)}) + "\n")
    with pytest.raises(InputError) as info:
        list(iter_pool(path))
    assert info.value.where == f"{path}:2 field samples" and "at most 65536" in info.value.detail
    assert path.stat().st_size < 200_000


def test_convert_bounds_samples_per_problem(tmp_path: Path) -> None:
    from optscale.pools import MAX_SAMPLES

    src = tmp_path / "flat.csv"
    src.write_text("id,gold,answer,score,tokens\n" + "a,1,1,0.5,3\n" * (MAX_SAMPLES + 1))
    with pytest.raises(InputError) as info:
        convert_flat(src, tmp_path / "pool.jsonl")
    assert info.value.where == str(src) and "at most 65,536 samples" in info.value.detail
    assert not (tmp_path / "pool.jsonl").exists()
