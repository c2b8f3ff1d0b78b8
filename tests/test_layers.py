"""The architecture, checked: import layers (dynamic imports by string included), a CLI that starts
without the heavy libraries, its command table, and its logging options."""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# -- the layer contracts, with the imports that import-linter cannot see ------------------------
# import-linter reads ``import`` statements (function-local ones too) but not imports by string:
# ``importlib.import_module("optscale.cli.app")`` or ``__import__(...)``. The check below finds them in
# the syntax tree of every module and adds each as an import edge to import-linter's graph, so the
# same contracts of ``[tool.importlinter]`` judge them. A string the tree cannot fold to a constant
# is allowed only in the dispatchers below, whose targets come from their own tables.


def _literal_assignment(path: Path, name: str):
    """The literal value assigned to ``name`` at the top of ``path``."""
    for node in ast.parse(path.read_text()).body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path}: no literal {name}")


def _command_modules(src: Path) -> set[str]:
    """The modules named by ``COMMANDS`` in cli/commands.py (``Entry("offline", ...)``)."""
    tree = ast.parse((src / "optscale/cli/commands.py").read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id == "Entry"}


#: Modules whose import_module takes a computed name, and the modules that name can be.
DISPATCHERS = {
    "optscale": lambda src: {f"optscale.{m}"
                             for m in _literal_assignment(src / "optscale/__init__.py", "_LAZY").values()},
    "optscale.cli.app": lambda src: {f"optscale.cli.{m}" for m in _command_modules(src)},
}


def _fold(node: ast.AST) -> str | None:
    """A string expression made only of constants (``"a" + "b"``, ``f"{'a'}.b"``), or None."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left), _fold(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = [_fold(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values]
        return None if None in parts else "".join(parts)
    return None


def _module_name(src: Path, path: Path) -> tuple[str, str]:
    """A file's module name and its ``__package__``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def dynamic_imports(src: Path) -> list[dict]:
    """Every import by string of an optscale module under ``src``, as import-linter graph edges."""
    edges, unresolved = [], []
    for path in sorted((src / "optscale").rglob("*.py")):
        module, package = _module_name(src, path)
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        aliases = {"import_module", "__import__"} | {
            a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "importlib" for a in node.names if a.name in ("import_module", "__import__")}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called not in aliases:
                continue
            name = _fold(node.args[0])
            anchor = node.args[1] if len(node.args) > 1 and called != "__import__" else next(
                (k.value for k in node.keywords if k.arg == "package"), None)
            base = ({"__package__": package, "__name__": module}.get(anchor.id) if isinstance(anchor, ast.Name)
                    else None if anchor is None else _fold(anchor))
            if name is None or (name.startswith(".") and not base):
                if module not in DISPATCHERS:
                    unresolved.append(f"{path.relative_to(src)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
                    continue
                targets = DISPATCHERS[module](src)
            else:
                targets = {importlib.util.resolve_name(name, base) if name.startswith(".") else name}
            for target in targets:
                if target == "optscale" or target.startswith("optscale."):
                    edges.append({"importer": module, "imported": target, "line_number": node.lineno,
                                  "line_contents": lines[node.lineno - 1].strip()})
    assert not unresolved, ("imports by a computed name that the layer check cannot follow (use a literal "
                            "string, or a dispatcher with a table in tests/test_layers.py):\n" + "\n".join(unresolved))
    return edges


def lint(src: Path, config: Path) -> bool:
    """import-linter's contracts in ``config`` on the package under ``src``, dynamic imports included;
    prints import-linter's report and returns whether every contract is kept (run in its own process:
    import-linter's settings are global)."""
    from importlinter import configuration
    from importlinter.application import use_cases
    from importlinter.application.app_config import settings

    configuration.configure()
    edges, builder = dynamic_imports(src), settings.GRAPH_BUILDER

    class WithDynamicImports:
        def build(self, **options):
            graph = builder.build(**options)
            for edge in edges:
                graph.add_import(**edge)
            return graph

    settings.configure(GRAPH_BUILDER=WithDynamicImports())
    return use_cases.lint_imports(config_filename=str(config), cache_dir=None, no_logo=True) is use_cases.SUCCESS


def _lint(src: Path) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from test_layers import lint; from pathlib "
            f"import Path; sys.exit(0 if lint(Path({str(src)!r}), Path({str(ROOT / 'pyproject.toml')!r})) else 1)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(src), COLUMNS="200"))


def test_import_layers_hold():
    """The contracts of ``[tool.importlinter]`` in pyproject.toml, function-local imports and imports
    by string included; an ignore that matches no import is an error too."""
    proc = _lint(SRC)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "0 broken" in proc.stdout


def test_the_dynamic_imports_are_found():
    """The scan sees the package's own imports by name (the lazy names of ``optscale``, the CLI's commands)."""
    found = {(e["importer"], e["imported"]) for e in dynamic_imports(SRC)}
    assert {("optscale", "optscale.fit"), ("optscale", "optscale.stats"),
            ("optscale.cli.app", "optscale.cli.offline")} <= found


#: Each violation the contracts must catch: (file under src/optscale, text appended, what the report names).
VIOLATIONS = {
    "import by string from the core": (
        "stats/truncnorm.py", "\n\ndef _sneak():\n    import importlib\n\n"
        "    return importlib.import_module(\"optscale.cli.app\")\n", "optscale.stats.truncnorm -> optscale.cli.app"),
    "relative import by string": (
        "fit/estimators.py", "\n\ndef _sneak():\n    from importlib import import_module as load\n\n"
        "    return load(\".serve\" + \".app\", \"optscale\")\n", "optscale.fit.estimators -> optscale.serve.app"),
    "cycle inside live": ("live/types.py", "\nfrom .sampler import SamplerSettings  # noqa: E402\n",
                          "optscale.live.types -> optscale.live.sampler"),
    "the top-level package importing serve": ("__init__.py", "\nfrom .serve import app  # noqa: E402\n",
                                              "optscale -> optscale.serve"),
    "a cycle inside policies": ("policies/registry.py", "\nfrom .beacon import Beacon  # noqa: E402\n",
                                "optscale.policies.registry -> optscale.policies.beacon"),
    "a cycle inside serve": ("serve/settings.py", "\nfrom .app import create_app  # noqa: E402\n",
                             "optscale.serve.settings -> optscale.serve.app"),
}


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """A pristine copy of the package to break, one violation at a time."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(SRC / "optscale", src / "optscale", ignore=shutil.ignore_patterns("__pycache__", "data"))
    return src


@pytest.mark.parametrize("violation", VIOLATIONS)
def test_each_violation_breaks_a_contract(package_copy, violation):
    """The check can fail: each violation, applied to a copy of the package, breaks a contract."""
    relative, text, named = VIOLATIONS[violation]
    target = package_copy / "optscale" / relative
    original = target.read_text()
    target.write_text(original + text)
    try:
        proc = _lint(package_copy)
    finally:
        target.write_text(original)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert named in proc.stdout.replace("\n", " "), proc.stdout[-3000:]


def test_an_unfollowable_dynamic_import_fails_the_check(package_copy):
    """A name computed at run time outside the dispatchers cannot be checked: the check refuses it."""
    target = package_copy / "optscale" / "replay" / "engine.py"
    original = target.read_text()
    target.write_text(original + "\n\ndef _sneak(name):\n    import importlib\n\n"
                                 "    return importlib.import_module('optscale.' + name)\n")
    try:
        proc = _lint(package_copy)
    finally:
        target.write_text(original)
    assert proc.returncode != 0 and "replay/engine.py" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_a_stale_ignore_fails_the_check(package_copy, tmp_path):
    """An ``ignore_imports`` entry that matches no import is reported as an error, not kept silently."""
    target = package_copy / "optscale" / "live" / "runner.py"
    original = target.read_text()
    assert "compose" in original  # the import that the ignore of the layers contract matches
    target.write_text("\n".join(line for line in original.splitlines() if "compose" not in line) + "\n")
    try:
        proc = _lint(package_copy)
    finally:
        target.write_text(original)
    assert proc.returncode != 0 and "optscale.live.runner -> optscale.compose" in proc.stdout + proc.stderr, \
        proc.stdout[-3000:] + proc.stderr[-2000:]


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
