"""The calibration loop of issue 16 end to end, against the real llama.cpp server on SmolLM2-135M.

``optscale serve --shadow-share 1 --traffic-dir D`` answers a few requests and samples each on to
n_max in the background; ``optscale policy fit D --labels consensus`` fits a stopping table on that
traffic (no gold anywhere); ``POST /v1/optscale/tables/reload`` puts it in service without a
restart; requests served with it are sampled on in the shadow too, and ``GET /v1/optscale/savings``
reports the table's agreement with full sampling and its token share. The recipe of docs/serve.md
("Calibrate on your own traffic"), with the CLI run in-process and the proxy on a free port.
"""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import need_module, run_cli

need_module("llama_cpp", "llama-cpp-python (the local extra) is not installed")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_fakes import Proxy, wait_for  # noqa: E402

from optscale.live.local import MODEL_ALIAS, LocalServer  # noqa: E402

pytestmark = pytest.mark.slow

N_MAX = 3
KEY = "sk-calibration-loop"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTIONS = [f"What is {a} + {b}? Put the final answer in \\boxed{{}}." for a, b in
             ((2, 3), (4, 1), (3, 3), (5, 2), (1, 1), (6, 2))]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalServer(log=log, ready_timeout=180) as server:
        yield server


def metric(proxy, name: str, **labels) -> float:
    total = 0.0
    for family in text_string_to_metric_families(proxy.service.metrics.render().decode()):
        total += sum(s.value for s in family.samples
                     if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    return total


def ask(proxy, question: str, **optscale) -> dict:
    r = httpx.post(proxy.url("/v1/chat/completions"), headers=AUTH, timeout=180, json={
        "model": MODEL_ALIAS, "messages": [{"role": "user", "content": question}],
        "optscale": {"n_max": N_MAX, **optscale}})
    assert r.status_code == 200, r.text
    return r.json()


def test_serve_shadow_fit_on_consensus_reload_and_watch_the_savings(llama, tmp_path, monkeypatch, capsys):
    traffic, tables, keys = tmp_path / "traffic", tmp_path / "tables", tmp_path / "keys"
    tables.mkdir()
    keys.write_text(KEY + "\n")
    with Proxy(llama.base_url, model=MODEL_ALIAS, scorer="confidence", n_max=N_MAX, max_tokens=24, temperature=0.8,
               in_flight=2, ready_timeout=120, client={"timeout": 120, "idle_timeout": 60, "retries": 1},
               shadow_share=1.0, traffic_dir=str(traffic), tables_dir=str(tables), api_keys_file=str(keys)) as px:
        # 1. traffic: each client answer uses one sample; the shadow samples every episode on to n_max
        for question in QUESTIONS:
            ask(px, question, policy="firstpass", t=0.0)
        wait_for(lambda: metric(px, "optscale_traffic_records_total") == len(QUESTIONS), 600,
                 "every shadow episode written to the traffic folder")

        # 2. fit a table on the traffic folder, labelled by consensus (the folder has no gold answers)
        code, out, err = run_cli(["policy", "fit", str(traffic), "--labels", "consensus", "--n-max", str(N_MAX),
                                  "--budget", "0.8", "--select", "best", "--out", str(tables / "mine.json")],
                                 monkeypatch, capsys)
        assert code == 0, err
        table = json.loads((tables / "mine.json").read_text())
        assert table["settings"]["n_max"] == N_MAX and table["fitted"]["labels"] == "consensus"
        assert table["calibration"]["problems"] == len(QUESTIONS)

        # 3. reload: the new table is served without a restart
        r = httpx.post(px.url("/v1/optscale/tables/reload"), headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert {t["name"]: t["status"] for t in r.json()["tables"]} == {"mine.json": "loaded"}
        before = metric(px, "optscale_shadow_episodes_total", policy="learned", table="mine.json")
        for question in QUESTIONS[:2]:
            o = ask(px, question, policy="learned", table="mine.json")["optscale"]
            assert o["policy"] == "learned" and 1 <= o["n_used"] <= N_MAX
        wait_for(lambda: metric(px, "optscale_shadow_episodes_total", policy="learned", table="mine.json")
                 == before + 2, 600, "the table's episodes sampled on in the shadow")

        # 4. watch the savings of the table: agreement with full sampling and the token share
        r = httpx.get(px.url("/v1/optscale/savings"), headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "optscale.savings" and body["shadow_share"] == 1.0
        rows = body["data"]
        [row] = [row for row in rows if row["policy"] == "learned" and row["table"] == "mine.json"]
        assert row["episodes"] == 2 and 0 <= row["agreed"] <= 2
        assert row["agreement_rate"] == row["agreed"] / 2
        low, high = row["agreement_ci95"]
        assert 0 <= low <= row["agreement_rate"] <= high <= 1
        assert 0 < row["early_tokens"] <= row["full_tokens"] and row["token_share"] == pytest.approx(
            row["early_tokens"] / row["full_tokens"])
