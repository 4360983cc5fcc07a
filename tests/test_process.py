"""Processes, contexts and the stdlib-shaped names (issue #5, item 1).

* the module-level names are the standard library's own objects (identity, not
  look-alikes), and every name of ``multiprocessing`` and of its contexts exists;
* a process started from a shoal context, under each start method (the ``ctx``
  fixture): exit code, ``current_process``/``parent_process`` in the child,
  ``active_children``, a ``Pipe``;
* ``get_context``: its ``Process`` is the standard library context's, its factories
  make shoal's objects, one object per method, pickles, bad names raise as the
  standard library does; ``set_start_method`` errors match the standard library's
  (in a fresh interpreter: the default start method is global state);
* ``process_cpu_count``: at least 1, follows the affinity of a child that narrows its
  own, and reads cgroup v2/v1 quotas (fake ``/proc`` trees).

Child functions live at module level so spawn and forkserver children can import them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import join_all

import shoal
from shoal import _process, connection, context, sharedctypes

TIMEOUT = 30.0
PROCESS_CLASS = {"fork": "ForkProcess", "spawn": "SpawnProcess", "forkserver": "ForkServerProcess"}
# names multiprocessing has that shoal does not give, on purpose (docs/compatibility.md)
NOT_PROVIDED = {"reducer"}
# names another part of #5 provides: required once their module exists
PENDING = {
    "Pool": "shoal._pool",
    "Manager": "shoal._managers",
}


def pending(name: str) -> bool:
    module = PENDING.get(name)
    return module is not None and importlib.util.find_spec(module) is None


def shoal_context(ctx: mp.context.BaseContext) -> context.Context:
    return shoal.get_context(ctx.get_start_method())


# ---- children ---------------------------------------------------------------------------


def report_and_exit(out: Any, parent_pid: int, code: int) -> None:
    """What a child sees of itself and its parent; then exit with ``code``."""
    me = shoal.current_process()
    parent = shoal.parent_process()
    out.put(
        (
            me.name,
            me.pid == os.getpid(),
            me is mp.current_process(),
            isinstance(me, multiprocessing.process.BaseProcess),
            [c.__name__ for c in type(me).__mro__],
            parent is not None and parent.pid == parent_pid,
            parent is not None and parent.name == "MainProcess",
        )
    )
    sys.exit(code)


def wait_for(event: Any) -> None:
    event.wait(TIMEOUT)


def echo_upper(conn: Any) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg.upper())
    conn.close()


def cpus_with_affinity(cpu: int, out: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    out.send((shoal.process_cpu_count(), len(os.sched_getaffinity(0))))


def process_classes() -> list[str]:
    return [c.__name__ for c in type(mp.current_process()).__mro__]


# ---- the names are the standard library's -----------------------------------------------

SAME_OBJECTS = [
    "Process",
    "current_process",
    "parent_process",
    "active_children",
    "cpu_count",
    "set_start_method",
    "get_start_method",
    "get_all_start_methods",
    "freeze_support",
    "set_executable",
    "set_forkserver_preload",
    "allow_connection_pickling",
    "log_to_stderr",
    "get_logger",
    "ProcessError",
    "BufferTooShort",
    "TimeoutError",
    "AuthenticationError",
]


@pytest.mark.parametrize("name", SAME_OBJECTS)
def test_name_is_the_standard_library_s(name: str) -> None:
    assert getattr(shoal, name) is getattr(mp, name)


def test_pipe_and_connection_are_the_standard_library_s() -> None:
    assert shoal.Pipe is multiprocessing.connection.Pipe
    for name in ("Pipe", "Connection", "Listener", "Client", "wait"):
        assert getattr(connection, name) is getattr(multiprocessing.connection, name)


def test_the_connection_shim_has_the_address_families_a_listener_takes() -> None:
    # CPython's _TestListener loops over `connection.families` (#11)
    assert connection.families is multiprocessing.connection.families
    for family in connection.families:
        with connection.Listener(family=family) as listener:
            client = connection.Client(listener.address, family=family)
            with listener.accept() as served, client:
                client.send("ping")
                assert served.recv() == "ping"


def test_process_shim() -> None:
    from shoal import process

    assert process.BaseProcess is multiprocessing.process.BaseProcess
    for name in ("current_process", "parent_process", "active_children"):
        assert getattr(process, name) is getattr(multiprocessing.process, name)
    assert process.Process is mp.Process
    assert process.process_cpu_count is shoal.process_cpu_count


def test_context_shim() -> None:
    assert context.get_context is shoal.get_context
    assert isinstance(shoal.get_context("spawn"), context.Context)
    assert context.Context.__module__ == "shoal.context"


def test_every_multiprocessing_name_exists() -> None:
    """``import shoal as multiprocessing`` finds every name the standard library has."""
    missing = sorted(
        name
        for name in mp.__all__
        if not hasattr(shoal, name) and name not in NOT_PROVIDED and not pending(name)
    )
    assert not missing, f"multiprocessing names shoal lacks: {missing}"


def test_every_context_name_exists() -> None:
    stdlib = mp.get_context("spawn")
    ours = shoal.get_context("spawn")
    missing = sorted(
        name
        for name in dir(stdlib)
        if not name.startswith("_") and name not in NOT_PROVIDED and not hasattr(ours, name)
    )
    assert not missing, f"context names shoal's context lacks: {missing}"


# ---- processes under each start method --------------------------------------------------


def test_process_from_a_context(ctx: mp.context.BaseContext) -> None:
    sctx = shoal_context(ctx)
    out = sctx.Queue()
    p = sctx.Process(target=report_and_exit, args=(out, os.getpid(), 3), name="worker-7")
    assert isinstance(p, ctx.Process)
    p.start()
    try:
        name, pid_ok, same, is_base, classes, parent_ok, parent_name_ok = out.get(timeout=TIMEOUT)
    finally:
        join_all(p)
        out.close()
    assert p.exitcode == 3
    assert name == "worker-7"
    assert pid_ok and same and is_base
    assert PROCESS_CLASS[ctx.get_start_method()] in classes
    assert parent_ok and parent_name_ok


def test_module_level_process() -> None:
    """``shoal.Process`` is ``multiprocessing.Process``: the default start method."""
    out = shoal.SimpleQueue()
    p = shoal.Process(target=report_and_exit, args=(out, os.getpid(), 0))
    assert isinstance(p, mp.Process)
    p.start()
    try:
        result = out.get(timeout=TIMEOUT)
    finally:
        join_all(p)
        out.close()
    assert p.exitcode == 0
    assert result[0] == p.name
    assert shoal.current_process() is mp.current_process()
    assert shoal.current_process().name == "MainProcess"
    assert shoal.parent_process() is None


def test_active_children(ctx: mp.context.BaseContext) -> None:
    sctx = shoal_context(ctx)
    event = sctx.Event()
    p = sctx.Process(target=wait_for, args=(event,))
    p.start()
    try:
        assert p in shoal.active_children()
        assert p in sctx.active_children()
        assert p in mp.active_children()
    finally:
        event.set()
        join_all(p)
        event.close()
    assert p.exitcode == 0
    assert p not in shoal.active_children()


def test_pipe_in_process(ctx: mp.context.BaseContext) -> None:
    sctx = shoal_context(ctx)
    here, there = sctx.Pipe()
    p = sctx.Process(target=echo_upper, args=(there,))
    p.start()
    there.close()
    try:
        for word in ("spam", "eggs"):
            here.send(word)
            assert here.poll(TIMEOUT)
            assert here.recv() == word.upper()
        here.send(None)
    finally:
        join_all(p)
        here.close()
    assert p.exitcode == 0


def test_pipe_simplex() -> None:
    reader, writer = shoal.Pipe(duplex=False)
    try:
        writer.send({"a": 1})
        assert connection.wait([reader], timeout=TIMEOUT) == [reader]
        assert reader.recv() == {"a": 1}
        assert connection.wait([reader], timeout=0) == []
        with pytest.raises(OSError):  # the read end cannot send, as in the standard library
            reader.send(1)
    finally:
        reader.close()
        writer.close()


# ---- get_context ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", mp.get_all_start_methods())
def test_get_context(method: str) -> None:
    sctx = shoal.get_context(method)
    stdlib = mp.get_context(method)
    assert sctx is shoal.get_context(method)
    assert sctx.Process is stdlib.Process
    assert sctx.get_start_method() == method
    assert sctx.get_context() is sctx
    for other in mp.get_all_start_methods():
        assert sctx.get_context(other) is shoal.get_context(other)
    assert pickle.loads(pickle.dumps(sctx)) is sctx
    assert repr(method) in repr(sctx)
    assert sctx.ProcessError is mp.ProcessError
    assert sctx.TimeoutError is mp.TimeoutError
    assert sctx.cpu_count() == mp.cpu_count()
    assert sctx.process_cpu_count() == shoal.process_cpu_count()
    assert sctx.current_process() is mp.current_process()
    assert sctx.parent_process() is None
    assert sctx.get_logger() is mp.get_logger()
    with pytest.raises(ValueError, match="concrete context"):
        sctx.set_start_method("spawn")


def test_context_factories_make_shoal_objects() -> None:
    sctx = shoal.get_context("spawn")
    made = {
        shoal.Queue: sctx.Queue(4),
        shoal.SimpleQueue: sctx.SimpleQueue(),
        shoal.JoinableQueue: sctx.JoinableQueue(capacity=4096),
        shoal.Lock: sctx.Lock(),
        shoal.RLock: sctx.RLock(),
        shoal.Semaphore: sctx.Semaphore(2),
        shoal.BoundedSemaphore: sctx.BoundedSemaphore(2),
        shoal.Condition: sctx.Condition(),
        shoal.Event: sctx.Event(),
        shoal.Barrier: sctx.Barrier(2),
        sharedctypes.Synchronized: sctx.Value("i", 5),
        sharedctypes.SynchronizedArray: sctx.Array("d", [1.0, 2.0]),
        shoal.RawValue: sctx.RawValue("q", 7),
        shoal.RawArray: sctx.RawArray("i", 3),
    }
    try:
        for cls, obj in made.items():
            assert isinstance(obj, cls), (cls, obj)
        assert made[shoal.Queue].statistics().maxsize == 4
        assert made[sharedctypes.Synchronized].value == 5
        assert made[sharedctypes.SynchronizedArray][:] == [1.0, 2.0]
        assert made[shoal.RawValue].value == 7
        assert len(made[shoal.RawArray]) == 3
        raw = sctx.Value("i", 1, lock=False)
        assert isinstance(raw, ctypes.c_int)  # the bare ctypes object, as the stdlib's
        del raw
    finally:
        for obj in made.values():
            obj.close()
    a, b = sctx.Pipe()
    assert isinstance(a, multiprocessing.connection.Connection)
    a.close()
    b.close()


@pytest.mark.parametrize("bad", ["bogus", "", "Spawn", 5])
def test_bad_method_name(bad: Any) -> None:
    with pytest.raises(ValueError) as ours:
        shoal.get_context(bad)
    with pytest.raises(ValueError) as theirs:
        mp.get_context(bad)
    assert str(ours.value) == str(theirs.value)


def test_context_pool_executor_manager(ctx: mp.context.BaseContext) -> None:
    """ctx.Pool/Executor start workers with the context's method; ctx.Manager works."""
    sctx = shoal_context(ctx)
    expected = PROCESS_CLASS[ctx.get_start_method()]
    with sctx.Pool(1) as pool:
        assert expected in pool.apply(process_classes)
    with sctx.Executor(1) as executor:
        assert expected in executor.submit(process_classes).result(TIMEOUT)
    if hasattr(shoal, "Manager"):
        with sctx.Manager() as manager:
            d = manager.dict()
            d["a"] = 1
            assert d["a"] == 1


# ---- the default start method: global state, so in a fresh interpreter ---------------------

START_METHOD_SCRIPT = textwrap.dedent(
    """
    import sys
    M = __import__(sys.argv[1])

    def attempt(f, *args, **kwargs):
        try:
            print("ok", f(*args, **kwargs))
        except Exception as e:
            print(type(e).__name__, e)

    attempt(M.get_start_method, allow_none=True)
    attempt(M.set_start_method, "bogus")
    attempt(M.set_start_method, "spawn")
    attempt(M.get_start_method)
    attempt(lambda: M.get_context().get_start_method())
    attempt(M.set_start_method, "fork")
    attempt(M.set_start_method, "forkserver", force=True)
    attempt(M.get_start_method)
    attempt(lambda: M.get_context().get_start_method())
    attempt(M.set_start_method, None, force=True)
    attempt(M.get_start_method, allow_none=True)
    attempt(lambda: M.get_context().get_start_method())  # fixes the default again
    attempt(M.set_start_method, "spawn")
    attempt(M.get_context, "bogus")
    attempt(lambda: M.get_context("spawn").set_start_method("fork"))
    attempt(M.get_all_start_methods)
    attempt(lambda: type(M.Process()).__name__)
    """
)


def run_script(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_start_method_functions_match_the_standard_library() -> None:
    theirs = run_script(START_METHOD_SCRIPT, "multiprocessing")
    ours = run_script(START_METHOD_SCRIPT, "shoal")
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    lines = ours.stdout.splitlines()
    assert lines[1].startswith("ValueError")  # bogus
    assert lines[3] == "ok spawn"
    assert lines[5].startswith("RuntimeError")  # already set
    assert lines[7] == lines[8] == "ok forkserver"


def test_shoal_and_multiprocessing_share_one_default() -> None:
    code = textwrap.dedent(
        """
        import multiprocessing, shoal
        shoal.set_start_method("spawn")
        print(multiprocessing.get_start_method(), shoal.get_context().get_start_method())
        print(shoal.get_context().Process is multiprocessing.get_context().Process)
        """
    )
    result = run_script(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["spawn", "spawn", "True"]


# ---- process_cpu_count -----------------------------------------------------------------------


def test_process_cpu_count_is_sane() -> None:
    n = shoal.process_cpu_count()
    assert isinstance(n, int)
    assert 1 <= n <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API")
def test_process_cpu_count_follows_affinity(ctx: mp.context.BaseContext) -> None:
    """A child narrowed to one CPU counts one (in a child: affinity is inherited)."""
    cpu = min(os.sched_getaffinity(0))
    here, there = ctx.Pipe()
    p = ctx.Process(target=cpus_with_affinity, args=(cpu, there))
    p.start()
    there.close()
    try:
        assert here.poll(TIMEOUT)
        assert here.recv() == (1, 1)
    finally:
        join_all(p)
        here.close()
    assert p.exitcode == 0


def test_process_cpu_count_takes_the_smaller_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    affinity = _process._affinity_count()
    monkeypatch.setattr(_process, "_cgroup_cpu_quota", lambda: 1)
    assert shoal.process_cpu_count() == 1
    monkeypatch.setattr(_process, "_cgroup_cpu_quota", lambda: affinity + 10)
    assert shoal.process_cpu_count() == affinity
    monkeypatch.setattr(_process, "_cgroup_cpu_quota", lambda: None)
    assert shoal.process_cpu_count() == affinity
    monkeypatch.setattr(_process, "_affinity_count", lambda: 0)  # os.cpu_count() None
    assert shoal.process_cpu_count() == 1


# A fake /proc/self for the cgroup reader: its cgroup and mountinfo files point into tmp_path.


def fake_proc(tmp: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def files(base: Path, entries: dict[str, str]) -> None:
    for rel, text in entries.items():
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def v2_mount(mount_point: Path, root: str = "/") -> str:
    return f"41 31 0:38 {root} {mount_point} rw,relatime shared:1 - cgroup2 cgroup2 rw"


def v1_mount(mount_point: Path, root: str = "/") -> str:
    return f"32 31 0:29 {root} {mount_point} rw,relatime - cgroup cgroup rw,cpu,cpuacct"


@pytest.mark.parametrize(
    ("leaf", "parent", "expected"),
    [
        ("150000 100000", None, 2),  # 1.5 CPUs: rounded up
        ("200000 100000", None, 2),
        ("1000 100000", None, 1),  # a hundredth of a CPU: still one
        ("max 100000", None, None),
        ("max 100000", "300000 100000", 3),  # the parent's quota bounds the child
        ("400000 100000", "100000 100000", 1),
        ("garbage", None, None),
    ],
)
def test_cgroup_v2_quota(tmp_path: Path, leaf: str, parent: str | None, expected: Any) -> None:
    cg = tmp_path / "cgroup"
    entries = {"user.slice/app/cpu.max": leaf}
    if parent is not None:
        entries["user.slice/cpu.max"] = parent
    files(cg, entries)
    proc = fake_proc(tmp_path, "0::/user.slice/app\n", [v2_mount(cg)])
    assert _process._cgroup_cpu_quota(proc) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    cg = tmp_path / "cpu"
    # a container without a cgroup namespace: the mount root is its own group
    files(cg, {"cpu.cfs_quota_us": "250000\n", "cpu.cfs_period_us": "100000\n"})
    cgroup = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    proc = fake_proc(tmp_path, cgroup, [v1_mount(cg, root="/docker/abc")])
    assert _process._cgroup_cpu_quota(proc) == 3
    files(cg, {"cpu.cfs_quota_us": "-1\n"})
    assert _process._cgroup_cpu_quota(proc) is None


def test_cgroup_hybrid_takes_the_smallest(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "cpu", tmp_path / "unified"
    files(v1, {"a/cpu.cfs_quota_us": "300000", "a/cpu.cfs_period_us": "100000"})
    files(v2, {"a/cpu.max": "200000 100000"})
    proc = fake_proc(tmp_path, "1:cpu:/a\n0::/a\n", [v1_mount(v1), v2_mount(v2)])
    assert _process._cgroup_cpu_quota(proc) == 2


def test_cgroup_mount_point_with_a_space(tmp_path: Path) -> None:
    cg = tmp_path / "my cgroup"
    files(cg, {"cpu.max": "100000 100000"})
    mount = v2_mount(cg).replace(str(cg), str(cg).replace(" ", "\\040"))
    proc = fake_proc(tmp_path, "0::/\n", [mount])
    assert _process._cgroup_cpu_quota(proc) == 1


@pytest.mark.parametrize(
    ("cgroup", "mounts"),
    [
        (None, None),  # no /proc files at all (not Linux, or a restricted sandbox)
        ("not a cgroup line\n", []),
        ("0::/\n", ["truncated line - cgroup2"]),
        ("0::/\n", []),  # no cgroup file system mounted
        ("7:memory:/\n", []),  # no cpu controller
    ],
)
def test_cgroup_unreadable_means_no_quota(tmp_path: Path, cgroup: Any, mounts: Any) -> None:
    proc = tmp_path / "absent" if cgroup is None else fake_proc(tmp_path, cgroup, mounts)
    assert _process._cgroup_cpu_quota(proc) is None


def test_cgroup_of_this_machine_reads() -> None:
    """The real /proc/self: whatever it says, the reader does not fail."""
    quota = _process._cgroup_cpu_quota()
    assert quota is None or quota >= 1
