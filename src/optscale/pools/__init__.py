"""Completion pools: stored samples of many problems, the input of offline replay.

A pool is a JSON Lines file with one problem per line (see ``pool.schema.json``), or a traffic
folder of such files written by ``optscale serve --traffic-dir`` (no gold answers);
:func:`convert_flat` builds one from a flat table with one sample per row. The files of problems
that pools are drawn from (questions, gold answers, ids) have their one reader in
:mod:`optscale.pools.problems`.
"""

from .convert import FLAT_COLUMNS, convert_flat, detect_format
from .io import TRAFFIC_PATTERNS, iter_pool, pool_files, pool_sha256, read_pool, write_pool
from .schema import MAX_SAMPLES, MAX_TOKENS, SCHEMA_PATH, PoolProblem, PoolSample, json_schema

__all__ = [
    "MAX_SAMPLES",
    "MAX_TOKENS",
    "PoolSample",
    "PoolProblem",
    "SCHEMA_PATH",
    "json_schema",
    "iter_pool",
    "pool_files",
    "pool_sha256",
    "TRAFFIC_PATTERNS",
    "read_pool",
    "write_pool",
    "FLAT_COLUMNS",
    "convert_flat",
    "detect_format",
]
