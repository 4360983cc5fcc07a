"""A two-node local Ray cluster (ray.cluster_utils.Cluster), run as its own process by
tests/test_ray.py: prints one line per check, "ok <name>" or the failure."""

from __future__ import annotations

import os
import signal
import sys
import time

from shoal._ray_cluster import cluster_temp_dir, two_node_cluster

TEMP = cluster_temp_dir()  # before Ray is imported

import numpy as np  # noqa: E402
import ray  # noqa: E402

import shoal  # noqa: E402
from shoal._ray_demo import bump  # noqa: E402  (the demo's: a counter under a lock)

N = 500


def produce(q, n):
    for i in range(n):
        q.put(i)
    q.flush()
    return ray.get_runtime_context().get_node_id()


def consume(q, n):
    return sum(q.get(timeout=60) for _ in range(n)), ray.get_runtime_context().get_node_id()


def array_sum(arr):
    view = arr.view()  # the node's one copy, mapped read-only
    return float(view.sum()), view.flags.writeable, ray.get_runtime_context().get_node_id()


def array_write(arr, index, value):
    arr[index] = value
    return ray.get_runtime_context().get_node_id()


def report_then_sleep(q):
    q.put(os.getpid())
    q.flush()
    time.sleep(60)


def main() -> None:
    print("temp", TEMP, flush=True)
    with two_node_cluster(TEMP):
        ctx = shoal.get_context("ray")
        on1 = ctx.Pool(2, ray_options={"resources": {"node1": 1}})
        on2 = ctx.Pool(2, ray_options={"resources": {"node2": 1}})

        q = ctx.Queue()
        c = on2.apply_async(consume, (q, N))
        p = on1.apply_async(produce, (q, N))
        total, consumer_node = c.get(60)
        producer_node = p.get(60)
        assert total == sum(range(N)) and producer_node != consumer_node
        print("ok queue across nodes", flush=True)

        lock, d = ctx.Lock(), ctx.SharedDict()
        nodes = {
            r.get(120)
            for r in [on1.apply_async(bump, (lock, d, 50)), on2.apply_async(bump, (lock, d, 50))]
        }
        assert d["count"] == 100 and len(nodes) == 2, (d["count"], nodes)
        print("ok lock across nodes", flush=True)

        array = np.arange(1 << 20, dtype=np.float64)
        shared = ctx.share(array)  # one owner; each node maps each version once
        seen = [pool.apply(array_sum, (shared,)) for pool in (on1, on2)]
        assert all(s == float(array.sum()) and not w for s, w, _ in seen), seen
        assert seen[0][2] != seen[1][2]
        # a write from node 2 reaches the owner: node 1 and the driver read it next
        writer = on2.apply(array_write, (shared, 0, 1e6))
        total, _, reader = on1.apply(array_sum, (shared,))
        assert total == float(array.sum()) + 1e6 and reader != writer, (total, reader)
        assert shared[0] == 1e6
        print("ok array on both nodes", flush=True)

        pids = ctx.Queue()
        doomed = on2.apply_async(report_then_sleep, (pids,))
        fine = on2.apply_async(time.sleep, (1.0,))
        pid = pids.get(timeout=60)
        os.kill(pid, signal.SIGKILL)  # a worker of the cluster this script started
        try:
            doomed.get(60)
        except shoal.WorkerDiedError:
            pass
        else:
            raise AssertionError("the killed worker's task did not fail")
        assert fine.get(60) is None
        assert on2.map(abs, [-1, -2]) == [1, 2]
        print("ok worker killed on node 2", flush=True)
        on1.close(), on2.close()
        on1.join(), on2.join()


if __name__ == "__main__":
    main()
    sys.exit(0)
