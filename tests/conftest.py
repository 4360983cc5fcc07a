"""Shared fixtures: start methods, hang guards and the leak check every test gets.

Three hang guards bound every test: explicit ``timeout=`` on blocking calls in the
tests themselves, pytest-timeout per test (pyproject.toml), and faulthandler dumping
every thread's stack from C when that timeout's SIGALRM arrives (stacks_on_timeout).
"""

from __future__ import annotations

import faulthandler
import gc
import multiprocessing as mp
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shoal
from shoal import _core, _memory, lowlevel
from shoal.testing import START_METHODS, leaked_segments
from shoal.testing import segments as shoal_segments

__all__ = ["START_METHODS", "in_thread", "join_all", "shoal_segments", "wait_until"]

# ---- the sanitized run's subset (make test-sanitize: --sanitize-subset) ----------------
# The Python suite against an ASan+UBSan build of the C core is worth its time only
# where the core runs.  --sanitize-subset keeps every test that calls into shoal._core,
# once: it leaves out (1) the tests listed in tools/sanitize/not-core.txt, which call
# nothing of shoal._core in any of their processes (measured by
# tools/sanitize/core_calls.py: the export, layering, typing and import checks, the
# standard library's own objects beside shoal's, arguments refused before any memory
# is made), and (2) the spawn and forkserver variants of a test whose fork variant
# runs: a child calls the same C code with the same arguments however it was started
# (what differs, the start method's handover of handles, is Python's, which `make
# test` runs under every method).  A test not in the list runs: a new one is
# sanitized until measured otherwise.
NOT_CORE_LIST = os.path.join(os.path.dirname(__file__), "..", "tools", "sanitize", "not-core.txt")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sanitize-subset",
        action="store_true",
        help="only the tests that reach shoal._core, once (make test-sanitize; tests/conftest.py)",
    )
    parser.addoption(
        "--start-methods",
        default=None,
        help="comma-separated start methods: a test's variants under the others run only "
        "where it has none under these (CI's run on a second Python; tests/conftest.py)",
    )


_METHOD_TOKENS = ("fork", "spawn", "forkserver")


def under_methods(items: list[pytest.Item], methods: list[str]) -> list[pytest.Item]:
    """Each test's start-method variants under ``methods`` only, where it has one: a
    variant under another method goes when the same test has one under ``methods``."""
    ids = {item.nodeid for item in items}

    def variant(nodeid: str, method: str) -> str | None:
        base, bracket, params = nodeid.partition("[")
        tokens = params.rstrip("]").split("-") if bracket else []
        if not any(t in _METHOD_TOKENS for t in tokens):
            return None
        tokens = [method if t in _METHOD_TOKENS else t for t in tokens]
        return f"{base}[{'-'.join(tokens)}]"

    def keep(nodeid: str) -> bool:
        own = variant(nodeid, "fork")
        if own is None:
            return True  # no start-method variants
        if any(variant(nodeid, m) == nodeid for m in methods):
            return True
        return not any(variant(nodeid, m) in ids for m in methods)

    return [item for item in items if keep(item.nodeid)]


def sanitize_subset(items: list[pytest.Item], not_core: set[str]) -> list[pytest.Item]:
    """The items --sanitize-subset keeps (see above)."""
    return under_methods([item for item in items if item.nodeid not in not_core], ["fork"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = items
    if config.getoption("--sanitize-subset"):
        with open(NOT_CORE_LIST) as f:
            not_core = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        kept = sanitize_subset(kept, not_core)
    methods = config.getoption("--start-methods")
    if methods:
        kept = under_methods(kept, [m.strip() for m in methods.split(",") if m.strip()])
    if kept is items:
        return
    chosen = set(map(id, kept))
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in chosen])
    items[:] = kept


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> mp.context.BaseContext:
    """A multiprocessing context for each start method; the test runs once per method."""
    return mp.get_context(request.param)


def dead_liveness_files() -> set[str]:
    """Liveness files of processes that died, left for a sweep to remove."""
    return {name for name, state in _memory.liveness_files().items() if state == "dead"}


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` runs out; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def join_all(*procs: Any, timeout: float = 30.0) -> None:
    """Join every process; kill any still running after ``timeout`` and fail the test."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    if alive:
        pytest.fail(f"children still running after {timeout} s: {alive}")


def in_thread(fn: Callable[[], Any], start: bool = True) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # the test inspects it
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    if start:
        t.start()
    return t, out


def _open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each names."""
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor among them)
    return fds


@pytest.fixture(autouse=True)
def stacks_on_timeout() -> Iterator[None]:
    """When pytest-timeout's SIGALRM comes, faulthandler dumps every thread's stack from
    its C handler first (then pytest-timeout's runs): it shows where a test hangs even
    in C code that never returns to Python.  (Not faulthandler_timeout: its watchdog is
    a thread, so every fork in every test forked a multi-threaded process, which warns
    from 3.12 and is an error under filterwarnings = error from 3.15.)"""
    handler = signal.getsignal(signal.SIGALRM)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):  # pytest-timeout not in use
        yield
        return
    faulthandler.register(signal.SIGALRM, all_threads=True, chain=True)
    try:
        yield
    finally:
        faulthandler.unregister(signal.SIGALRM)


# ---- the Ray backend's cluster (#13) ------------------------------------------------------
# One local Ray cluster per test session, started by the first test that asks for it:
# bound to loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported),
# always a fresh one (address="local": never a cluster this run did not start), in its
# own short temporary directory (unix socket paths), with a small object store; it is
# stopped by ray.shutdown(), never `ray stop` (which kills by name).  Where ray cannot
# be imported (no wheel for this Python) the tests that need it skip, saying why.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# the threads the Ray driver started with the session's cluster (its log and error
# listeners …): they last until the session ends, whichever test started the cluster
_ray_session_threads: set[threading.Thread] = set()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """Start the session's local Ray cluster; yield its address (for other drivers)."""
    import shutil
    import tempfile

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as error:
        pytest.skip(f"Ray is not installed for this Python (shoal[ray]: {error})")
    if ray.is_initialized():
        pytest.fail("a Ray cluster is connected already: the tests start their own")
    temp = tempfile.mkdtemp(prefix="shoal-ray-", dir="/tmp")
    threads_before = set(threading.enumerate())
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 << 20,
        logging_level="warning",
        _temp_dir=temp,
        # the workers import the tests' helper modules (pool_tasks …) by name
        runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}},
    )
    try:
        # the driver's connections and threads, made once here rather than inside
        # the first test's leak check
        def pid() -> int:
            return os.getpid()

        ray.get([ray.remote(pid).remote() for _ in range(4)], timeout=60)
        _ray_session_threads.update(set(threading.enumerate()) - threads_before)
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# ---- one test, two contexts (#13) ----------------------------------------------------------
# anyio's backend fixture is the model: a test that takes ``context`` runs once on the
# local context (fork: the start-method matrix is each file's own ``ctx``) and once on
# the Ray context (the session's cluster); each case is reported on its own.  A test
# that does not take it is local only, and its file says why.  Session-scoped so that
# the cluster starts before the test's leak check takes its "before" (the driver's
# threads are the cluster's, not the test's), and so that the Ray cases run together.
CONTEXTS = ["local", "ray"]


@pytest.fixture(scope="session", params=CONTEXTS)
def context(request: pytest.FixtureRequest) -> Any:
    """The context a test's objects come from: shoal's own (fork), or the cluster's."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        return shoal.get_context("ray")
    return shoal.get_context("fork")


def on_ray(context: Any) -> bool:
    """Whether ``context`` (the ``context`` fixture's value) is the Ray one."""
    return type(context).__name__ == "RayContext"


def _ledgers_of_others_alive() -> set[str]:
    """The ledgers (each process's record of the shoal references it holds) of the
    live processes other than this one."""
    return {
        report.name
        for report in _memory.segment_report()
        if report.kind == "ledger"
        and report.creator_pid != os.getpid()
        and os.path.exists(f"/proc/{report.creator_pid}")
    }


def _uses_ray(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs on the Ray cluster (asked for it, or a parameter is "ray")."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return "ray_cluster" in request.fixturenames or "ray" in params.values()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """After each test: no child process left, no new shoal segment that this process
    does not still hold (children that exit must have released theirs), no thread
    the test started still running, no file descriptor it opened still open."""
    before = shoal_segments()
    attached_before = lowlevel.attached_names()
    threads_before = set(threading.enumerate())
    fds_before = _open_fds() if os.path.isdir("/proc/self/fd") else None
    yield
    children = mp.active_children()
    for child in children:
        child.kill()
        child.join(5)
    assert not children, f"test left child processes running: {children}"

    def threads_left() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in threads_before and t not in _ray_session_threads and t.is_alive()
        ]

    # (a Ray test: the Ray driver keeps its own connections to the workers it leased)
    check_fds = fds_before is not None and not _uses_ray(request)
    if check_fds:
        # the standard library's forkserver and resource tracker start once per
        # process, on first use, and stay
        forkserver = getattr(multiprocessing.forkserver._forkserver, "_forkserver_alive_fd", None)
        tracker = getattr(multiprocessing.resource_tracker._resource_tracker, "_fd", None)
        lasting = {fd for fd in (forkserver, tracker) if fd is not None}

    def fds_left() -> dict[int, str]:
        if not check_fds:
            return {}
        # a mapping keeps a descriptor of its own (mmap dups it): those of the
        # segments this process still holds stay, as does the standard library's
        # heap (multiprocessing.heap, /dev/shm/pym-*)
        held = {"/dev/shm" + name for name in lowlevel.attached_names()}
        # and this process's liveness file, held open (and locked) for its life
        held.add("/dev/shm/" + _core.liveness_name(_core.self_token()))
        return {
            fd: target
            for fd, target in _open_fds().items()
            if fd not in lasting
            and fds_before.get(fd) != target
            and target not in held
            and not target.startswith("/dev/shm/pym-")
        }

    # What an unreachable object still holds (a segment, a thread, a descriptor) goes
    # when it is collected: a full collection, but only when something is left or this
    # process holds other segments than before (the next test starts from what this
    # one found), since it takes ~40 ms here (numpy, hypothesis, Ray loaded): a minute
    # and a half of a whole run, for nothing, when run after every test
    def leaked() -> set[str]:
        found = leaked_segments(before)
        if found and _uses_ray(request):
            # a Ray worker lives on from test to test: the ledger it made when it
            # first took a shoal object (a Lock on Ray is one) goes when it exits
            found -= _ledgers_of_others_alive()
        return found

    if lowlevel.attached_names() != attached_before or leaked() or threads_left() or fds_left():
        gc.collect()

    wait_until(lambda: not leaked(), timeout=5.0)
    left = leaked()
    assert not left, f"test leaked shared-memory segments: {sorted(left)}"

    # A live process's liveness file (this one's among them) is no leak; a dead one's is
    # until a sweep removes it, which the next shoal process does: so does this check
    # (children the test killed leave theirs).  One the sweep leaves behind is a leak.
    # (Swept again while waiting: on a shared machine another run's process may die
    # between a sweep and the look.)
    def dead_left() -> set[str]:
        _memory.reap_liveness()
        return dead_liveness_files()

    wait_until(lambda: not dead_left(), timeout=2.0, interval=0.1)
    assert not dead_left(), f"dead processes' liveness files survived a sweep: {dead_left()}"

    wait_until(lambda: not threads_left(), timeout=5.0)
    assert not threads_left(), f"test left threads running: {threads_left()}"
    wait_until(lambda: not fds_left(), timeout=2.0)
    assert not fds_left(), f"test left file descriptors open: {fds_left()}"
