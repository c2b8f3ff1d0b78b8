"""Writing never destroys what optscale did not create: devices, FIFOs, links, a user's files in ``--out``;
reading a damaged gzip fails with a located error."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import run_cli, toy_pool
from optscale.errors import InputError
from optscale.io import MANIFEST, ensure_out_dir, iter_objects, read_text, staged_dir, write_jsonl, write_text
from optscale.pools import PoolProblem, write_pool


def _device(tmp_path: Path, name: str) -> Path:
    """A twin of ``/dev/NAME`` made in ``tmp_path`` (as root), else the real one where this process cannot
    replace it: the tests never put a real device at risk, even when run against the old, replacing code."""
    real = Path("/dev") / name
    if not real.exists() or not stat.S_ISCHR(real.stat().st_mode):
        pytest.skip(f"no {real}")
    twin = tmp_path / name
    try:
        os.mknod(twin, stat.S_IFCHR | 0o666, real.stat().st_rdev)
        with open(twin, "rb"):  # a nodev mount refuses to open it
            return twin
    except OSError:
        twin.unlink(missing_ok=True)
    if os.access(real.parent, os.W_OK):
        pytest.skip(f"cannot make a twin of {real} and would risk the real one")
    return real


def _is_char_device(path: Path) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


def test_dev_null_is_written_into_not_replaced(tmp_path):
    null = _device(tmp_path, "null")
    assert write_jsonl(null, [{"a": 1}]) == 1
    write_text(null, "text\n")
    assert _is_char_device(null)


def test_dev_full_fails_with_a_located_error_and_stays_a_device(tmp_path):
    full = _device(tmp_path, "full")
    with pytest.raises(InputError, match="cannot write: No space left on device") as info:
        write_text(full, "x" * 100_000)
    assert info.value.where == str(full)
    assert _is_char_device(full)


def test_a_fifo_gets_the_data_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    for target in (fifo, link):
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that the writer's open does not wait
        try:
            write_jsonl(target, [{"id": "a"}, {"id": "b"}])
            assert os.read(reader, 1 << 16) == b'{"id": "a"}\n{"id": "b"}\n'
        finally:
            os.close(reader)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode) and link.is_symlink()


def test_a_link_to_a_regular_file_is_followed_and_kept(tmp_path):
    real = tmp_path / "pools" / "v3.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    write_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n" and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["v3.jsonl"]  # no temporary file left


# -- output folders ------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _stage(out: Path, names=("a.txt", "results.csv"), text="report\n") -> None:
    with staged_dir(out, "out") as stage:
        for name in names:
            (stage / name).write_text(text)


def test_staged_dir_refuses_a_file_it_did_not_write_and_moves_nothing(tmp_path):
    out = tmp_path / "trap"
    out.mkdir()
    (out / "results.csv").write_text("the user's own\n")
    before = _snapshot(out)
    with pytest.raises(InputError, match=r"results.csv exists and was not written by optscale.*"
                                         r"remove it or choose another folder") as info:
        _stage(out)
    assert info.value.where == "out" and MANIFEST in str(info.value)  # says how to proceed
    assert _snapshot(out) == before  # a.txt, checked and fine, was not moved in either


def test_rerunning_into_the_same_folder_replaces_its_own_files(tmp_path):
    out = tmp_path / "r"
    _stage(out, text="first\n")
    _stage(out, text="second\n")
    _stage(out, names=("a.txt", "more.md"), text="third\n")
    assert (out / "results.csv").read_text() == "second\n" and (out / "a.txt").read_text() == "third\n"
    assert json.loads((out / MANIFEST).read_text()) == ["a.txt", "more.md", "results.csv"]


def test_a_damaged_record_of_written_files_is_named(tmp_path):
    out = tmp_path / "r"
    _stage(out)
    (out / MANIFEST).write_text('{"not": "a list"}')
    with pytest.raises(InputError, match="not a list of file names") as info:
        _stage(out)
    assert info.value.where == str(out / MANIFEST)


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(args, monkeypatch, capsys)


def _pool(path: Path) -> Path:
    """A small pool at ``path``, whatever its suffix."""
    problems = [{"id": p.id, "question": p.question, "answer": p.answer,
                 "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                             for s in p.samples]} for p in toy_pool(problems=10, samples=8)]
    write_pool(path, [PoolProblem.model_validate(p) for p in problems])
    return path


def test_replay_does_not_overwrite_its_input_in_the_out_folder(tmp_path, cli):
    trap = tmp_path / "trap"
    trap.mkdir()
    pool = _pool(trap / "results.csv")
    before = _snapshot(trap)
    code, _, err = cli("replay", pool, "-n", 4, "-r", 1, "--out", trap)
    assert code == 2 and "results.csv exists and was not written by optscale" in err, err
    assert _snapshot(trap) == before
    code, _, err = cli("replay", _pool(tmp_path / "pool.jsonl"), "-n", 4, "-r", 1, "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = cli("replay", tmp_path / "pool.jsonl", "-n", 4, "-r", 1, "--out", tmp_path / "r")
    assert code == 0, err  # its own report, replaced


def test_demo_refuses_a_users_files_before_any_work(tmp_path, cli, monkeypatch):
    import optscale.simulate

    monkeypatch.setattr(optscale.simulate, "simulate_pool", lambda *a, **k: pytest.fail("simulated anyway"))
    for name in ("README.md", "pool.jsonl"):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_text("mine\n")
        code, _, err = cli("demo", "--out", out)
        assert code == 2 and f"{name} exists and was not written by optscale" in err, err
        assert _snapshot(out) == {name: b"mine\n"}


def test_an_empty_out_is_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: ensure_out_dir("", "out"), lambda: _stage("")):
        with pytest.raises(InputError, match="an empty path") as info:
            call()
        assert info.value.where == "out"
    assert list(tmp_path.iterdir()) == []


# -- reading -------------------------------------------------------------------------------------


def test_a_corrupt_gzip_is_a_located_error(tmp_path):
    path = tmp_path / "pool.jsonl.gz"
    lines = "".join(json.dumps({"id": f"p{i}", "text": f"row {i} " * (i % 17)}) + "\n" for i in range(400))
    data = bytearray(gzip.compress(lines.encode(), compresslevel=9))
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot read") as info:
        list(iter_objects(path))
    assert info.value.where.startswith(f"{path}:")
    with pytest.raises(InputError, match="cannot read") as info:
        read_text(path)
    assert info.value.where == str(path)


def test_replace_adopts_files_optscale_did_not_write(tmp_path):
    """``predictor train --force`` and a run's own report folder may replace what is there (a folder
    written before the record existed); without ``replace`` the same write is refused."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old\n")
    with pytest.raises(InputError, match="was not written by optscale"):
        with staged_dir(out, "out") as stage:
            (stage / "config.json").write_text("new\n")
    assert (out / "config.json").read_text() == "old\n"
    with staged_dir(out, "out", replace=True) as stage:
        (stage / "config.json").write_text("new\n")
    assert (out / "config.json").read_text() == "new\n" and "config.json" in json.loads((out / MANIFEST).read_text())
