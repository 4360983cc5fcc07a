"""Importing shoal has no side effects (STYLE.md): no thread, no process, no shared
memory, no signal handler.

Each check runs in a fresh interpreter, since this one has long since imported shoal
and used it.  Two kinds of evidence: an audit hook that sees thread starts, forks,
spawns and mmaps as they happen, and the process's state before and after the
import (threads in /proc, caught and ignored signal masks, Python-level handlers,
/dev/shm segments this process created).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    r"""
    import json, os, signal, struct, sys, threading

    events = []
    WATCHED = ("_thread.start_new_thread", "os.fork", "os.forkpty", "os.posix_spawn",
               "os.exec", "os.spawn", "subprocess.Popen", "mmap.__new__", "socket.bind",
               "socket.connect")

    def hook(event, args):
        if event.startswith(WATCHED):
            events.append(event)

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return line.split()[1]

    def my_segments():
        mine = []
        for name in os.listdir("/dev/shm"):
            if not name.startswith("shoal-"):
                continue
            try:
                with open("/dev/shm/" + name, "rb") as f:
                    header = f.read(40)
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if len(header) == 40 and struct.unpack_from("<Q", header, 32)[0] >> 32 == os.getpid():
                mine.append(name)
        return sorted(mine)

    def children():
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                found += f.read().split()
        return found

    def snapshot():
        return {
            "threads (Python)": threading.active_count(),
            "threads (OS)": len(os.listdir("/proc/self/task")),
            "children": children(),
            "signals caught": status("SigCgt"),
            "signals ignored": status("SigIgn"),
            "signals blocked": status("SigBlk"),
            "handlers": {
                int(s): repr(signal.getsignal(s))
                for s in signal.valid_signals()
                if s not in (signal.SIGKILL, signal.SIGSTOP)
            },
            "segments": my_segments(),
        }

    before = snapshot()
    sys.addaudithook(hook)
    for name in sys.argv[1:]:
        __import__(name)
    after = snapshot()
    import shoal.lowlevel
    after["attached"] = sorted(shoal.lowlevel.attached_names())
    print(json.dumps({"before": before, "after": after, "events": events}))
    """
)


def probe(*modules: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "modules",
    [
        ("shoal",),
        ("shoal", "shoal.lowlevel", "shoal.synchronize"),
        ("shoal.__main__",),
    ],
    ids=["shoal", "shoal+shims", "shoal.__main__"],
)
def test_import_has_no_side_effects(modules: tuple[str, ...]) -> None:
    report = probe(*modules)
    before, after = report["before"], report["after"]
    assert report["events"] == [], f"importing {modules} did: {report['events']}"
    assert after.pop("attached") == [], "importing shoal attached shared memory"
    for key in before:
        assert after[key] == before[key], f"importing {modules} changed {key}"


def test_probe_sees_side_effects() -> None:
    """The probe is not blind: a module that starts a thread and maps memory is caught."""
    report = probe("shoal", "concurrent.futures.thread", "multiprocessing.heap")
    assert report["events"] == []  # importing those does nothing either...
    # ...but using shoal does: creating a Lock maps an arena segment
    code = PROBE.replace(
        "after = snapshot()", "import shoal; lock = shoal.Lock(); after = snapshot()"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, "shoal"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "mmap.__new__" in report["events"]
    assert report["after"]["segments"], "the probe did not see the segment shoal created"
    assert report["after"]["attached"]


# what the first use of a primitive must not import: dataclasses (with inspect and ast)
# and concurrent.futures.process (with multiprocessing.connection, tempfile...) cost
# about 20 ms of every program's start before #11 made them lazy
HEAVY = ("dataclasses", "inspect", "ast", "concurrent.futures.process", "tempfile")


@pytest.mark.parametrize(
    "use",
    ["shoal.Lock()", "shoal.Queue()", "shoal.SharedDict()", "shoal.Value('i', 1)",
     "shoal.Lock().statistics()"],
)  # fmt: skip
def test_first_use_of_a_primitive_leaves_the_heavy_modules_alone(use: str) -> None:
    def heavy_after(statement: str) -> set[str]:
        code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
        out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.split())

    # (what the interpreter's own modules bring already does not count: 3.14's typing
    # imports ast, for one)
    baseline = heavy_after("import typing, multiprocessing, concurrent.futures")
    extra = heavy_after(f"import shoal; {use}") - baseline
    assert not extra, f"{use} imported {sorted(extra)}"


def test_the_pool_errors_made_on_first_use_are_the_standard_library_s_too() -> None:
    code = (
        "import shoal, pickle, concurrent.futures.process as p, multiprocessing as mp\n"
        "e = pickle.loads(pickle.dumps(shoal.WorkerDiedError('w', pid=1, exitcode=-9)))\n"
        "assert type(e) is shoal.WorkerDiedError and e.signal.name == 'SIGKILL', e\n"
        "W = shoal.WorkerDiedError\n"
        "assert issubclass(W, p.BrokenProcessPool) and issubclass(W, mp.ProcessError)\n"
        "assert issubclass(shoal.BrokenPoolError, p.BrokenProcessPool)\n"
        "from shoal._errors import WorkerDiedError\n"
        "assert WorkerDiedError is shoal.WorkerDiedError\n"
        "print(shoal.WorkerDiedError.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "shoal"
