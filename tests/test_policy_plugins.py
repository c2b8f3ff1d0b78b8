"""Policies register themselves where they are defined, and other packages add policies through
entry points (group ``optscale.policies``), loaded on the first lookup or listing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from optscale.errors import InputError
from optscale.policies import POLICIES, Sample, make_policy
from optscale.policies.registry import PLUGIN_GROUP
from optscale.pools import PoolProblem
from optscale.replay import build_batch

PLUGIN = '''
from typing import ClassVar

import numpy as np

from optscale.policies import PolicyBase, register_policy
from optscale.policies.episode import Step


class TwoSamples(PolicyBase):
    """Draws two samples (or n_max, if fewer), whatever they score."""

    name: ClassVar[str] = "two-samples"

    def initial_plan(self):
        return min(2, self.n_max)

    def decide(self, episode):
        done = episode.n >= min(2, self.n_max)
        return Step(done, episode.n if done else episode.n + 1, "two" if done else "")

    def replay_stops(self, batch):
        return np.full(batch.flat("score").shape[0], min(2, self.n_max)), {}


@register_policy
class Decorated(TwoSamples):
    """The same rule, registered by its own decorator too."""

    name: ClassVar[str] = "two-decorated"


NOT_A_POLICY = 42
'''


def _install(site: Path, module: str, entry_points: dict[str, str], source: str = PLUGIN) -> None:
    """A real installed distribution: a module and a dist-info folder with entry_points.txt."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\n{lines}")


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """POLICIES as before any plug-in was loaded (restored afterwards), and a site folder on sys.path."""
    POLICIES.names()  # the installed plug-ins, if any, are loaded and kept
    monkeypatch.setattr(POLICIES, "_entries", dict(POLICIES._entries))
    monkeypatch.setattr(POLICIES, "_plugins_loaded", False)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("plugin_"):
            del sys.modules[name]


def test_a_policy_from_an_installed_package_is_loaded_on_first_lookup(fresh_registry):
    _install(fresh_registry, "plugin_rules", {"two-samples": "plugin_rules:TwoSamples",
                                              "two-decorated": "plugin_rules:Decorated"})
    assert "plugin_rules" not in sys.modules  # nothing is imported before the registry is asked
    names = POLICIES.names()
    assert {"two-samples", "two-decorated"} <= set(names) and names[0] == "bon"
    assert "plugin_rules" in sys.modules
    policy = make_policy("two-samples", 8)
    episode = policy.start()
    seen = [episode.observe(Sample(score=s)) for s in (0.1, 0.2)]
    assert seen[-1].value == "stop" and episode.result().n_samples == 2
    samples = [{"score": s, "answer": "1", "correct": True, "tokens": 5} for s in (0.1, 0.9, 0.3)]
    batch = build_batch([PoolProblem.model_validate({"id": "a", "answer": "1", "samples": samples})], orders=2)
    assert np.all(policy.replay(batch).n_used == 2)
    assert make_policy("two-decorated", 4).name == "two-decorated"


@pytest.mark.parametrize("value, expected", [
    ("plugin_gone:Rule", "ModuleNotFoundError"),
    ("plugin_rules:Missing", "AttributeError"),
    ("plugin_rules:NOT_A_POLICY", "not a policy class"),
    ("plugin_rules:TwoSamples", "named 'two-samples', not 'other-name'"),
])
def test_a_broken_entry_point_is_named(fresh_registry, value, expected):
    _install(fresh_registry, "plugin_rules", {"other-name": value})
    with pytest.raises(InputError) as info:
        POLICIES.get("bon")
    where = info.value.where
    assert f"entry point other-name = {value}" in where and PLUGIN_GROUP in where and "plugin_rules" in where
    assert expected in info.value.detail
    with pytest.raises(InputError):  # still named on the next lookup, never half-loaded and silent
        make_policy("bon", 4)


def test_an_entry_point_may_not_take_a_built_in_name(fresh_registry):
    source = PLUGIN.replace('name: ClassVar[str] = "two-samples"', 'name: ClassVar[str] = "bon"')
    _install(fresh_registry, "plugin_clash", {"bon": "plugin_clash:TwoSamples"}, source)
    with pytest.raises(InputError, match="registered twice") as info:
        POLICIES.names()
    assert "entry point bon = plugin_clash:TwoSamples" in info.value.where


def test_policies_register_where_they_are_defined():
    """Every built-in policy's module registers it (``@register_policy``); the registry imports no policy."""
    root = Path(__file__).resolve().parents[1] / "src" / "optscale" / "policies"
    registry = ast.parse((root / "registry.py").read_text())
    imported = {node.module for node in ast.walk(registry) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"beacon", "boinf", "consistency", "deepconf", "fixed", "learned", "optscale", "pandora",
                           "threshold"}
    for name, cls in POLICIES.items():
        module = Path(sys.modules[cls.__module__].__file__)
        decorated = [n for n in ast.walk(ast.parse(module.read_text())) if isinstance(n, ast.ClassDef)
                     and n.name == cls.__name__ and any(getattr(d, "id", None) == "register_policy"
                                                        for d in n.decorator_list)]
        assert decorated or name == "learned", f"{name}: {cls.__qualname__} carries no @register_policy"
