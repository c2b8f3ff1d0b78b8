"""The architecture, checked: import layers, a CLI that starts without the heavy libraries, its
command table, and its logging options."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_hold():
    """The contracts of ``[tool.importlinter]`` in pyproject.toml, function-local imports included."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the test extra)")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


HEAVY = ("scipy.stats", "sympy", "matplotlib", "torch", "sklearn", "math_verify", "optscale.predictor",
         "optscale.fit", "optscale.policies", "optscale.cli.offline", "optscale.cli.live")

PROBE = """
import json, sys
sys.argv = ["optscale", *ARGS]
from optscale.cli import main
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES=" + json.dumps(sorted(sys.modules)))
"""


def _modules_after(*args: str) -> tuple[set[str], str]:
    code = PROBE.replace("ARGS", json.dumps(list(args)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="100"))
    out, _, listed = proc.stdout.rpartition("\nMODULES=")
    assert listed, proc.stderr
    return set(json.loads(listed)), out


def test_help_imports_no_heavy_library():
    modules, out = _modules_after("--help")
    assert "predictor" in out and "replay" in out
    assert not {m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY or
                any(m.startswith(h + ".") for h in HEAVY)}


def test_a_commands_help_imports_only_its_module():
    modules, out = _modules_after("predictor", "--help")
    assert "train" in out
    assert "optscale.cli.predictor" in modules and "optscale.cli.live" not in modules


def test_command_table_matches_the_commands():
    """The root help lists commands from a table; each line must be the command's own first line."""
    from optscale.cli.app import load_command
    from optscale.cli.commands import COMMANDS

    for name, entry in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert " ".join(command.help.split("\n\n")[0].split()) == entry.help, name


@pytest.fixture
def restore_logging():
    """The CLI configures logging for its process; put it back for the tests that follow."""
    root, ours = logging.getLogger(), logging.getLogger("optscale")
    saved = root.level, list(root.handlers), ours.level
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    ours.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("flags, level", [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG),
                                          (["--verbose", "--verbose"], logging.DEBUG), (["-q"], logging.ERROR)])
def test_verbosity_options_set_the_log_level(flags, level):
    from typer.testing import CliRunner

    from optscale.cli import app

    res = CliRunner().invoke(app, [*flags, "predictor", "--help"])
    assert res.exit_code == 0, res.output
    assert logging.getLogger("optscale").level == level
    assert logging.getLogger("optscale.answers.grade").getEffectiveLevel() == level


@pytest.mark.usefixtures("restore_logging")
def test_log_messages_go_to_stderr(monkeypatch, capsys):
    from conftest import run_cli

    code, out, err = run_cli(["-q", "predictor", "--help"], monkeypatch, capsys)
    logging.getLogger("optscale.test").error("something failed")
    logging.getLogger("optscale.test").warning("hidden with -q")
    err = capsys.readouterr().err
    assert code == 0 and "something failed" in err and "hidden" not in err
