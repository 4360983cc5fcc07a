"""A local two-node Ray cluster (``ray.cluster_utils.Cluster``) for the cluster demo and
the two-node test: loopback only, its own temporary directory, its processes stopped by
the cluster's own handles (by PID: never ``ray stop``) on exit, Ctrl-C or error."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

NODE_RESOURCES = ("node1", "node2")


def cluster_temp_dir(prefix: str = "shoal-ray2-") -> str:
    """Make the cluster's own temporary directory and point Ray at it (the address record
    included: a stale ``/tmp/ray/ray_current_cluster`` makes a later plain ``ray.init()``
    hang). Call it before Ray is imported: Ray reads ``RAY_TMPDIR`` at import."""
    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.environ["RAY_TMPDIR"] = temp
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return temp


@contextlib.contextmanager
def two_node_cluster(temp: str | None = None) -> Iterator[tuple[str, Any]]:
    """Start two Ray nodes on this machine (resources ``node1`` and ``node2`` pin a task
    to either), connect this process to them and yield ``(temp_dir, cluster)``; on the
    way out (Ctrl-C and errors included) disconnect, stop every process of the cluster
    through its own handles and remove its directory. ``temp`` is what
    :func:`cluster_temp_dir` made (made here when ``None``)."""
    if temp is None:
        temp = cluster_temp_dir()
    cluster: Any = None
    try:
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "resources": {NODE_RESOURCES[0]: 10},
                "object_store_memory": 128 << 20,
                "include_dashboard": False,
            },
        )
        cluster.add_node(
            num_cpus=2,
            resources={NODE_RESOURCES[1]: 10},
            object_store_memory=128 << 20,
        )
        ray.init(address=cluster.address)
        cluster.wait_for_nodes(timeout=60)
        yield temp, cluster
    finally:
        try:
            import ray

            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
