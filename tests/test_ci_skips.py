"""CI cannot pass by skipping: under ``CI=true`` a test that lacks an optional dependency or the
shared data fails; elsewhere it skips, and pytest's summary (``-ra``) says why.

The mechanism is ``need``, ``need_module`` and ``shared_data`` of tests/conftest.py, checked here
by running small test files through pytest with and without ``CI``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).parent

NEEDS = """
from conftest import need, need_module, shared_data


def test_a_missing_module():
    need_module("optscale_no_such_module", "the imaginary extra is not installed")


def test_missing_shared_data():
    shared_data("benchmarks", "no-such-file.jsonl")


def test_a_missing_condition():
    need(False, "the machine lacks a thing")


def test_a_module_that_breaks_on_import_is_an_error_not_a_skip():
    need_module("broken_dep")


def test_what_is_there_passes():
    assert need_module("json").dumps(1) == "1"
    need(True, "never said")
"""

MODULE_NEEDS = """
from conftest import need_module

need_module("optscale_no_such_module", "the imaginary extra is not installed")


def test_never_runs():
    pass
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(test_needs=NEEDS, test_module_needs=MODULE_NEEDS,
                        broken_dep="import optscale_no_such_inner_module\n")
    pytester.syspathinsert()
    return pytester


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_ci_a_missing_need_skips_with_its_reason(suite, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-ra", "test_needs.py")
    result.assert_outcomes(passed=1, skipped=3, failed=1)
    result.stdout.fnmatch_lines_random([
        "SKIPPED [[]1[]] test_needs.py:*: the imaginary extra is not installed (no module named 'optscale_no_such_*')",
        "SKIPPED [[]1[]] test_needs.py:*: the test needs the shared data set at *no-such-file.jsonl (not part of *)",
        "SKIPPED [[]1[]] test_needs.py:*: the machine lacks a thing",
        "FAILED test_needs.py::test_a_module_that_breaks_on_import_is_an_error_not_a_skip*",
        "E   ModuleNotFoundError: No module named 'optscale_no_such_inner_module'",
    ])
    result = suite.runpytest("-ra", "test_module_needs.py")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_module_needs.py:*: the imaginary extra is not installed*"])


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_need_fails_with_its_reason(suite, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-ra", "test_needs.py")
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines_random([
        "FAILED test_needs.py::test_a_missing_module - *CI=true and the imaginary extra is not installed (no module*",
        "FAILED test_needs.py::test_missing_shared_data - *CI=true and the test needs the shared data set at *",
        "FAILED test_needs.py::test_a_missing_condition - *CI=true and the machine lacks a thing",
    ])
    result = suite.runpytest("-ra", "test_module_needs.py")  # at module level: a collection error
    result.assert_outcomes(errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*CI=true and the imaginary extra is not installed*"])


def test_every_skip_for_a_missing_dependency_goes_through_need():
    """``pytest.importorskip`` would skip under CI too: the test files call ``need_module`` instead."""
    forbidden = "pytest." + "importorskip("
    offenders = [p.name for p in sorted(HERE.glob("*.py")) if forbidden in p.read_text(encoding="utf-8")]
    assert not offenders, f"use conftest.need_module, not {forbidden}...) in {offenders}"


def test_the_suite_summary_lists_every_skip_with_its_reason():
    """The README's test command and CI run pytest with the project's options: ``-ra`` names each skip."""
    options = tomllib.loads((HERE.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]
    assert "-ra" in options["ini_options"]["addopts"].split()
