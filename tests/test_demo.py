"""The demo shows the winner first: `learned` fitted and replayed, a summary of the best rule per N_max
(computed from the replay), terminal tables that fit 100 columns, and the two frontier plots."""

import csv
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from conftest import run_cli, toy_pool
from optscale.compose import build_policy
from optscale.pools import PoolProblem
from optscale.replay import build_batch, replay_policies
from optscale.replay.metrics import envelope_value
from optscale.report import replay_summary
from optscale.report.summary import best_rules, equal_accuracy_tokens, featured_rows, summary_table


def _pool(problems: int, samples: int, seed: int = 0) -> list[PoolProblem]:
    return [PoolProblem.model_validate({
        "id": p.id, "question": p.question, "answer": p.answer,
        "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                    for s in p.samples],
    }) for p in toy_pool(problems=problems, samples=samples, seed=seed)]


def _row(policy, gain, accuracy, tokens, n_max=8, dataset="d"):
    return {"dataset": dataset, "policy": policy, "label": policy, "n_max": n_max, "accuracy": accuracy,
            "ci_low": accuracy - 0.02, "ci_high": accuracy + 0.02, "mean_tokens": tokens, "gain_vs_envelope": gain,
            "gain_vs_envelope_ci_low": gain - 0.01, "gain_vs_envelope_ci_high": gain + 0.01}


ENVELOPE = [{"dataset": "d", "n_max": 8, "mean_tokens": 1000.0, "accuracy": 0.5},
            {"dataset": "d", "n_max": 8, "mean_tokens": 2000.0, "accuracy": 0.7},
            {"dataset": "d", "n_max": 8, "mean_tokens": 4000.0, "accuracy": 0.8}]


def test_equal_accuracy_tokens_interpolates_the_envelope_and_says_when_none_reaches():
    assert equal_accuracy_tokens(ENVELOPE, 0.6) == pytest.approx(1500.0)  # halfway from 0.5 to 0.7
    assert equal_accuracy_tokens(ENVELOPE, 0.75) == pytest.approx(3000.0)
    assert equal_accuracy_tokens(ENVELOPE, 0.8) == pytest.approx(4000.0)  # the best fixed method itself
    assert equal_accuracy_tokens(ENVELOPE, 0.3) == pytest.approx(1000.0)  # nothing fixed is cheaper than N = 1
    assert equal_accuracy_tokens(ENVELOPE, 0.81) is None
    assert equal_accuracy_tokens([], 0.5) is None


def test_best_rules_picks_the_largest_gain_per_budget_and_its_share():
    rows = [_row("bon", -0.02, 0.78, 8000.0), _row("agree", 0.03, 0.75, 1200.0), _row("firstpass", 0.01, 0.6, 900.0),
            _row("bon", -0.01, 0.8, 16000.0, n_max=16), _row("learned", 0.05, 0.9, 3000.0, n_max=16),
            _row("broken", float("nan"), 0.99, 10.0, n_max=16)]
    envelope = ENVELOPE + [{**e, "n_max": 16} for e in ENVELOPE]
    best = best_rules(rows, envelope)
    assert [(b["n_max"], b["policy"]) for b in best] == [(8, "agree"), (16, "learned")]
    assert best[0]["equal_accuracy_fixed_tokens"] == pytest.approx(3000.0)
    assert best[0]["token_share_of_equal_accuracy_fixed"] == pytest.approx(1200.0 / 3000.0)
    assert best[1]["equal_accuracy_fixed_tokens"] is None and best[1]["token_share_of_equal_accuracy_fixed"] is None
    text = summary_table(best)
    lines = text.splitlines()
    assert lines[2].startswith("| 8 | agree | 75.0 [73.0, 77.0] | +3.0 [+2.0, +4.0] | 1,200 | 40% of 3,000 |")
    assert lines[3].endswith("| no fixed method reaches it |")


def test_summary_of_a_tiny_pool_comes_from_its_replay():
    batch = build_batch(_pool(24, 8), orders=2, seed=0)
    policies = [build_policy(name, n) for n in (4, 8) for name in ("bon", "firstpass", "agree", "esc")]
    result = replay_policies(batch, policies, dataset="tiny", seed=0)
    best = replay_summary([result])
    assert [b["n_max"] for b in best] == [4, 8]
    for b in best:
        stats = [s for s in result.stats if s.n_max == b["n_max"]]
        top = max(stats, key=lambda s: (s.gain_vs_envelope, -s.mean_tokens))
        assert (b["policy"], b["accuracy"], b["mean_tokens"]) == (top.policy, top.accuracy, top.mean_tokens)
        # the least tokens at which the library's own envelope reaches the rule's accuracy, by bisection
        env = result.baseline.envelope(b["n_max"])
        vx, vy = env.tokens[env.hull][None, :], env.accuracy[env.hull][None, :]
        reach = lambda t: envelope_value(vx, vy, np.array([vx.shape[1]]), np.array([[t]]))[0, 0]  # noqa: E731
        if top.accuracy > vy.max():
            assert b["equal_accuracy_fixed_tokens"] is None
            continue
        lo, hi = float(vx[0, 0]), float(vx[0, -1])
        if reach(lo) >= top.accuracy:
            hi = lo
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reach(mid) >= top.accuracy - 1e-12 else (mid, hi)
        assert b["equal_accuracy_fixed_tokens"] == pytest.approx(hi, rel=1e-6)
        assert b["token_share_of_equal_accuracy_fixed"] == pytest.approx(top.mean_tokens / hi, rel=1e-6)
    # the same replay with a rule more accurate than every fixed method: none reaches it
    rows = [{"dataset": "tiny", **s.as_dict()} for s in result.stats]
    envelope = [{"dataset": "tiny", **e} for e in result.envelope_rows()]
    ceiling = max(e["accuracy"] for e in envelope if e["n_max"] == 8)
    rows.append({**rows[-1], "policy": "oracle", "accuracy": ceiling + 0.01, "gain_vs_envelope": 1.0})
    oracle = best_rules(rows, envelope)[-1]
    assert oracle["policy"] == "oracle" and oracle["equal_accuracy_fixed_tokens"] is None


def test_featured_rows_keep_the_named_policies_and_the_best_others():
    rows = [_row("bon", -0.02, 0.8, 1.0), _row("learned", -0.05, 0.8, 1.0), _row("a", 0.01, 0.8, 1.0),
            _row("b", 0.03, 0.8, 1.0), _row("c", float("nan"), 0.8, 1.0), _row("d", 0.02, 0.8, 1.0)]
    assert [r["policy"] for r in featured_rows(rows, ["learned"])] == ["learned", "b", "d", "a"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo command on a small pool, its terminal a 100-column rich console: (out folder, text printed)."""
    import optscale.cli.offline as offline

    out = tmp_path_factory.mktemp("demo") / "report"
    terminal = Console(width=100, file=io.StringIO(), record=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offline, "console", terminal)
        offline.demo(out=out, problems=60, samples=16, orders=2, seed=0)
    return out, terminal.export_text()


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_fits_learned_on_the_calibration_half_and_replays_it(demo_run):
    out, _ = demo_run
    results = _csv(out / "results.csv")
    assert {(r["policy"], r["n_max"]) for r in results if r["policy"] == "learned"} == {("learned", "8"),
                                                                                      ("learned", "16")}
    written = set(json.loads((out / ".optscale-written").read_text()))
    for n in (8, 16):
        table = json.loads((out / f"learned-table-N{n}.json").read_text())
        assert table["settings"]["n_max"] == n and f"learned-table-N{n}.json" in written
        assert table["calibration"]["problems"] == 30 and table["calibration"]["pool"] == "pool.jsonl"  # one half
    assert "skipped learned" not in (out / "README.md").read_text()
    assert "learned" in (out / "README.md").read_text()
    for name in ("frontier.png", "frontier-all.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in written


def test_demo_table_md_starts_with_the_summary_of_its_results(demo_run):
    out, _ = demo_run
    results = _csv(out / "results.csv")
    numeric = ("accuracy", "ci_low", "ci_high", "mean_tokens", "gain_vs_envelope", "gain_vs_envelope_ci_low",
               "gain_vs_envelope_ci_high")
    rows = [{**r, "n_max": int(r["n_max"]), **{k: float(r[k]) if r[k] else math.nan for k in numeric}} for r in results]
    envelope = [{**e, "n_max": int(e["n_max"]), "accuracy": float(e["accuracy"]),
                 "mean_tokens": float(e["mean_tokens"])} for e in _csv(out / "envelope.csv")]
    text = (out / "table.md").read_text()
    assert text.startswith("## The rule with the largest gain over the envelope at each N_max\n\n")
    assert text.index(summary_table(best_rules(rows, envelope))) < text.index("## Accuracy (%)")


def test_demo_terminal_fits_100_columns_summary_first(demo_run):
    out, text = demo_run
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0].startswith("The rule with the largest gain over the envelope")
    # every policy's row on one line, whole: nothing wrapped or cut
    for r in _csv(out / "results.csv"):
        name = f"{r['policy']}@{r['n_max']}"
        row = [line for line in lines if line.startswith(f"│ {name} ")]
        gain = (f"{100 * float(r['gain_vs_envelope']):+.1f} [{100 * float(r['gain_vs_envelope_ci_low']):+.1f}, "
                f"{100 * float(r['gain_vs_envelope_ci_high']):+.1f}]")
        assert len(row) == 1 and f"{float(r['mean_tokens']):,.0f}" in row[0] and gain in row[0], (name, row)


def test_demo_refuses_a_users_table_file_before_any_work(tmp_path, monkeypatch, capsys):
    import optscale.simulate

    monkeypatch.setattr(optscale.simulate, "simulate_pool", lambda *a, **k: pytest.fail("simulated anyway"))
    (tmp_path / "learned-table-N16.json").write_text("mine\n")
    code, _, err = run_cli(["demo", "--out", tmp_path, "--samples", 16], monkeypatch, capsys)
    assert code == 2 and "learned-table-N16.json exists and was not written by optscale" in err, err
    assert (tmp_path / "learned-table-N16.json").read_text() == "mine\n"
