"""``python -m shoal demo --cluster``: the tutorial's programs on a local two-node Ray
cluster that the demo starts (loopback only, its own temporary directory) and stops by
its processes' handles at the end, on Ctrl-C and on error.

Each scene is a tutorial program with only the context changed (``get_context("ray")``),
and prints what it did and on which node each task ran. The task functions live at
module level so that Ray's workers import them by name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from ._context import get_context
from ._ray_cluster import NODE_RESOURCES, cluster_temp_dir, two_node_cluster

_INSTALL = (
    "python -m shoal demo --cluster needs Ray: pip install 'shoal[ray]' "
    "(Ray is not installed for {python})"
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _node() -> str:
    import ray

    node_id: str = ray.get_runtime_context().get_node_id()
    return node_id


def long_time_task(name: int) -> tuple[int, int, str]:
    """Program 2's task: who ran it, where."""
    return name, os.getpid(), _node()


def write(q: Any, lock: Any) -> str:
    """Programs 4 and 6's writer: A, B and C under the lock."""
    with lock:
        for value in ["A", "B", "C"]:
            q.put(value)
    q.flush()
    return _node()


def read(q: Any, n: int) -> tuple[list[str], str]:
    """The reader, waiting for the ``n`` values (the tutorial's race taken out, so that
    the demo shows the same thing every time)."""
    return [q.get(timeout=60) for _ in range(n)], _node()


def bump(lock: Any, d: Any, times: int) -> str:
    """Program 6's lock, contended from both nodes around a read-modify-write."""
    for _ in range(times):
        with lock:
            d["count"] = d.get("count", 0) + 1
    return _node()


def cluster_demo() -> int:
    """Run the demo; 2 when Ray is not installed, else 0."""
    if importlib.util.find_spec("ray") is None:
        _say(_INSTALL.format(python=sys.executable))
        return 2
    temp = cluster_temp_dir("shoal-demo-")
    _say(f"starting a two-node Ray cluster on 127.0.0.1 (its files in {temp}) ...")
    with two_node_cluster(temp):
        _run_scenes(NODE_RESOURCES)
    _say()
    _say("the cluster is stopped and its directory removed.")
    return 0


def _run_scenes(resources: tuple[str, str]) -> None:
    ctx: Any = get_context("ray")
    pools = [ctx.Pool(2, ray_options={"resources": {r: 1}}) for r in resources]
    names: dict[str, str] = {}

    def node(node_id: str) -> str:
        return names.setdefault(node_id, f"node {len(names) + 1} ({node_id[:8]})")

    try:
        _say()
        _say("tutorial 2: five apply_async tasks, spread over both nodes")
        results = [pools[i % 2].apply_async(long_time_task, (i,)) for i in range(5)]
        for r in results:
            name, pid, where = r.get(60)
            _say(f"   task {name} ran in process {pid} on {node(where)}")

        _say()
        _say("tutorials 4 and 6: a Queue and a Lock passed to pool tasks on two nodes")
        q, lock = ctx.Queue(), ctx.Lock()
        reader = pools[1].apply_async(read, (q, 3))
        writer = pools[0].apply_async(write, (q, lock))
        wrote_on = node(writer.get(60))
        values, read_on = reader.get(60)
        _say(f"   the writer put A, B, C on {wrote_on}; the reader got {values} on {node(read_on)}")

        _say()
        _say("a Lock contended from both nodes around a SharedDict counter")
        d = ctx.SharedDict()
        bumps = [p.apply_async(bump, (lock, d, 50)) for p in pools]
        ran = sorted({node(r.get(120)) for r in bumps})
        _say(f"   2 x 50 increments from {' and '.join(ran)}: the counter is {d['count']}")
    finally:
        for pool in pools:
            pool.close()
        for pool in pools:
            pool.join()
