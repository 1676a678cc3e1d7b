"""Where row work runs: in this process (cluster.engine local), or as Ray tasks on a local instance or a cluster."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.params import ClusterParams

RAY_ADDRESS = "RAY_ADDRESS"  # the variable ray.init reads for the cluster to join
Map = Callable[..., Iterator[Any]]  # each(fn, items, *shared): fn(*shared, item) for each item, results in order


def in_process(fn: Callable[..., Any], items: Iterable[Any], *shared: Any) -> Iterator[Any]:
    """fn(*shared, item) for each item, one after another in this process."""
    return (fn(*shared, item) for item in items)


def on_ray(workers: int) -> Map:
    """A Map whose calls are Ray tasks, `workers` in flight, results in item order (Ray must be connected).

    The shared arguments go to the object store once. A task's error is raised as itself (a bad cell's
    TableError, not a remote traceback), the first in item order. On any error, or when the caller stops
    early, the tasks still pending are cancelled and waited for. Paths given to tasks are resolved by each worker
    in its own working directory: on a cluster, absolute paths on a volume every machine mounts.
    """

    def each(fn: Callable[..., Any], items: Iterable[Any], *shared: Any) -> Iterator[Any]:
        import ray

        task, refs = ray.remote(fn), [ray.put(value) for value in shared]
        queue, pending = iter(items), deque()

        def submit() -> None:
            item = next(queue, _END)
            if item is not _END:
                pending.append(task.remote(*refs, item))

        try:
            for _ in range(workers):
                submit()
            while pending:
                try:
                    result = ray.get(pending.popleft())
                except ray.exceptions.RayTaskError as exc:  # the task's own error, not a remote traceback
                    raise exc.cause if isinstance(exc.cause, Exception) else exc from None
                submit()
                yield result
        finally:  # an error, a lost worker, or the caller done early: no task left writing behind it
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=30)

    return each


_END = object()


@contextmanager
def ray_cluster(params: ClusterParams) -> Iterator[int]:
    """Connected to Ray for the block; yields how many tasks to keep in flight.

    An empty cluster.address starts a local Ray instance (cluster.workers CPUs, or this machine's) whose
    workers inherit this process's environment, and stops it after; `auto` or `ray://host:port` joins a
    running cluster and leaves it running, its workers given this package by the driver (Ray's runtime_env):
    the cluster's machines need only the same Python packages installed. A RAY_ADDRESS in the environment (as
    one_ray sets for the stages of one command) is joined too, as Ray itself would.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        address = params.address or os.environ.get(RAY_ADDRESS)
        if address:
            runtime_env = {"py_modules": [str(Path(__file__).parent)]} if params.address else None
            ray.init(address=address, runtime_env=runtime_env)
        else:
            ray.init(num_cpus=params.workers, include_dashboard=False)
    try:
        yield params.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()  # a joined cluster is left running: this disconnects


@contextmanager
def one_ray(params: ClusterParams) -> Iterator[None]:
    """One local Ray instance for every stage of the block that uses Ray, rather than one started by each.

    Its address goes in RAY_ADDRESS, which the stages' child processes inherit and join. Nothing is started for
    the local engine or where a cluster is named already (cluster.address, or RAY_ADDRESS).
    """
    if params.engine != "ray" or params.address or os.environ.get(RAY_ADDRESS):
        yield
        return
    import ray

    with ray_cluster(params):
        os.environ[RAY_ADDRESS] = ray.get_runtime_context().gcs_address
        try:
            yield
        finally:
            del os.environ[RAY_ADDRESS]
