"""The run folder: configuration, an append-only sample log and the finished problems.

``samples.jsonl`` gets one line per event of a problem, each flushed and fsynced before the
policy acts on it: ``sample`` (a scored response the policy saw), ``cancelled`` (a request
stopped because the policy no longer needed it, with the tokens it had cost) and ``failed``
(a request that failed after every retry, with the tokens its attempts had cost). Every line
carries ``id = "<problem>#<index>"``, unique within the run. ``problems.jsonl`` gets one line
per finished problem.

That makes a run resumable after ``kill -9`` at any moment: a torn last line is dropped, every
problem's episode is rebuilt by replaying its stored samples in arrival order, and new
requests take indices after the largest stored one, so no sample is lost (once written), run
twice, or counted twice. Only the tokens of requests in flight at the moment of the kill are
unknown, because the server never reported them.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["RunStore", "RunState", "ProblemLog", "MemoryStore"]

CONFIG = "config.json"
SAMPLES = "samples.jsonl"
PROBLEMS = "problems.jsonl"
POOL = "pool.jsonl"


@dataclass
class ProblemLog:
    """What a problem's earlier sessions left: samples in arrival order and other events."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    next_index: int = 0

    def add(self, record: dict[str, Any]) -> None:
        (self.samples if record["type"] == "sample" else self.events).append(record)
        self.next_index = max(self.next_index, int(record["index"]) + 1)


@dataclass
class RunState:
    """Everything a run folder holds about its problems."""

    logs: dict[str, ProblemLog] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)

    def log(self, problem_id: str) -> ProblemLog:
        return self.logs.setdefault(problem_id, ProblemLog())


class MemoryStore:
    """A run kept in memory only: what :func:`~optscale.live.sampler.sample_problems` uses without a folder."""

    def __init__(self) -> None:
        self.state = RunState()

    def load(self) -> RunState:
        return self.state

    async def append(self, record: dict[str, Any]) -> None:
        self.state.log(record["problem"]).add(record)

    async def finish(self, summary: dict[str, Any]) -> None:
        self.state.finished[summary["id"]] = summary


def _read_lines(path: Path, repair: bool) -> list[dict[str, Any]]:
    """Complete JSON lines of a log; a torn final line (a kill mid-write) is cut off when ``repair``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"corrupt line ({exc.msg}); the run folder was edited by hand?", f"{path}:{number}") \
                from None
        if not isinstance(record, dict) or "id" not in record:
            raise InputError("corrupt line (not a record with an id)", f"{path}:{number}")
        records.append(record)
    return records


class _DurableLog:
    """An append-only JSON Lines file whose appends return once they are on disk.

    Each line goes out in one ``write`` on an ``O_APPEND`` descriptor; the ``fsync`` runs in
    a worker thread so the event loop keeps streaming, and is shared (group commit): appends
    that arrive while one ``fsync`` runs wait for the next, which covers all of them. A
    cancelled waiter does not cancel the ``fsync`` others wait on.
    """

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._running: asyncio.Future | None = None
        self._next: asyncio.Future | None = None

    async def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]
        waiter = self._next
        if waiter is None:
            waiter = self._next = asyncio.get_running_loop().create_future()
            if self._running is None:
                self._sync()
        await asyncio.shield(waiter)

    def _sync(self) -> None:
        waiters, self._next = self._next, None
        self._running = asyncio.ensure_future(asyncio.to_thread(os.fsync, self.fd))

        def done(task: asyncio.Future) -> None:
            self._running = None
            if task.cancelled():
                waiters.cancel()
            elif task.exception() is not None:
                waiters.set_exception(task.exception())
            else:
                waiters.set_result(None)
            if self._next is not None:
                self._sync()

        self._running.add_done_callback(done)

    async def settle(self) -> None:
        """Wait for every ``fsync`` under way, including those of cancelled waiters."""
        while self._running is not None:
            await asyncio.wait([self._running])

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


class RunStore:
    """A run folder on disk; one writer at a time (a lock file refuses a second live run)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._samples: _DurableLog | None = None
        self._problems: _DurableLog | None = None
        self._lock: Path | None = None

    # -- configuration -------------------------------------------------------------------
    def compatible(self, identity: dict[str, Any]) -> bool:
        """Whether the folder can take this run (read only); True when it already holds it.

        ``identity`` is what makes samples comparable (dataset, model, prompt, scorer,
        policy); an existing folder with a different identity, or with logs but no
        configuration, is refused.
        """
        if self.path.exists() and not self.path.is_dir():
            raise InputError("exists and is not a folder", str(self.path))
        config_path = self.path / CONFIG
        if not config_path.exists():
            if (self.path / SAMPLES).exists() or (self.path / PROBLEMS).exists():
                raise InputError("holds run logs but no config.json; use another --out", str(self.path))
            return False
        try:
            stored = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise InputError("corrupt config.json", str(config_path)) from None
        old = stored.get("identity", {})
        new = json.loads(json.dumps(identity))
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} stored, {new.get(k)!r} now" for k in diff[:4])
            raise InputError(f"holds a different run ({shown}); use another --out to start a new run",
                             str(self.path))
        return True

    def prepare(self, identity: dict[str, Any], runtime: dict[str, Any]) -> bool:
        """Create the folder (or check it holds this run) and record the configuration; True when resuming.

        ``runtime`` (URLs, concurrency, timeouts) may change between sessions and is rewritten.
        """
        resuming = self.compatible(identity)
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_json(self.path / CONFIG, {"identity": identity, "runtime": runtime})
        return resuming

    def _write_json(self, path: Path, data: Any) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    # -- logs ----------------------------------------------------------------------------
    def load(self) -> RunState:
        """Read both logs (repairing a torn tail) and check their consistency."""
        state = RunState()
        seen: set[str] = set()
        for record in _read_lines(self.path / SAMPLES, repair=True):
            if record["id"] in seen:
                raise InputError(f"sample {record['id']!r} appears twice", str(self.path / SAMPLES))
            seen.add(record["id"])
            state.log(str(record["problem"])).add(record)
        for record in _read_lines(self.path / PROBLEMS, repair=True):
            state.finished[str(record["id"])] = record
        return state

    def finished_ids(self) -> set[str]:
        """Ids in ``problems.jsonl`` (read only; a torn tail is ignored, not repaired)."""
        return {str(r["id"]) for r in _read_lines(self.path / PROBLEMS, repair=False)}

    def open(self) -> None:
        lock = self.path / ".lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = lock.read_text().strip()
            if pid.isdigit() and _alive(int(pid)):
                raise InputError(f"another optscale process (pid {pid}) is writing this run folder",
                                 str(self.path)) from None
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        self._lock = lock
        self._samples = _DurableLog(self.path / SAMPLES)
        self._problems = _DurableLog(self.path / PROBLEMS)

    async def aclose(self) -> None:
        """:meth:`close` from inside the event loop, once no ``fsync`` is still under way."""
        for log in (self._samples, self._problems):
            if log is not None:
                await log.settle()
        self.close()

    def close(self) -> None:
        for log in (self._samples, self._problems):
            if log is not None:
                log.close()
        self._samples = self._problems = None
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    async def append(self, record: dict[str, Any]) -> None:
        """Durably log one event; returns once it is on disk, before anyone acts on it."""
        await self._samples.append(record)

    async def finish(self, summary: dict[str, Any]) -> None:
        await self._problems.append(summary)

    def write_pool(self, problems, results) -> Path | None:
        """``pool.jsonl``: every graded problem's samples in the pool format of offline replay.

        Samples are graded here, once, rather than while streaming (grading is slow enough to
        hold up the event loop). Problems without a gold answer or samples are left out.
        """
        from ..answers import grade
        from ..pools import PoolProblem, PoolSample, write_pool

        lines = []
        for problem, result in zip(problems, results):
            if problem.answer is None or not result.samples:
                continue
            extra = {k: v for k, v in problem.extra.items() if isinstance(v, (int, float, bool))
                     or (isinstance(v, str) and len(v) <= 64)}
            samples = [PoolSample(answer=s["answer"], score=float(s["score"]), tokens=int(s["tokens"]),
                                  correct=grade(problem.answer, s["answer"]), text=s["text"],
                                  step_scores=s["step_scores"])
                       for s in result.samples]
            lines.append(PoolProblem(id=problem.id, question=problem.question, answer=problem.answer,
                                     samples=samples, **extra))
        if not lines:
            return None
        write_pool(self.path / POOL, lines)
        return self.path / POOL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()
