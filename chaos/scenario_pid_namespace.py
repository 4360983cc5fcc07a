"""shoal processes in two PID namespaces sharing ``/dev/shm``, SIGKILLed at random.

A container with ``docker run --ipc=host`` sees another container's segments but not
its processes.  Here namespace A's manager (a child of the scenario's process) makes
the objects: Locks and RLocks, each with an owner word beside it, a Queue, a
SharedDict, and a Semaphore(2) with a count of its holders, replaced every half second
through the dict.  A second PID namespace B (``unshare --pid --fork --mount-proc``,
sharing the scenario's private ``/dev/shm``) gets them pickled.  On each side workers
contend for the locks (each checks the owner word on taking a lock and before letting
go: a lock taken from a live owner shows), put and get on the queue, write and read
the dict, take the semaphore (checking its count), make objects of their own and check
that they still work and that their segments are still there, and reap; each side
SIGKILLs one of its workers every ~150 ms and starts another.  Then each side takes
the internal locks its dead workers may hold (it can always tell they are dead; the
other side only through their liveness files), and dead-owner probes follow: a lock
whose owner was SIGKILLed in one namespace is tried from the other.

Figures: ``lock_rounds``, ``ops``, ``kills`` (A/B), ``exclusion_broken`` (a lock or
the semaphore held by more than it allows, with the live owner's pid in
``first_exclusion_broken``), ``lost`` (a live process's object that stopped working or
whose segment went), ``wrong`` (a queue item or dict value that does not match),
``hangs`` (a worker in one call for more than 10 s, or a side that did not finish),
``crashes`` (a worker that died of anything but our SIGKILL), ``timeouts`` (lock waits
and queue puts that ran out: owners that died in the other namespace, which this side
could not judge), and the probes, ``dead_recovered`` and ``dead_timed_out``.
``leftovers``: segments left once every process of both namespaces is gone and each
reaped from fresh processes, beyond ``leftovers_mixed``: those every holder of which
died, some in each namespace (or that only such segments keep).  A dead owner or
holder of another namespace is told dead by its liveness file (docs/locks.md): with
those, ``dead_timed_out`` and ``leftovers_mixed`` must be 0 here (this scenario's
``/dev/shm`` has room: every process makes one).  A process that could make none
(``/dev/shm`` full, no inode left) counts as alive from the other namespace.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import queue as stdlib_queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HOLDS = (
    "exclusion_broken",
    "lost",
    "wrong",
    "hangs",
    "crashes",
    "leftovers",
    "dead_timed_out",
    "leftovers_mixed",
)

_FORK = mp.get_context("fork")
_ROOT = Path(__file__).resolve().parent.parent
_WORKERS = 3  # on each side
_LOCK_TIMEOUT = 2.0
_HANG_S = 10.0
_PROBE_TIMEOUT = 1.0
_SEM_VALUE = 2


# ---- what both sides' workers do ------------------------------------------------------


def _worker(side: str, wid: int, objects: Any, logdir: str, beats: Any, slot: int) -> None:
    import shoal
    from shoal import lowlevel

    warnings.simplefilter("ignore")  # OwnerDiedWarning: expected, counted below
    log = os.open(os.path.join(logdir, f"{side}{wid}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    me = (ord(side) << 40) | (os.getpid() << 8) | (wid & 0xFF) or 1

    def note(kind: str, text: str = "") -> None:
        os.write(log, f"{kind} {text}\n".encode()[:400])

    locks, flags, q, d = objects["locks"], objects["flags"], objects["queue"], objects["dict"]
    rng = random.Random(os.getpid())
    lowlevel.reap()  # a new worker sweeps, as a fresh process's first creation does
    own = [shoal.Lock(), shoal.Queue(capacity=4096), shoal.SharedDict({"mine": wid})]
    seq = ops = 0
    while True:
        beats[slot] = time.monotonic()
        what = rng.randrange(10)
        ops += 1
        if ops % 50 == 0:
            note("N", "50")
        if what < 4:  # a lock: the owner word must be free, or its owner dead
            i = rng.randrange(len(locks))
            lock = locks[i]
            if not lock.acquire(timeout=_LOCK_TIMEOUT):
                note("T", str(i))
                continue
            if isinstance(lock, shoal.RLock):
                lock.acquire()  # (and again: the recursion)
            owner = flags[i]
            if owner and not lock.owner_died:
                note("V", f"lock {i} taken while {owner >> 8 & 0xFFFFFFFF} of {chr(owner >> 40)} "
                          f"held it")  # fmt: skip
            flags[i] = me
            time.sleep(rng.uniform(0, 0.002))
            if flags[i] != me:
                note("V", f"lock {i}: {flags[i] >> 8 & 0xFFFFFFFF} wrote the owner word")
            flags[i] = 0
            lock.release()
            if isinstance(lock, shoal.RLock):
                lock.release()
            note("K")
        elif what < 6:
            try:
                q.put((side, wid, seq, b"x" * (seq % 100)), timeout=1)
            except stdlib_queue.Full:  # (its lock's owner died in the other namespace)
                note("T", "queue")
                continue
            seq += 1
            try:
                got = q.get(timeout=0.05)
            except Exception:  # (queue.Empty: the other side took it)
                got = None
            if got is not None and not (isinstance(got, tuple) and len(got) == 4
                                        and got[3] == b"x" * (got[2] % 100)):  # fmt: skip
                note("W", repr(got)[:100])
        elif what < 8:
            d[(side, wid)] = seq
            if d[(side, wid)] != seq:
                note("W", f"dict {(side, wid)}")
            d.incr("ops")
        elif what == 8:  # the semaphore of the moment: never more holders than units
            try:
                sem, holders = d["sem"]
            except KeyError:
                continue
            if sem.acquire(timeout=0.2):
                n = holders.add(1)
                if n > _SEM_VALUE:
                    note("V", f"semaphore: {n} holders of {_SEM_VALUE}")
                time.sleep(rng.uniform(0, 0.002))
                holders.add(-1)
                sem.release()
            del sem, holders
        else:  # this process's own objects still work, their segments still there
            try:
                assert own[0].acquire(timeout=1)
                own[0].release()
                own[1].put("ping")
                assert own[1].get(timeout=1) == "ping"
                assert own[2]["mine"] == wid
                gone = [
                    o._segment.name for o in own if not os.path.exists("/dev/shm" + o._segment.name)
                ]
                assert not gone, gone
            except Exception as exc:
                note("L", f"{type(exc).__name__}: {exc}")
            if rng.random() < 0.3:
                lowlevel.reap()


def _side(side: str, objects: Any, logdir: str, seconds: float, seed: int,
          stop: Any) -> dict[str, Any]:  # fmt: skip
    """Run this namespace's workers for ``seconds`` (or until ``stop()``), one SIGKILLed
    every ~150 ms and replaced; then kill them all."""
    rng = random.Random(seed)
    beats = _FORK.RawArray("d", 64)
    procs: list[Any] = [None] * _WORKERS
    ids = iter(range(1, 1 << 30))
    slots = iter(range(1 << 30))
    figures = {"kills": 0, "crashes": 0, "hangs": 0}
    first: dict[str, str] = {}

    def start(i: int) -> Any:
        slot = next(slots) % len(beats)
        beats[slot] = time.monotonic()
        p = _FORK.Process(target=_worker, args=(side, next(ids), objects, logdir, beats, slot))
        p.slot = slot  # type: ignore[attr-defined]
        p.start()
        return p

    def hung(p: Any) -> bool:
        return time.monotonic() - beats[p.slot] > _HANG_S

    for i in range(_WORKERS):
        procs[i] = start(i)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        time.sleep(0.15 * rng.uniform(0.5, 1.5))
        for i, p in enumerate(procs):
            if p.exitcode is not None:  # died by itself
                figures["crashes"] += 1
                first.setdefault("first_crash", f"{side} worker exited with {p.exitcode}")
                procs[i] = start(i)
            elif hung(p):
                figures["hangs"] += 1
                first.setdefault("first_hang", f"{side} worker in one call for {_HANG_S} s")
                p.kill()
                p.join(5)
                procs[i] = start(i)
        i = rng.randrange(_WORKERS)
        procs[i].kill()
        procs[i].join(10)
        figures["kills"] += 1
        procs[i] = start(i)
    for p in procs:
        if hung(p):
            figures["hangs"] += 1
        p.kill()
        p.join(10)
    return {**figures, **first}


# ---- namespace B ----------------------------------------------------------------------


class _Commands:
    """Lines from the scenario on stdin: polled without blocking, or waited for."""

    def __init__(self) -> None:
        self.buffer = b""

    def _read(self, timeout: float | None) -> bool:
        import select

        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:
            return False
        data = os.read(0, 4096)
        if not data:
            raise EOFError("the scenario went away")
        self.buffer += data
        return True

    def poll(self) -> str | None:
        while b"\n" not in self.buffer and self._read(0):
            pass
        return self.next() if b"\n" in self.buffer else None

    def next(self) -> str:
        while b"\n" not in self.buffer:
            self._read(None)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()


def _b_main() -> None:
    """pid 1 of namespace B: run B's side until told, answer the probes, reap, report."""
    from shoal import _core

    handles, logdir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(handles, "rb") as f:
        objects = pickle.load(f)
    print(json.dumps({"token": _core.self_token()}), flush=True)
    commands = _Commands()
    told: list[str] = []

    def stop() -> bool:
        line = commands.poll()
        if line:
            told.append(line)
        return bool(told)

    figures = _side("B", objects, logdir, 3600, seed, stop)
    _heal(objects)
    print(json.dumps({"stopped": True}), flush=True)
    while True:
        command = commands.next()
        if command.startswith("try "):  # a lock whose owner died in A
            result = _probe_acquire(objects["probes"][int(command[4:])])
            print(json.dumps({"result": result}), flush=True)
        elif command.startswith("hold "):  # a lock whose owner dies here
            _die_holding(objects["probes"][int(command[5:])])
            print(json.dumps({"held": True}), flush=True)
        elif command == "finish":
            break
    _close_all(objects)
    del objects
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", "--reap"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        figures["crashes"] += 1
        figures.setdefault("first_crash", f"doctor --reap in B exited with {done.returncode}")
    print(json.dumps(figures), flush=True)


def _heal(objects: Any) -> None:
    """Once this namespace's workers are all dead: take every shoal-internal lock one of
    them may have died holding (a holder table, an arena, the dict's writers', the
    ring's), so that it is recovered here, where its owner can always be told dead.  A
    process of the other namespace can only through the owner's liveness file
    (docs/locks.md), and would wait for it where there is none."""
    from shoal import _handle, _memory

    with _memory._state.lock:
        segments = list(_memory._state.attached.values())
    for segment in segments:
        with segment._table_locked():
            pass
        if segment.kind == _memory.KIND_ARENA:
            with _handle._Arena.of(segment)._locked():
                pass
    objects["dict"].incr("healed")
    objects["queue"].put("healed", timeout=5)
    objects["queue"].get(timeout=5)


def _probe_acquire(lock: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not lock.acquire(timeout=_PROBE_TIMEOUT):
            return "timed_out"
        died = lock.owner_died
        lock.release()
        return "recovered" if died else "not_dead"


def _hold_and_die(lock: Any, ready: Any) -> None:
    lock.acquire()
    ready.set()
    time.sleep(60)


def _die_holding(lock: Any) -> None:
    ready = _FORK.Event()
    p = _FORK.Process(target=_hold_and_die, args=(lock, ready))
    p.start()
    ready.wait(20)
    p.kill()
    p.join(10)


def _close_all(objects: Any) -> None:
    for value in objects.values():
        for obj in value if isinstance(value, list) else [value]:
            obj.close()


# ---- the scenario ---------------------------------------------------------------------


def _start_b(handles: str, logdir: str, seed: int) -> subprocess.Popen[str]:
    code = (f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
            "from chaos.scenario_pid_namespace import _b_main; _b_main()")  # fmt: skip
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, handles,
         logdir, str(seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _reply(b: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    import select

    assert b.stdout is not None
    ready, _, _ = select.select([b.stdout], [], [], timeout)
    line = b.stdout.readline() if ready else ""
    if not line:
        raise TimeoutError("namespace B did not answer")
    return json.loads(line)


def _namespace_tag(token: int) -> int:
    return ((token >> 24) & 0xFF) | (((token >> 54) & 0xFF) << 8)


def _read_logs(logdir: str) -> dict[str, Any]:
    got: dict[str, Any] = {"lock_rounds": 0, "ops": 0, "exclusion_broken": 0, "lost": 0,
                           "wrong": 0, "timeouts": 0}  # fmt: skip
    first: dict[str, str] = {}
    names = {"V": "exclusion_broken", "L": "lost", "W": "wrong"}
    for path in sorted(Path(logdir).iterdir()):
        for line in path.read_text(errors="replace").splitlines():
            kind, _, text = line.partition(" ")
            if kind == "N":
                got["ops"] += int(text)
            elif kind == "K":
                got["lock_rounds"] += 1
            elif kind == "T":
                got["timeouts"] += 1
            elif kind in names:
                got[names[kind]] += 1
                first.setdefault(f"first_{names[kind]}", f"{path.name}: {text}")
    return {**got, **first}


def _leftovers(b_tag: int) -> tuple[list[str], list[str]]:
    """(segments nobody should have left, segments only a dead process of each
    namespace holds (or that only such keep)), read with pread."""
    from shoal import _core
    from shoal._memory import _HEADER, _HOLDER_CAPACITY, _NAME_PATTERN, HEADER_SIZE, KIND_TRANSIT

    headers = {}
    for entry in os.listdir("/dev/shm"):
        if _NAME_PATTERN.fullmatch("/" + entry):
            try:
                with open("/dev/shm/" + entry, "rb") as f:
                    headers["/" + entry] = f.read(HEADER_SIZE)
            except OSError:
                pass
    mixed: set[str] = set()
    for name, head in headers.items():
        if len(head) < HEADER_SIZE or _HEADER.unpack_from(head)[4] == KIND_TRANSIT:
            continue
        holders = [h for h in struct.unpack_from(f"<{_HOLDER_CAPACITY}Q", head, 128) if h]
        in_b = [h for h in holders if _namespace_tag(h) == b_tag]  # (B is gone: dead)
        in_a = [h for h in holders if _namespace_tag(h) != b_tag]
        if in_b and in_a and not any(_core.token_alive(h) for h in in_a):
            mixed.add(name)
    grew = True
    while grew:  # kept only by those: a transit segment's parent, a keeper entry
        grew = False
        for name, head in headers.items():
            if name in mixed or len(head) < HEADER_SIZE:
                continue
            if _HEADER.unpack_from(head)[4] == KIND_TRANSIT:
                keepers = {head[128:192].rstrip(b"\0").decode("ascii", "replace")}
            else:
                keepers = {"/shoal-" + head[at + 8 : at + 28].decode("ascii", "replace")
                           for at in range(3072, 4096, 32)
                           if struct.unpack_from("<Q", head, at)[0]}  # fmt: skip
            if keepers and keepers <= mixed:
                mixed.add(name)
                grew = True
    left = sorted(set(headers) - mixed)
    return [_describe(name, headers[name], b_tag) for name in left], sorted(mixed)


def _describe(name: str, head: bytes, b_tag: int) -> str:
    """What a leftover segment's header says: kind, holders (namespace:pid), keepers."""
    from shoal import _core
    from shoal._memory import _HEADER, _HOLDER_CAPACITY, HEADER_SIZE, KIND_TRANSIT

    if len(head) < HEADER_SIZE:
        return f"{name} ({len(head)} bytes)"
    magic, _, _, _, kind, flags, *_ = _HEADER.unpack_from(head)
    what = f"{name} kind {kind} flags {flags} magic {magic != 0} in flight {head[56]}"
    if kind == KIND_TRANSIT:
        return what + f" parent {head[128:192].rstrip(bytes(1)).decode(errors='replace')}"
    holders = [h for h in struct.unpack_from(f"<{_HOLDER_CAPACITY}Q", head, 128) if h]
    shown = [("B" if _namespace_tag(h) == b_tag else "A") + f":{_core.token_pid(h)}"
             + ("" if _namespace_tag(h) == b_tag or not _core.token_alive(h) else " alive")
             for h in holders]  # fmt: skip
    keepers = [head[at + 8 : at + 28].decode(errors="replace") for at in range(3072, 4096, 32)
               if struct.unpack_from("<Q", head, at)[0]]  # fmt: skip
    return what + f" holders {shown} keepers {keepers}"


def _objects() -> dict[str, Any]:
    import shoal

    locks = [shoal.Lock(), shoal.Lock(), shoal.Lock(), shoal.RLock(), shoal.RLock()]
    return {
        "locks": locks,
        "flags": shoal.RawArray("q", len(locks)),
        "queue": shoal.Queue(),
        "dict": shoal.SharedDict(),
        "probes": [shoal.Lock(), shoal.RLock(), shoal.Lock(), shoal.RLock()],
    }


def _new_semaphore(d: Any) -> None:
    import shoal

    sem, holders = shoal.Semaphore(_SEM_VALUE), shoal.Value("q", 0)
    d["sem"] = (sem, holders)
    sem.close()
    holders.close()


def _a_main(conn: Any, seconds: float, work: str, seed: int) -> None:
    """Namespace A's manager (a child of the scenario's process, so that once it exits
    nothing of A holds anything): make the objects, start B, run A's side, probe,
    close; send back what it saw."""
    rng = random.Random(seed)
    logdir = os.path.join(work, "logs")
    objects = _objects()
    _new_semaphore(objects["dict"])
    handles = os.path.join(work, "handles")
    with open(handles, "wb") as f:
        pickle.dump(objects, f)
    out: dict[str, Any] = {"hangs": 0, "crashes": 0, "b_tag": -1}
    a_figures: dict[str, Any] = {"kills": 0, "crashes": 0, "hangs": 0}
    b_figures: dict[str, Any] = {}
    probes = {"recovered": 0, "timed_out": 0, "not_dead": 0}
    b = _start_b(handles, logdir, rng.getrandbits(32))
    conn.send(b.pid)

    def tell(line: str, timeout: float = 60) -> dict[str, Any]:
        assert b.stdin is not None
        b.stdin.write(line + "\n")
        b.stdin.flush()
        return _reply(b, timeout)

    try:
        out["b_tag"] = _namespace_tag(_reply(b)["token"])
        if out["b_tag"] == 0:
            raise RuntimeError("namespace B has the initial namespace's tag")
        next_sem = [time.monotonic() + 0.5]
        shared_dict = objects["dict"]

        def rotate() -> bool:  # (the semaphore of the moment, replaced meanwhile)
            if time.monotonic() >= next_sem[0]:
                _new_semaphore(shared_dict)
                next_sem[0] = time.monotonic() + 0.5
            return False

        a_figures = _side("A", objects, logdir, seconds, rng.getrandbits(32), rotate)
        _heal(objects)  # (B's workers live on meanwhile, and heal their own dead)
        tell("stop")
        # dead owners across the namespaces: killed in one, tried from the other
        for i in (0, 1):
            _die_holding(objects["probes"][i])
            probes[tell(f"try {i}")["result"]] += 1
        for i in (2, 3):
            tell(f"hold {i}")
            probes[_probe_acquire(objects["probes"][i])] += 1
        # everything closed and reaped from fresh processes: A, then B (then A again,
        # once this process is gone)
        _close_all(objects)
        objects.clear()
        _doctor_reap(out)
        b_figures = tell("finish", 180)
        b.wait(60)
    except (TimeoutError, EOFError, OSError, ValueError, RuntimeError) as exc:
        out["hangs"] += 1
        out["first_hang"] = f"namespace B: {type(exc).__name__}: {exc}"
    finally:
        if b.poll() is None:
            b.kill()
            b.wait(10)
    conn.send({**out, "a": a_figures, "b": b_figures, "probes": probes})


def run(seconds: float) -> dict[str, Any]:
    # (this process uses no shoal object: every one is made and held by A's manager,
    # which is gone when the leftovers are counted)
    seed = int.from_bytes(os.urandom(4), "little")
    work = tempfile.mkdtemp(prefix="shoal-chaos-pidns-")
    logdir = os.path.join(work, "logs")
    os.mkdir(logdir)
    here, there = _FORK.Pipe()
    manager = _FORK.Process(target=_a_main, args=(there, seconds, work, seed))
    manager.start()
    b_pid = here.recv() if here.poll(60) else None
    got: dict[str, Any] = {}
    if here.poll(seconds * 4 + 240):
        got = here.recv()
    manager.join(30)
    if manager.exitcode is None or not got:
        for pid in (manager.pid, b_pid):
            if pid:
                try:
                    os.kill(pid, 9)  # (ours: A's manager, and the unshare it started)
                except ProcessLookupError:
                    pass
        manager.join(10)
    figures: dict[str, Any] = {"seconds": seconds}
    if not got:
        got = {"hangs": 1, "first_hang": "namespace A's manager did not finish"}
    hangs, crashes = got.get("hangs", 0), got.get("crashes", 0)
    if manager.exitcode not in (0, None, -9):
        crashes += 1
        got.setdefault("first_crash", f"namespace A's manager exited with {manager.exitcode}")
    a_figures = got.get("a", {"kills": 0, "crashes": 0, "hangs": 0})
    b_figures = got.get("b", {})
    probes = got.get("probes", {"recovered": 0, "timed_out": 0, "not_dead": 0})
    final: dict[str, Any] = {"crashes": 0}
    _doctor_reap(final)  # from a fresh process, once every process of A and B is gone
    crashes += final["crashes"]
    got.update({k: v for k, v in final.items() if k.startswith("first_")})
    logs = _read_logs(logdir)
    left, mixed = _leftovers(got.get("b_tag", -1))
    shutil.rmtree(work, ignore_errors=True)
    figures.update(
        lock_rounds=logs["lock_rounds"],
        ops=logs["ops"],
        kills=f"{a_figures['kills']}/{b_figures.get('kills', 0)}",
        exclusion_broken=logs["exclusion_broken"],
        lost=logs["lost"],
        wrong=logs["wrong"],
        hangs=hangs + a_figures["hangs"] + b_figures.get("hangs", 0),
        crashes=crashes + a_figures["crashes"] + b_figures.get("crashes", 0),
        timeouts=logs["timeouts"],
        dead_recovered=probes["recovered"],
        dead_timed_out=probes["timed_out"],
        leftovers=len(left),
        leftovers_mixed=len(mixed),
    )
    if probes["not_dead"]:
        figures["probes_not_dead"] = probes["not_dead"]  # (a probe that saw no death)
    for source in (got, logs, a_figures, b_figures):
        figures.update({k: v for k, v in source.items() if k.startswith("first_")})
    if left:
        figures["first_leftover"] = left[0]
    return figures


def _doctor_reap(figures: dict[str, Any]) -> None:
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", "--reap"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        figures["crashes"] = figures.get("crashes", 0) + 1
        figures.setdefault("first_crash", f"doctor --reap exited with {done.returncode}")
