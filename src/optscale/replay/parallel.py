"""Independent units of replay work run in parallel through joblib, with results in a fixed order.

``jobs`` 1 runs the units one after another in this process (no joblib, no pickling): the
serial code path. With more jobs, :func:`run_units` hands them to joblib
(:func:`joblib.parallel_config`) on one of :data:`BACKENDS`:

- ``loky``: worker processes on this machine (joblib's default);
- ``ray``: Ray tasks (``ray.util.joblib``; extra ``ray``); a Ray already initialised in this
  process is used, else ``ray.init()`` connects to ``RAY_ADDRESS`` when set or starts a local Ray,
  which is shut down afterwards;
- ``dask``: a ``dask.distributed`` client (extra ``dask``); the current client is used, else one
  connected to the scheduler in Dask's configuration (``DASK_SCHEDULER_ADDRESS``), else a
  ``LocalCluster`` of ``jobs`` worker processes, closed afterwards.

Results come back in the order of the units whatever the order they finish in, and every unit
derives what it draws from its own identity (seeds are arguments), never from when it ran: the
combined result is the serial one, bit for bit. Units are top-level functions with picklable
arguments. Ray and Dask are imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Sequence

from ..checks import check_int
from ..errors import InputError

__all__ = ["BACKENDS", "MAX_JOBS", "check_parallel", "run_units"]

#: joblib backends and the extra each needs (None: installed with optscale).
BACKENDS = {"loky": None, "ray": "ray", "dask": "dask"}
#: Most parallel jobs of one command.
MAX_JOBS = 1024
_MODULES = {"ray": "ray", "dask": "distributed"}


def check_parallel(jobs: int, backend: str) -> tuple[int, str]:
    """A number of jobs (1 to :data:`MAX_JOBS`) and a backend that is installed; errors name ``jobs`` or ``backend``."""
    jobs = check_int(jobs, "jobs", 1, MAX_JOBS)
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}", "backend")
    extra = BACKENDS[backend]
    if extra is not None and importlib.util.find_spec(_MODULES[backend]) is None:
        raise InputError(f"the {backend} backend needs {_MODULES[backend]}, which is not installed: "
                         f"pip install 'optscale[{extra}]'", "backend")
    return jobs, backend


def run_units(fn: Callable[..., Any], units: Sequence[tuple], jobs: int = 1, backend: str = "loky",
              on_done: Callable[[int, int], None] | None = None) -> list:
    """``[fn(*unit) for unit in units]``, on ``jobs`` parallel workers of ``backend`` when ``jobs`` > 1.

    ``on_done(done, total)`` is called as results arrive (in the units' order).
    """
    jobs, backend = check_parallel(jobs, backend)
    total = len(units)
    if jobs == 1 or total <= 1:
        results = []
        for unit in units:
            results.append(fn(*unit))
            if on_done is not None:
                on_done(len(results), total)
        return results
    import joblib

    results = []
    returned = "list" if backend == "ray" else "generator"  # Ray's backend returns all at once
    with _backend(backend, jobs) as config:
        with joblib.parallel_config(**config):
            for result in joblib.Parallel(return_as=returned)(joblib.delayed(fn)(*unit) for unit in units):
                results.append(result)
                if on_done is not None:
                    on_done(len(results), total)
    return results


@contextmanager
def _backend(backend: str, jobs: int) -> Iterator[dict]:
    """joblib's configuration for ``backend``, with what it needs started (and stopped after) if it was not."""
    if backend == "loky":
        yield {"backend": "loky", "n_jobs": jobs}
        return
    with ExitStack() as stack:
        if backend == "ray":
            import ray
            from ray.util.joblib import register_ray

            register_ray()
            if not ray.is_initialized():
                ray.init(include_dashboard=False, log_to_driver=False)  # RAY_ADDRESS set: that cluster
                stack.callback(ray.shutdown)
            yield {"backend": "ray", "n_jobs": jobs}
            return
        import dask
        from distributed import Client, LocalCluster, get_client

        try:
            get_client()
        except ValueError:  # no client yet: the configured scheduler, else a local cluster of processes
            address = dask.config.get("scheduler-address", None)
            if address:
                stack.enter_context(Client(address))
            else:
                cluster = stack.enter_context(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                           dashboard_address=None))
                stack.enter_context(Client(cluster))
        yield {"backend": "dask", "n_jobs": jobs}
