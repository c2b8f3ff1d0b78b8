"""Traffic folders (``optscale serve --traffic-dir``) read as pools: rotated files, crashes, no gold (issue 16)."""

import gzip
import json
import logging

import pytest

from conftest import run_cli
from optscale.errors import InputError
from optscale.pools import iter_pool, pool_files, pool_sha256, read_pool
from optscale.replay import read_pool_arrays


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(args, monkeypatch, capsys)


def episode(eid: str, answers=("1", "1", "2", "1"), scores=None, n_max=None) -> dict:
    """One shadow episode as the serve side writes it (docs: notes/traffic-format.md): no gold, a hash, metadata."""
    scores = scores or [0.5] * len(answers)
    return {
        "id": eid, "answer": None, "messages_sha256": "ab" * 32,
        "samples": [{"answer": a, "score": s, "tokens": 10 + i} for i, (a, s) in enumerate(zip(answers, scores))],
        "optscale": {"policy": "learned", "settings": {}, "table": None, "table_sha256": None,
                     "n_max": n_max or len(answers), "stopped_at": 2, "early_answer": answers[0],
                     "full_answer": answers[0], "select": "majority", "model": "m", "created": 1.0},
    }


def write_traffic(path, episodes, gz=False, tail: str = "") -> None:
    text = "".join(json.dumps(e) + "\n" for e in episodes) + tail
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "traffic"
    d.mkdir()
    write_traffic(d / "traffic-20261208T010000Z-r0-000001.jsonl.gz", [episode("a"), episode("b")], gz=True)
    write_traffic(d / "traffic-20261208T020000Z-r0-000002.jsonl", [episode("c")])
    (d / "notes.txt").write_text("not traffic")
    (d / "other.jsonl").write_text("{not json")
    return d


def test_a_folder_is_every_traffic_file_sorted_by_name(folder):
    assert [f.name for f in pool_files(folder)] == ["traffic-20261208T010000Z-r0-000001.jsonl.gz",
                                                    "traffic-20261208T020000Z-r0-000002.jsonl"]
    problems = read_pool(folder, require_gold=False)
    assert [p.id for p in problems] == ["a", "b", "c"]
    assert all(p.answer is None and s.correct is None for p in problems for s in p.samples)
    arrays = read_pool_arrays(folder, require_gold=False)
    assert arrays.ids == ("a", "b", "c") and arrays.width == 4 and not arrays.correct.any()


def test_gold_labels_refuse_traffic_naming_answer_and_consensus(folder):
    with pytest.raises(InputError, match="--labels consensus") as info:
        read_pool(folder)
    assert info.value.where == f"{folder / 'traffic-20261208T010000Z-r0-000001.jsonl.gz'}:1 field answer"


def test_a_partial_last_line_is_skipped_with_one_warning(folder, caplog):
    last = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(last, [episode("c"), episode("d")], tail=json.dumps(episode("e"))[:57])
    with caplog.at_level(logging.WARNING, logger="optscale.pools.io"):
        problems = read_pool(folder, require_gold=False)
    assert [p.id for p in problems] == ["a", "b", "c", "d"]
    warned = [r.getMessage() for r in caplog.records if "partially written" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{last}:3: ")


def test_a_partial_line_cut_inside_a_character_is_skipped_too(folder, caplog):
    last = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(last, [episode("c")])
    with open(last, "ab") as handle:
        handle.write(json.dumps(episode("é"), ensure_ascii=False).encode()[:10])  # ends inside "é"
    with caplog.at_level(logging.WARNING, logger="optscale.pools.io"):
        assert [p.id for p in read_pool(folder, require_gold=False)] == ["a", "b", "c"]
    assert any(f"{last}:2" in r.getMessage() for r in caplog.records)


def test_a_bad_line_with_a_newline_or_not_last_is_an_error(folder):
    last = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(last, [episode("c")], tail='{"id": "d", \n')  # complete line: not a crash mid-write
    with pytest.raises(InputError, match="malformed JSON") as info:
        read_pool(folder, require_gold=False)
    assert info.value.where == f"{last}:2"
    write_traffic(last, [episode("c")], tail='{"id": "d", \n' + json.dumps(episode("e")))
    with pytest.raises(InputError, match="malformed JSON"):
        read_pool(folder, require_gold=False)


def test_a_complete_last_line_without_newline_is_read(folder):
    last = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(last, [episode("c")], tail=json.dumps(episode("d")))
    assert [p.id for p in read_pool(folder, require_gold=False)][-1] == "d"


def test_a_pool_file_keeps_its_strict_last_line(tmp_path):
    pool = tmp_path / "pool.jsonl"
    write_traffic(pool, [episode("a")], tail='{"id": ')
    with pytest.raises(InputError, match="malformed JSON"):
        read_pool(pool, require_gold=False)


def test_duplicate_ids_across_files_name_both_places(folder):
    gz = folder / "traffic-20261208T010000Z-r0-000001.jsonl.gz"
    last = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(last, [episode("c"), episode("b")])
    with pytest.raises(InputError, match=f"duplicate id 'b' \\(first on {gz}:2\\)") as info:
        read_pool(folder, require_gold=False)
    assert info.value.where == f"{last}:2 field id"


def test_a_file_gzipped_but_not_yet_removed_is_read_once(folder):
    plain = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    write_traffic(folder / (plain.name + ".gz"), [episode("c")], gz=True)  # the server's rotation, half done
    assert [f.name for f in pool_files(folder)][-1] == plain.name + ".gz"
    assert [p.id for p in read_pool(folder, require_gold=False)] == ["a", "b", "c"]


def test_a_file_rotated_while_the_folder_is_read_is_read_from_its_gz(folder):
    plain = folder / "traffic-20261208T020000Z-r0-000002.jsonl"
    problems = iter_pool(folder, require_gold=False)
    assert next(problems).id == "a"  # the listing is taken; now the server gzips the open file
    write_traffic(folder / (plain.name + ".gz"), [episode("c")], gz=True)
    plain.unlink()
    assert [p.id for p in problems] == ["b", "c"]


def test_a_pools_sha256_is_its_files_and_changes_with_the_folder(folder, tmp_path):
    import hashlib

    single = tmp_path / "pool.jsonl"
    write_traffic(single, [episode("a")])
    assert pool_sha256(single) == hashlib.sha256(single.read_bytes()).hexdigest()
    before = pool_sha256(folder)
    assert before == pool_sha256(folder)  # files outside the pattern do not count
    (folder / "other.jsonl").write_text("changed")
    assert pool_sha256(folder) == before
    write_traffic(folder / "traffic-20261208T030000Z-r0-000003.jsonl", [episode("d")])
    assert pool_sha256(folder) != before


def test_a_folder_without_traffic_files_is_named(tmp_path):
    with pytest.raises(InputError, match="traffic-\\*.jsonl") as info:
        read_pool(tmp_path, require_gold=False)
    assert info.value.where == str(tmp_path)


def test_reading_a_folder_streams_one_problem_at_a_time(folder):
    """One pass: the first problem comes out before the second file is opened."""
    (folder / "traffic-20261208T030000Z-r0-000003.jsonl").write_text("{broken\n")
    problems = iter_pool(folder, require_gold=False)
    assert next(problems).id == "a"
    with pytest.raises(InputError, match="malformed JSON"):
        list(problems)


def test_validate_reports_a_traffic_folder(folder, cli):
    code, out, err = cli("validate", folder)
    assert code == 0, err
    assert "0 of 3" in out and "consensus" in out, out


def test_replay_of_traffic_with_gold_labels_is_one_located_error(folder, cli):
    code, out, err = cli("replay", folder, "--policy", "sc", "--n-max", 4)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "jsonl.gz:1 field answer" in lines[0] and "--labels consensus" in lines[0], err


def written(proxy) -> float:
    """``optscale_traffic_records_total`` of a running proxy."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(proxy.service.metrics.render().decode())
               for s in f.samples if s.name == "optscale_traffic_records_total")


def test_the_servers_traffic_folder_reads_and_its_consensus_is_the_servers_full_answer(tmp_path):
    """Real traffic from ``optscale serve --shadow-share 1 --traffic-dir`` (fake upstream): the reader takes the
    folder, and the full answer of consensus labels is the one the server recorded (``optscale.full_answer``)."""
    import live_fakes as fakes
    from serve_fakes import Proxy, wait_for

    import httpx
    from optscale.answers import normalize_answer
    from optscale.replay import consensus_labels, full_answers

    traffic = tmp_path / "traffic"
    with fakes.FakeServer(fakes.FakeConfig(seed=3)) as up, Proxy(up.base_url, shadow_share=1.0,
                                                                  traffic_dir=str(traffic)) as px:
        for i in range(6):
            body = {"model": "fake-model", "messages": [{"role": "user", "content": f"Problem p{i}: how many?"}],
                    "optscale": {"policy": "firstpass", "t": 0.0, "n_max": 4, "select": ("best", "majority")[i % 2]}}
            assert httpx.post(px.url("/v1/chat/completions"), json=body, timeout=60).status_code == 200
        wait_for(lambda: written(px) == 6, 30, "six shadow episodes written")
    records = [json.loads(line) for f in sorted(traffic.iterdir())
               for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
    arrays = read_pool_arrays(traffic, grade_missing=False, require_gold=False)
    assert len(records) == 6 and sorted(arrays.ids) == sorted(r["id"] for r in records)
    for rule in ("best", "majority"):
        rows = [i for i, r in enumerate(records) if r["optscale"]["select"] == rule]
        sub = arrays.take([arrays.ids.index(records[i]["id"]) for i in rows])
        full = full_answers(sub.answer, sub.score, sub.available, rule, 4)
        got = [sub.answer_text[k][c] if c >= 0 else None for k, c in enumerate(full)]
        assert got == [normalize_answer(records[i]["optscale"]["full_answer"]) for i in rows]
        labels = consensus_labels(sub, rule, 4)
        for k, i in enumerate(rows):
            assert labels[k, 0] == (records[i]["optscale"]["early_answer"] is not None and normalize_answer(
                records[i]["optscale"]["early_answer"]) == got[k])


def test_pool_arrays_as_one_batch_are_build_batchs_arrays():
    """policy fit reads line by line into arrays and lays them out at once: the same batch as before."""
    import numpy as np

    from conftest import toy_pool
    from optscale.replay import arrays_from_problems, build_batch

    problems = toy_pool(problems=30, samples=12)
    old = build_batch(problems, orders=4, seed=3, source="x")
    new = arrays_from_problems(problems, source="x").batch(4, 3)
    for name in ("score", "answer", "tokens", "correct", "available"):
        assert np.array_equal(getattr(old, name), getattr(new, name), equal_nan=True), name
    assert (old.ids, old.questions, old.answer_text, old.meta) == (new.ids, new.questions, new.answer_text, new.meta)
