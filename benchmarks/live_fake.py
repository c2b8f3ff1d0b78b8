"""Live sampler against the fake OpenAI-compatible server (its own process, fixed latency per token).

Measured in one run and printed as ratios:

1. sequential OptScale vs fixed Best-of-N at the same N_max and concurrency: wall time and
   tokens (the fake's response qualities follow a per-problem truncated normal, scored by the
   confidence scorer);
2. tokens generated after the stop decision (cancelled requests) per problem, against the
   bound in_flight x max_tokens;
3. the sampler's own overhead: the same requests through ``sample_problems`` (with a durable
   run folder) vs raw concurrent ``generate`` calls (target: under 5 %).

Usage: python benchmarks/live_fake.py [--problems 32] [--n-max 16] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from live_fakes import MODEL, fake_gold  # noqa: E402

from optscale.live import (  # noqa: E402
    ClientSettings,
    ConfidenceScorer,
    GenerationSettings,
    LiveProblem,
    OpenAIGenerator,
    PromptTemplate,
    RunStore,
    SamplerSettings,
    sample_problems,
)
from optscale.answers import grade  # noqa: E402
from optscale.policies import make_policy  # noqa: E402


class FakeProcess:
    """The fake server in a child process, so its work does not share this process's GIL."""

    def __init__(self, token_latency: float, min_tokens: int, max_tokens: int):
        self.args = [sys.executable, str(ROOT / "tests" / "live_fakes.py"), "--token-latency", str(token_latency),
                     "--min-tokens", str(min_tokens), "--max-tokens", str(max_tokens)]

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()


def problems(k: int) -> list[LiveProblem]:
    out = []
    for i in range(k):
        q = f"Problem b{i}: how many?"
        out.append(LiveProblem(f"b{i}", q, fake_gold(q)))
    return out


async def sampled(url, items, policy, settings, max_tokens, folder=None):
    gen = OpenAIGenerator(url, MODEL, GenerationSettings(max_tokens=max_tokens), client=ClientSettings(retries=0))
    store = None
    if folder is not None:
        store = RunStore(folder)
        store.prepare({"bench": policy.name}, {})
        store.open()
    try:
        t0 = time.perf_counter()
        results = await sample_problems(items, gen, ConfidenceScorer(), policy, settings=settings, store=store)
        return time.perf_counter() - t0, results
    finally:
        if store is not None:
            await store.aclose()
        await gen.aclose()


async def raw(url, items, per_problem, concurrency, max_tokens):
    """The same number of requests as plain concurrent client calls (logprobs on, as the sampler asks)."""
    gen = OpenAIGenerator(url, MODEL, GenerationSettings(max_tokens=max_tokens, logprobs=True),
                          client=ClientSettings(retries=0))
    limit = asyncio.Semaphore(concurrency)
    template = PromptTemplate()

    async def one(p):
        async with limit:
            return await gen.generate(template.render(p.question))

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in items for _ in range(per_problem)))
        return time.perf_counter() - t0
    finally:
        await gen.aclose()


def accuracy(results) -> float:
    return 100 * statistics.mean(bool(r.correct) for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--n-max", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--token-latency", type=float, default=0.002)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--overhead-latency", type=float, default=0.005)
    args = ap.parse_args()
    items = problems(args.problems)
    settings = SamplerSettings(concurrency=args.concurrency, in_flight=args.in_flight)

    print(f"1) OptScale vs Best-of-N: {args.problems} problems, N_max {args.n_max}, concurrency {args.concurrency}, "
          f"{args.in_flight} in flight per problem, {args.token_latency * 1000:g} ms/token, 40-{args.max_tokens} "
          "tokens per response")
    with FakeProcess(args.token_latency, 40, args.max_tokens) as url:
        bon_wall, bon = asyncio.run(sampled(url, items, make_policy("bon", args.n_max), settings, args.max_tokens))
        opt_wall, opt = asyncio.run(sampled(url, items, make_policy("optscale", args.n_max), settings,
                                            args.max_tokens))
    rows = []
    for name, wall, res in (("bon", bon_wall, bon), ("optscale", opt_wall, opt)):
        samples = sum(r.n_samples for r in res)
        tokens = sum(r.tokens for r in res)
        rows.append((wall, samples, tokens))
        print(f"   {name:9s} wall {wall:6.2f} s  samples {samples:5d}  tokens {tokens:7d}  accuracy "
              f"{accuracy(res):5.1f}%")
    print(f"   optscale / bon: wall x{rows[1][0] / rows[0][0]:.2f}, samples x{rows[1][1] / rows[0][1]:.2f}, "
          f"tokens x{rows[1][2] / rows[0][2]:.2f}")

    bound = args.in_flight * args.max_tokens
    after = [r.summary["cancelled_tokens"] for r in opt]
    cancelled = sum(r.summary["n_cancelled"] for r in opt)
    print(f"2) tokens after the stop decision per problem (optscale run): max {max(after)}, mean "
          f"{statistics.mean(after):.1f}, {cancelled} requests cancelled; bound in_flight x max_tokens = {bound} "
          f"-> {'within' if max(after) <= bound else 'OVER'} bound (max / bound = {max(after) / bound:.2f})")

    per_problem, tokens, k, reps = args.n_max, 64, max(1, args.problems // 2), 5
    print(f"3) sampler overhead: {k} x {per_problem} requests of {tokens} tokens at {args.overhead_latency * 1000:g} "
          f"ms/token, concurrency {args.concurrency}, {reps} interleaved repetitions")
    grade("1", "1")  # the grader's one-off import is not per-request overhead
    walls: dict[str, list[float]] = {"raw": [], "sampler": []}
    cpus: dict[str, list[float]] = {"raw": [], "sampler": []}
    with FakeProcess(args.overhead_latency, tokens, tokens) as url:
        asyncio.run(raw(url, items[:2], 2, args.concurrency, tokens))  # warm up connections and imports
        for _ in range(reps):
            c0 = time.process_time()
            walls["raw"].append(asyncio.run(raw(url, items[:k], per_problem, args.concurrency, tokens)))
            cpus["raw"].append(time.process_time() - c0)
            with tempfile.TemporaryDirectory() as tmp:
                c0 = time.process_time()
                wall, _ = asyncio.run(sampled(url, items[:k], make_policy("bon", per_problem),
                                              SamplerSettings(concurrency=args.concurrency, in_flight=per_problem),
                                              tokens, folder=tmp))
                cpus["sampler"].append(time.process_time() - c0)
            walls["sampler"].append(wall)
    med = {key: statistics.median(v) for key, v in walls.items()}
    cpu = {key: statistics.median(v) for key, v in cpus.items()}
    print(f"   wall (median): raw client {med['raw']:.3f} s, sampler {med['sampler']:.3f} s -> overhead "
          f"{100 * (med['sampler'] / med['raw'] - 1):+.1f}% (target < 5%)")
    print(f"   client CPU (median): raw {cpu['raw']:.3f} s, sampler {cpu['sampler']:.3f} s -> "
          f"{1000 * (cpu['sampler'] - cpu['raw']) / (k * per_problem):.2f} ms extra CPU per sample "
          "(scoring, answer extraction, policy, fsynced log, grading at the end)")

if __name__ == "__main__":
    main()
