"""The idempotency store's cost per request as it fills: requests/s of ``check`` + ``run`` with few and many
entries kept (it once scanned every entry per request: 10k entries took a served request from 91 to 29/s).

    python benchmarks/bench_idempotency.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from optscale.serve.idempotency import IdempotencyStore


async def rate(kept: int, requests: int) -> float:
    store = IdempotencyStore(600, 10**7, 10**12, size=len)

    async def work():
        return "x"

    for i in range(kept):
        await store.run("c", f"kept-{i}", "f", work)
    start = time.perf_counter()
    for i in range(requests):
        store.check("c", f"new-{i}", "f")
        await store.run("c", f"new-{i}", "f", work)
    return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    for kept in (10, 10_000, 100_000):
        print(f"{kept:>7} entries kept: {asyncio.run(rate(kept, args.requests)):,.0f} requests/s")


if __name__ == "__main__":
    main()
