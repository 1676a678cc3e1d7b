"""Where row work runs: in this process (cluster.engine local), or as Ray tasks on a local instance or a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.params import ClusterParams


@contextmanager
def ray_cluster(params: ClusterParams) -> Iterator[int]:
    """Connected to Ray for the block; yields how many tasks to keep in flight.

    An empty cluster.address starts a local Ray instance (cluster.workers CPUs, or this machine's) whose
    workers inherit this process's environment, and stops it after; `auto` or `ray://host:port` joins a
    running cluster and leaves it running, its workers given this package by the driver (Ray's runtime_env):
    the cluster's machines need only the same Python packages installed.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        local = not params.address
        ray.init(
            address=params.address or None,
            num_cpus=params.workers if local else None,
            include_dashboard=False,
            runtime_env=None if local else {"py_modules": [str(Path(__file__).parent)]},
        )
    try:
        yield params.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()
