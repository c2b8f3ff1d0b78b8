"""Runs and pools on Ray (``--engine ray``): problems sharded over Ray actors, one writer.

Each of ``config.actors`` actors (:class:`ProblemWorker`) builds the run's generator, scorer and
policy from the :class:`~optscale.live.config.RunConfig` and checks its servers (an in-process
scorer such as ``prm-local`` is loaded there, on the GPUs the actor reserves with
``actor_gpus``). The driver gives each actor a shard of the problems, with what the run folder
already holds for them, and each actor runs the ordinary
:func:`~optscale.live.sampler.sample_problems` over its shard, streaming every problem back the
moment it finishes (a Ray streaming generator): its log records and its summary. The driver is
the one writer of the run folder: it appends them to the :class:`~optscale.live.runs.RunStore`,
so the folder's format, resume and crash safety are those of a local run. A problem reaches the
folder when it finishes; one under way when the driver dies is drawn again on resume, and with
a seed it is the same sample for sample (seeds depend only on the problem and sample index).

An actor that dies (its node lost, ``ray.kill``) loses only its unfinished problems, which go
to the surviving actor with the least work; the driver takes each problem once, by id, so none
is written twice. When no actor is left the remaining problems stay unfinished (resumable).

Ray is imported only here, when a run asks for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..compose import build_policy
from ..errors import InputError, OptscaleError
from .config import RunConfig, build_generator, build_run_scorer
from .datasets import LiveProblem
from .runs import RunState
from .sampler import Listener, ProblemResult, sample_problems, supervise
from .types import RequestRejected

__all__ = ["ACTOR_START_S", "ProblemWorker", "RayEngine", "import_ray", "ray_engine"]

log = logging.getLogger(__name__)

#: How long actors may take to start and check their servers (a cluster may first have to add a node).
ACTOR_START_S = 600.0
#: How long a finishing run waits for actors to close their clients before they are killed.
_CLOSE_S = 10.0
#: How long the first connection to a cluster's address may take.
_CONNECT_S = 5.0
_NAME = "optscale-worker"


def import_ray() -> Any:
    """The ``ray`` module, or a located error saying which extra to install."""
    try:
        import ray
    except ImportError:
        raise InputError("the ray engine needs the ray extra: pip install 'optscale[ray]'", "engine") from None
    return ray


class _Relay(Listener):
    """An actor's store and listener: records and summaries of each problem, sent on when it ends."""

    def __init__(self, state: RunState):
        self.state = state
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.finished: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def load(self) -> RunState:
        return self.state

    async def append(self, record: dict[str, Any]) -> None:
        self.records.setdefault(record["problem"], []).append(record)

    async def finish(self, summary: dict[str, Any]) -> None:
        self.summaries[summary["id"]] = summary

    def on_problem(self, result: ProblemResult) -> None:
        self.finished.put_nowait({"result": result, "records": self.records.pop(result.id, []),
                                  "summary": self.summaries.pop(result.id, None)})


def _fatal(exc: BaseException) -> dict[str, Any] | None:
    """What the driver raises for an error no retry fixes (a rejected key, a scorer that cannot work)."""
    if isinstance(exc, (InputError, RequestRejected)):
        return {"fatal": [exc.detail, exc.where]}
    if isinstance(exc, OptscaleError):
        return {"fatal": [str(exc), None]}
    return None


class ProblemWorker:
    """One Ray actor's side of a run (wrapped with ``ray.remote`` when the engine starts).

    Its clients live as long as the actor; every :meth:`solve` call (a shard, or problems
    re-queued from a dead actor) shares them.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.generator = build_generator(config)
        self.scorer = build_run_scorer(config)
        self.policy = build_policy(config.policy, config.n_max, config.policy_config())

    async def start(self) -> dict[str, Any]:
        """Check the servers (and load an in-process scorer) from where this actor runs."""
        import optscale

        found = {"version": optscale.__version__, "path": optscale.__file__}
        try:
            await self.generator.check(need_logprobs=self.scorer.needs_logprobs, why="scorer")
            await self.scorer.check()
        except Exception as exc:
            if (fatal := _fatal(exc)) is None:
                raise
            return found | fatal
        return found

    async def solve(self, problems: Sequence[LiveProblem], state: RunState) -> AsyncIterator[dict[str, Any]]:
        """Sample ``problems`` (``state``: what the run folder holds for them), yielding each as it ends."""
        relay = _Relay(state)
        task = asyncio.ensure_future(sample_problems(
            problems, self.generator, self.scorer, self.policy, template=self.config.template_obj(),
            settings=self.config.sampler, store=relay, listener=relay))
        task.add_done_callback(lambda _: relay.finished.put_nowait(None))
        try:
            while (item := await relay.finished.get()) is not None:
                yield item
            if (exc := task.exception()) is not None:
                if (fatal := _fatal(exc)) is None:
                    raise exc
                yield fatal
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.generator.aclose()
        await self.scorer.aclose()


class RayEngine:
    """The driver's side: shards the problems, writes what the actors stream back, re-queues on failure."""

    def __init__(self, ray: Any, actors: list[Any]):
        self.ray = ray
        self.actors = actors
        self._load = {id(a): 0 for a in actors}  # problems given to each live actor and not yet received

    async def sample_problems(self, problems: Sequence[LiveProblem], store: Any,
                              listener: Listener | None = None) -> list[ProblemResult]:
        """Like :func:`~optscale.live.sampler.sample_problems` with a run store, on the actors."""
        listener = listener or Listener()
        state = store.load()
        results: dict[str, ProblemResult] = {}
        listener.on_start(len(problems))

        async def write(item: dict[str, Any]) -> None:
            result: ProblemResult = item["result"]
            if result.id in results:  # taken once: a problem is never written twice
                return
            results[result.id] = result
            for record in item["records"]:
                await store.append(record)
                listener.on_record(record)
            if item["summary"] is not None:
                await store.finish(item["summary"])
            listener.on_problem(result)

        async def stream(actor: Any, shard: list[LiveProblem]) -> None:
            part = RunState({p.id: state.logs[p.id] for p in shard if p.id in state.logs},
                            {p.id: state.finished[p.id] for p in shard if p.id in state.finished})
            self._load[id(actor)] = self._load.get(id(actor), 0) + len(shard)
            try:
                async for ref in actor.solve.remote(shard, part):
                    item = await ref
                    if "fatal" in item:
                        raise InputError(*item["fatal"])
                    self._load[id(actor)] -= 1
                    await write(item)
            except self.ray.exceptions.RayTaskError as exc:  # a bug in the actor: its traceback says where
                raise OptscaleError(f"a Ray actor failed: {exc}") from None
            except self.ray.exceptions.RayActorError as exc:
                self._load.pop(id(actor), None)
                left = [p for p in shard if p.id not in results]
                alive = [a for a in self.actors if id(a) in self._load]
                log.warning("a Ray actor died (%s); %d unfinished problem(s) %s", str(exc).splitlines()[0],
                            len(left), "re-queued on the others" if alive else "left for the next session")
                if left and alive:  # on the actor with the least work; should it die too, on the next
                    await stream(min(alive, key=lambda a: self._load[id(a)]), left)

        shards = [list(problems[k::len(self.actors)]) for k in range(len(self.actors))]
        await supervise([asyncio.create_task(stream(a, s)) for a, s in zip(self.actors, shards, strict=True) if s])
        for problem in problems:
            if problem.id not in results:
                earlier = state.logs.get(problem.id)
                result = ProblemResult(problem.id, None, None, len(earlier.samples) if earlier else 0, 0,
                                       "unfinished", error="every Ray actor died before it finished")
                results[problem.id] = result
                listener.on_problem(result)
        return [results[p.id] for p in problems]


def _connect(ray: Any, config: RunConfig) -> bool:
    """Join ``config.ray_address`` (or ``RAY_ADDRESS``), or start a local Ray; True when this run started it."""
    if ray.is_initialized():  # the application (a test, a notebook) already chose its cluster
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:  # room for every actor on this machine; GPUs are detected
        options["num_cpus"] = max(config.actors, os.cpu_count() or 1)
    else:
        _reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot join the Ray cluster at {address}: {exc}", "ray_address") from None
    return True


def _reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens: Ray itself retries for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_S).close()
    except OSError as exc:
        raise InputError(f"cannot join the Ray cluster at {address}: {exc.strerror or exc}", "ray_address") from None


@asynccontextmanager
async def ray_engine(config: RunConfig) -> AsyncIterator[RayEngine]:
    """Ray connected, ``config.actors`` actors started and their servers checked; all released on exit.

    A local Ray this run started is shut down again; actors are always killed (after they
    closed their clients). Errors of the actors' checks are raised as the local checks raise them.
    """
    import optscale

    ray = import_ray()
    started = _connect(ray, config)
    actors: list[Any] = []
    try:
        worker, token = ray.remote(ProblemWorker), uuid.uuid4().hex[:8]
        actors = [worker.options(name=f"{_NAME}-{token}-{k}", num_gpus=config.actor_gpus, max_restarts=0,
                                 max_task_retries=0).remote(config) for k in range(config.actors)]
        try:
            checks = await asyncio.wait_for(asyncio.gather(*(a.start.remote() for a in actors)), ACTOR_START_S)
        except asyncio.TimeoutError:
            gpus = f" and {config.actor_gpus:g} GPU(s)" if config.actor_gpus else ""
            raise InputError(f"the {config.actors} Ray actor(s) did not start within {ACTOR_START_S:.0f} s; does "
                             f"the cluster have room for them (each needs 1 CPU{gpus})?", "actors") from None
        for check in checks:
            if "fatal" in check:
                raise InputError(*check["fatal"])
            if check["version"] != optscale.__version__:
                raise InputError(f"the Ray workers import optscale {check['version']} ({check['path']}), this "
                                 f"process {optscale.__version__}; install the same version on the cluster",
                                 "ray_address")
        yield RayEngine(ray, actors)
    finally:
        if actors:
            closing = [a.close.remote() for a in actors]
            await asyncio.wait([asyncio.ensure_future(_quiet(ref)) for ref in closing], timeout=_CLOSE_S)
            for actor in actors:
                ray.kill(actor)
        if started:
            ray.shutdown()


async def _quiet(ref: Any) -> None:
    try:
        await ref
    except Exception:  # an actor already dead has nothing to close
        pass
