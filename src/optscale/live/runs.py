"""The run store: a run folder's layout, its append-only sample log and the finished problems.

``samples.jsonl`` gets one line per event of a problem, each flushed and fsynced before the
policy acts on it: ``sample`` (a scored response the policy saw), ``cancelled`` (a request
stopped because the policy no longer needed it, with the tokens it had cost) and ``failed``
(a request that failed after every retry, with the tokens its attempts had cost). Every line
carries ``id = "<problem>#<index>"``, unique within the run. ``problems.jsonl`` gets one line
per finished problem; ``config.json`` holds the run's identity and this session's settings.
:class:`RunFolder` names these files and what readers (the run report) may rely on.

That makes a run resumable after ``kill -9`` at any moment: a torn last line is dropped, every
problem's episode is rebuilt by replaying its stored samples in arrival order, and new
requests take indices after the largest stored one, so no sample is lost (once written), run
twice, or counted twice. Only the tokens of requests in flight at the moment of the kill are
unknown, because the server never reported them.

Memory stays bounded by the number of samples, not their text: loading keeps every record but
its ``text``, and the pool is written by streaming the texts back from the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import InputError
from ..io import MAX_LINE_BYTES, parse_json, read_json, write_json

__all__ = ["RunFolder", "RunStore", "check_storable", "RunState", "ProblemLog", "MemoryStore", "RECORD_KINDS", "MAX_RECORD_TOKENS"]

log = logging.getLogger(__name__)

#: The kinds of ``samples.jsonl`` lines.
RECORD_KINDS = ("sample", "cancelled", "failed")
#: More tokens than any one request can cost: a logged count above it is a bad usage report.
MAX_RECORD_TOKENS = 10**8
_TOKEN_FIELDS = ("tokens", "wasted_tokens", "prompt_tokens")


class RunFolder:
    """The layout of a run folder: file names and the stored fields other readers rely on.

    ``config.json`` is ``{"identity": {...}, "runtime": {...}}``; the identity holds what
    makes samples comparable, among it ``policy`` and ``n_max`` (the sample budget per
    problem). ``problems.jsonl`` lines hold at least ``id``, ``correct``, ``n_samples``,
    ``tokens``, ``prompt_tokens`` (None when the server reported none), ``tokens_unknown``
    (responses whose token count nobody reported; absent in older folders) and ``stop_reason``.
    A folder without ``config.json`` is a run folder only while it is empty.
    """

    CONFIG = "config.json"
    SAMPLES = "samples.jsonl"
    PROBLEMS = "problems.jsonl"
    POOL = "pool.jsonl"
    REPORT = "report"
    LOCK = ".lock"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def problems(self) -> Path:
        return self.path / self.PROBLEMS

    @property
    def pool(self) -> Path:
        return self.path / self.POOL

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    def stored_config(self) -> dict[str, Any] | None:
        """``config.json`` as stored, or None when the folder has none."""
        if not _existing_file(self.config):
            return None
        data = read_json(self.config)
        if not isinstance(data, dict) or not isinstance(data.get("identity"), dict):
            raise InputError("corrupt config.json (no identity)", str(self.config))
        return data

    def n_max(self) -> int | None:
        """The run's sample budget per problem, as its identity stores it."""
        stored = self.stored_config()
        value = stored["identity"].get("n_max") if stored else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

    def finished(self) -> Iterator[dict[str, Any]]:
        """The ``problems.jsonl`` lines (read only; a torn last line is skipped)."""
        for _, record in _records(self.problems, require=("id",)):
            yield record


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


def _existing_file(path: Path) -> bool:
    """Whether a file of the run folder exists; one that is not a regular file is refused, naming it.

    A folder or a FIFO in a log's place would otherwise fail later with a bare OSError, or
    block a read for ever.
    """
    if not os.path.lexists(path):
        return False
    if not path.is_file():
        raise InputError("is not a regular file; the run folder was edited by hand?", str(path))
    return True


def _cut_torn_tail(path: Path) -> None:
    """Drop a final line without its newline (a kill mid-write), reading only the file's end."""
    if not _existing_file(path):
        return
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        return
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            handle.seek(pos - step)
            newline = handle.read(step).rfind(b"\n")
            if newline >= 0:
                end = pos - step + newline + 1
                break
            pos -= step
        else:
            end = 0
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())


def _records(path: Path, require: tuple[str, ...] = ("id",)) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(byte offset, record)`` of each complete line of a log, one at a time; a torn last line is skipped.

    The store reads its own logs in binary so that the pool can seek back to a sample's line;
    every error names ``file:line``.
    """
    if not _existing_file(path):
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    with handle:
        offset = 0
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            where = f"{path}:{number}"
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"line longer than {MAX_LINE_BYTES} bytes", where)
                return  # torn by a kill mid-write
            if not raw.strip():
                continue
            yield start, _parse(raw, where, require)


def _parse(raw: bytes, where: str, require: tuple[str, ...]) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text; the run folder was edited by hand?", where) from None
    record = parse_json(text, where)
    if not isinstance(record, dict) or any(k not in record for k in require):
        raise InputError(f"corrupt line (not a record with {', '.join(require)})", where)
    return record


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RECORD_TOKENS


def checked_record(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``samples.jsonl`` record whose shape is checked and whose token counts are usable.

    A negative, fractional or absurd count (an older version stored a bad server's usage
    report) is not trusted: ``tokens`` and ``wasted_tokens`` fall back to 0 and
    ``prompt_tokens`` to unknown (None), and ``usage_invalid`` says what was logged, as it
    does for a usage report refused while streaming. A run never stops over it.
    """
    kind, index = record.get("type"), record.get("index")
    if kind not in RECORD_KINDS or not isinstance(record.get("problem"), str) \
            or not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InputError("corrupt line (needs type, problem and index); the run folder was edited by hand?", where)
    if kind == "sample" and (not isinstance(record.get("score"), (int, float)) or isinstance(record["score"], bool)
                             or not 0.0 <= record["score"] <= 1.0):
        raise InputError(f"corrupt sample (score {record.get('score')!r} is not in [0, 1])", where)
    bad = {k: record.get(k) for k in _TOKEN_FIELDS
           if (k == "tokens" or record.get(k) is not None) and not _count(record.get(k))}
    if not bad:
        return record
    shown = ", ".join(f"{k}={str(v)[:40]}" for k, v in bad.items())
    log.warning("%s: logged token counts %s are not counts in [0, %d]; not used", where, shown, MAX_RECORD_TOKENS)
    return record | {k: None if k == "prompt_tokens" else 0 for k in bad} | {
        "usage_invalid": f"logged {shown}: not a token count"}


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


def _unchanged(text: str) -> str:
    return text


class RunStore(RunFolder):
    """A run folder on disk; one writer at a time (a lock file refuses a second live run).

    ``redact`` masks known secrets (API keys, URL credentials) in the values that may echo
    them, the :data:`FREE_TEXT` fields (a server's error message), before a record is
    written; nothing else is touched, so a short key never alters field names or data.
    What else the store writes holds no secret by construction (URLs are stored redacted).
    """

    #: Record fields holding text a server wrote, which may echo a key it was sent.
    FREE_TEXT = ("error",)

    def __init__(self, path: str | os.PathLike[str], redact: Callable[[str], str] = _unchanged):
        super().__init__(path)
        self.redact = redact
        self._samples: _DurableLog | None = None
        self._problems: _DurableLog | None = None
        self._lock: Path | None = None

    # -- configuration -------------------------------------------------------------------
    def compatible(self, identity: dict[str, Any],
                   normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> bool:
        """Whether the folder can take this run (read only); True when it already holds it.

        ``identity`` is what makes samples comparable (dataset, model, prompt, scorer,
        policy); an existing folder with a different identity, or with logs but no
        configuration, is refused. ``normalise`` brings a stored identity (perhaps written
        by an older version) into the form ``identity`` has before they are compared.
        """
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a folder", "out")
        for path in (self.samples, self.problems, self.pool, self.path / self.LOCK):
            _existing_file(path)
        stored = self.stored_config()
        if stored is None:
            if self.samples.exists() or self.problems.exists():
                raise InputError(f"{self.path} holds run logs but no config.json; start the run in another "
                                 "folder", "out")
            if self.path.exists() and any(not _leftover(entry.name) for entry in self.path.iterdir()):
                raise InputError(f"{self.path} is not empty and holds no run (no config.json); give a new or "
                                 "empty folder", "out")
            return False
        old = stored["identity"]
        if normalise is not None:
            old = normalise(old)
        new = json.loads(json.dumps(identity))
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} stored, {new.get(k)!r} now" for k in diff[:4])
            raise InputError(f"{self.path} holds a different run ({shown}); start a new run in another folder",
                             "out")
        return True

    def prepare(self, identity: dict[str, Any], runtime: dict[str, Any],
                normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> bool:
        """Create the folder (or check it holds this run) and record the configuration; True when resuming.

        ``runtime`` (URLs, concurrency, timeouts) may change between sessions and is rewritten.
        """
        resuming = self.compatible(identity, normalise)
        check_storable({"identity": identity, "runtime": runtime})
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config, {"identity": identity, "runtime": runtime})
        return resuming

    # -- logs ----------------------------------------------------------------------------
    def load(self) -> RunState:
        """Read both logs once (repairing a torn tail) and check them; sample texts stay on disk."""
        state = RunState()
        seen: set[str] = set()
        _cut_torn_tail(self.samples)
        for number, (_, record) in enumerate(_records(self.samples), 1):
            record = checked_record(record, f"{self.samples}:{number}")
            if record["id"] in seen:
                raise InputError(f"sample {record['id']!r} appears twice", str(self.samples))
            seen.add(record["id"])
            record.pop("text", None)
            state.log(record["problem"]).add(record)
        _cut_torn_tail(self.problems)
        for record in self.finished():
            state.finished[str(record["id"])] = record
        return state

    def finished_ids(self) -> set[str]:
        """Ids in ``problems.jsonl`` (read only; a torn tail is ignored, not repaired)."""
        return {str(r["id"]) for r in self.finished()}

    def open(self) -> None:
        lock = self.path / self.LOCK
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = lock.read_text().strip()
            if pid.isdigit() and _alive(int(pid)):
                raise InputError(f"another optscale process (pid {pid}) is writing the run folder {self.path}",
                                 "out") from None
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        self._lock = lock
        self._samples = _DurableLog(self.samples)
        self._problems = _DurableLog(self.problems)

    async def aclose(self) -> None:
        """:meth:`close` from inside the event loop, once no ``fsync`` is still under way."""
        for durable in (self._samples, self._problems):
            if durable is not None:
                await durable.settle()
        self.close()

    def close(self) -> None:
        for durable in (self._samples, self._problems):
            if durable is not None:
                durable.close()
        self._samples = self._problems = None
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    async def append(self, record: dict[str, Any]) -> None:
        """Durably log one event; returns once it is on disk, before anyone acts on it."""
        await self._samples.append(self._masked(record))

    async def finish(self, summary: dict[str, Any]) -> None:
        await self._problems.append(self._masked(summary))

    def _masked(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with known secrets masked in its :data:`FREE_TEXT` values (a copy if any changed)."""
        masked = {k: self.redact(v) for k in self.FREE_TEXT if isinstance(v := record.get(k), str)}
        return record | masked if masked else record

    def write_pool(self, problems: Sequence[Any]) -> Path | None:
        """``pool.jsonl``: every graded problem's logged samples in the pool format of offline replay.

        Streams: one pass over the log notes where each problem's samples are, then each
        problem's texts are read back from there while its pool line is written, so memory
        holds one problem's texts at a time. Samples are graded here, once, rather than while
        streaming. Problems without a gold answer or samples are left out.
        """
        from ..answers import grade
        from ..pools import PoolProblem, PoolSample, write_pool

        offsets: dict[str, list[int]] = {}
        for offset, record in _records(self.samples):
            if record.get("type") == "sample":
                offsets.setdefault(str(record.get("problem")), []).append(offset)
        wanted = [p for p in problems if p.answer is not None and offsets.get(p.id)]
        if not wanted:
            return None

        def lines() -> Iterator[PoolProblem]:
            with self.samples.open("rb") as handle:
                for problem in wanted:
                    samples = []
                    for offset in offsets[problem.id]:
                        handle.seek(offset)
                        where = f"{self.samples} (byte {offset})"
                        s = checked_record(_parse(handle.readline(), where, ("id",)), where)
                        try:
                            samples.append(PoolSample(
                                answer=s.get("answer"), score=float(s["score"]), tokens=s["tokens"],
                                correct=grade(problem.answer, s.get("answer"), where=f"problem {problem.id!r}"),
                                text=s.get("text"),
                                step_scores=s.get("step_scores") or None))
                        except ValidationError as exc:
                            raise InputError(f"corrupt sample {s['id']!r}: {exc.errors()[0]['msg']}", where) from None
                    extra = {k: v for k, v in problem.extra.items() if isinstance(v, (int, float, bool))
                             or (isinstance(v, str) and len(v) <= 64)}
                    yield PoolProblem(id=problem.id, question=problem.question, answer=problem.answer,
                                      samples=samples, **extra)

        write_pool(self.pool, lines())
        return self.pool


def _leftover(name: str) -> bool:
    """Files a run store or a writability probe may leave in a folder that holds no run yet."""
    return name == RunFolder.LOCK or name.startswith(".optscale-probe-") or (
        name.startswith(f".{RunFolder.CONFIG}.") and name.endswith(".tmp"))


def check_storable(value: Any, where: str = "") -> None:
    """Refuse a value JSON cannot store (inf, nan), naming its key, before anything is written."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{value} is not a finite number", where.removeprefix("runtime.").removeprefix("identity.")
                         or "config")
    if isinstance(value, dict):
        for key, item in value.items():
            check_storable(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_storable(item, where)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()
