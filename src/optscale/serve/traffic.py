"""Shadow episodes on disk: rotating, gzipped JSON Lines in the pool format (``--traffic-dir``).

The open file is ``DIR/traffic-YYYYMMDDTHHMMSSZ-<replica>-<seq>.jsonl``. Each record is one
``os.write`` of a whole line followed by ``fsync``, so a crash loses at most the line being
written (a partial last line, which the readers skip with a warning). A write that fails (a
full disk: ENOSPC) is cut back to the end of the last whole line, so nothing already written
is harmed; the record is dropped and counted, the error logged once until writing works again.
A file is closed once it reaches ``rotate_bytes`` or ``rotate_s`` (at its next record) and at
shutdown, then gzipped: the ``.gz`` is written under a temporary name, synced and renamed, and
only then is the ``.jsonl`` removed (a reader that finds both reads the ``.gz``).
All file work runs in one thread of its own, off the event loop, in the order records came.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gzip
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["TrafficWriter", "traffic_name"]

log = logging.getLogger("optscale.serve")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def traffic_name(replica: str, seq: int, at: float | None = None) -> str:
    """The file name of a new traffic file (UTC time of its opening, sortable)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if at is None else at))
    return f"traffic-{stamp}-{replica}-{seq:06d}.jsonl"


class TrafficWriter:
    """Appends records to ``directory`` (see the module). ``on_drop(reason)`` is called for each record lost
    (``disk_full`` or ``error``), ``on_write()`` for each one written."""

    def __init__(self, directory: str, rotate_bytes: int, rotate_s: float, *, replica: str | None = None,
                 on_write=lambda: None, on_drop=lambda reason: None):
        self.directory = Path(directory)
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.replica = _UNSAFE.sub("_", replica or f"{socket.gethostname()}_{os.getpid()}")[:64]
        self.on_write, self.on_drop = on_write, on_drop
        self._seq = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._failing = False  # an error was logged; the next one is not, until a write succeeds
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="optscale-traffic")

    async def append(self, record: dict[str, Any]) -> None:
        """Write one record (a JSON object) durably; never raises for a file error (it is counted)."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()
        await asyncio.get_running_loop().run_in_executor(self._io, self._write, line)

    async def aclose(self) -> None:
        """Close and gzip the open file (once every record appended before has been written)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._close)
        self._io.shutdown(wait=False)

    # -- in the writer's thread ------------------------------------------------------------
    def _write(self, line: bytes) -> None:
        try:
            if self._fd is not None and self._size > 0 and (
                    self._size + len(line) > self.rotate_bytes or time.time() - self._opened >= self.rotate_s):
                self._close()
            if self._fd is None:
                self._open()
            assert self._fd is not None
            start = self._size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError:
                self._cut_back(start)
                raise
            self._size = start + len(line)
        except OSError as exc:
            reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "error"
            self.on_drop(reason)
            if not self._failing:
                self._failing = True
                log.error("cannot write shadow traffic to %s (%s); records are dropped (counted in "
                          "optscale_traffic_records_dropped_total) until writing works again; clients are "
                          "served as before", self._path or self.directory, exc.strerror or exc)
            return
        if self._failing:
            self._failing = False
            log.warning("writing shadow traffic to %s works again", self._path)
        self.on_write()

    def _cut_back(self, size: int) -> None:
        """Remove the part of a line a failed write left, so the file ends with a whole line."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
        except OSError as exc:  # the readers skip a partial last line; the next record would follow it
            log.error("cannot cut %s back to its last whole line (%s); closing it", self._path, exc)
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            self._seq += 1
            path = self.directory / traffic_name(self.replica, self._seq)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:
                continue
        self._path, self._size, self._opened = path, 0, time.time()

    def _close(self) -> None:
        if self._fd is None:
            return
        fd, path, size = self._fd, self._path, self._size
        self._fd, self._path = None, None
        os.close(fd)
        if path is None:
            return
        if size == 0:
            path.unlink(missing_ok=True)
            return
        self._gzip(path)

    def _gzip(self, path: Path) -> None:
        """``path`` -> ``path.gz`` atomically; the plain file is removed only once the ``.gz`` is complete."""
        final = path.with_name(path.name + ".gz")
        tmp = path.with_name(f".{path.name}.gz.tmp")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as raw:
                with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, final)
            _sync_dir(self.directory)
            path.unlink()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.error("cannot gzip %s (%s); it stays as it is (readers read it uncompressed)", path,
                      exc.strerror or exc)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
