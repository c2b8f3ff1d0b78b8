#!/usr/bin/env bash
# Set up a virtual environment with every extra the tests need, then run the whole suite.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Real servers of the scale-out and deployment tests (issue 17): HAProxy and Redis, Debian packages.
# Installed only where missing, as root, with apt; otherwise those tests skip (under CI=true they fail).
if { ! command -v haproxy || ! command -v redis-server; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        haproxy redis-server; } || echo "warning: apt-get could not install haproxy and redis-server" >&2
fi
# llama-cpp-python (extra `local`, the live tests' real server) compiles from source; a native
# build can segfault on the first decode, so build it for portable AVX2 CPUs.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# The predictor extra needs torch: take the CPU build first so nothing pulls a CUDA one
# (on these machines pip finds torch 2.13.0 for Python 3.11 on local disk).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,live,serve,otel,redis,local,predictor,ray,dask]"
exec .venv/bin/python -m pytest "$@"
