"""A fuzz of shared memory under live use: rings, dict tables, arenas, segment headers.

Round after round, a fresh owner process makes a ``Queue``, a ``SharedDict``, and
``Lock``\\ s, ``Event``\\ s and a ``Semaphore`` (in one arena), and fresh user processes
attach them from pickled handles and keep calling them — every call with a timeout —
while a scribbler process writes random bytes and words at random offsets of their
segments' mappings, a few per round:

- the ring's header words and its records (``ring``);
- the dict's root (generation, table sizes and names) and its table: header words,
  slots and heap entries (``dict``);
- the arena's geometry words and bitmap, and each object's block header (count,
  serial, blocks, type tag) and payload (``arena``);
- every segment's header: its fixed fields, holder table and keeper table
  (``header``).

A last user attaches everything from fresh pickles once the damage is done, and the
owner closes it all at the end of the round.  A corrupted structure is garbage
afterwards: each round's processes are new, and its segments are removed (this
scenario runs in a private ``/dev/shm``) once they are gone.

Each call must return, or raise a clear exception: a documented shoal error
(``LayoutError``, ``SegmentNotFoundError``, ... by type in ``errors``), or what the call
raises anyway (``queue.Empty``/``Full``, ``KeyError``); never a SIGSEGV or SIGBUS, a hang
or an endless loop.  Left alone, as in tests/test_ring_corruption.py: the words of
process-shared mutexes (a holder table's, an arena's, the dict's writers', the ring's
two, a Lock's owner word): a stray write there makes callers wait for a holder that
is not there, bounded by their timeouts, and reads no offset.  Items and values are
all of the C codec (no pickle); a record or value that corruption turned into a
"pickle" is unpickled by a hook that reports what pickle raises on garbage as
``PickleGarbage``: what pickle makes of garbage is not shoal's business.

Figures: ``rounds``, ``writes`` (corrupting writes made), ``calls``, ``errors_raised``
(calls that raised a documented error), ``errors`` (the commonest kinds), ``wrong``
(calls that returned what was never stored: a corruption no check can see),
``crashes`` (a process of a round killed by a signal nobody sent it; what the
scribbler wrote before is in ``first_crash``), ``hangs`` (a process still running 10 s
after its round should have ended, SIGKILLed; its call in ``first_hang``) and
``unclear`` (calls or finalizers that raised anything else, in ``first_unclear``).
With ``CHAOS_GDB=1`` in the environment the C stack of the first hung process is
printed too (gdb).
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import pickle
import queue as stdlib_queue
import random
import re
import signal
import sys
import time
import traceback
from typing import Any

HOLDS = ("crashes", "hangs", "unclear")

_FORK = mp.get_context("fork")
_ACTIVE_S = 0.25  # how long users run each round
_GRACE_S = 10.0  # past the round's end: a process still running is hung
_RING_CAPACITY = 4096
_BIG = 3000  # > half the ring: travels in a transit segment
_KEYS = 24
_OP_SLOT = 96  # bytes of the shared array naming each process's current call

# ring header words worth breaking (offset, size), relative to the ring
# (native/include/shoal_ring.h): its two mutexes (32..72, 256..296) are left alone; the
# waiters' lists (384..600) hold tokens, judged when they are pruned
_RING_WORDS = [(0, 8), (8, 8), (8, 4), (16, 8), (24, 4), (28, 4), (128, 8), (128, 4),
               (132, 4), (136, 4), (140, 4), (192, 8), (192, 4), (196, 4), (200, 4),
               (204, 4), (320, 8), (328, 4), (332, 4), (384, 8), (392, 8), (448, 8),
               (456, 8), (464, 8), (520, 8), (528, 8), (592, 8)]  # fmt: skip
# the dict table's header words (native/include/shoal_dict.h), relative to the table
_DICT_WORDS = [(0, 8), (8, 4), (16, 8), (24, 8), (32, 8), (40, 8), (48, 8), (56, 8),
               (64, 8), (72, 8), (80, 8), (88, 8)]  # fmt: skip
_DICT_WORDS += [(128 + 8 * c, 8) for c in range(12)]
# the segment header's fixed fields (shoal._memory), its mutex (64..104) left alone
_HEADER_WORDS = [(0, 8), (8, 4), (12, 4), (16, 8), (24, 4), (28, 4), (32, 8), (40, 8),
                 (48, 4), (52, 4), (56, 8), (104, 8), (112, 8)]  # fmt: skip


class PickleGarbage(Exception):
    """What pickle raised on bytes that corruption turned into a "pickle"."""


# ---- the processes of one round -------------------------------------------------------------


def _owner(conn: Any, users: int) -> None:
    """Make the round's objects, hand out pickles of them and a map of their memory,
    hold them until told, then close them (reporting what that raised)."""
    import shoal
    from shoal import _core
    from shoal._handle import _ARENA_BITMAP, _ARENA_GEOMETRY, OBJECT_HEADER_SIZE
    from shoal._memory import HEADER_SIZE

    outcomes = _Outcomes()
    _fuzz_hooks(outcomes)
    _stack_on_sigusr1()
    q = shoal.Queue(capacity=_RING_CAPACITY)
    d = shoal.SharedDict({k: k * 3 for k in range(_KEYS // 2)})
    locks = [shoal.Lock() for _ in range(2)]
    events = [shoal.Event() for _ in range(2)]
    sem = shoal.Semaphore(2)
    q.put_many([1, "two", b"three"])
    objects = (q, d, locks, events, sem)
    arena = locks[0]._segment
    root = d._payload_offset
    regions: list[tuple[str, str, int, int]] = []  # (target, segment, offset, size)
    # (word lists are expanded here, where the offsets are known)
    for offset, size in _RING_WORDS:
        regions.append(("ring", q._segment.name, q._payload_offset + offset, size))
    data = q._payload_offset + _core.RING_HEADER_SIZE
    regions.append(("ring-data", q._segment.name, data, q._ring_bytes))
    regions.append(("dict-root", d._segment.name, root + 40, 256 - 40))
    regions.append(("dict-table", d._segment.name, root, 0))  # resolved by the scribbler
    regions.append(("arena", arena.name, _ARENA_GEOMETRY, 24))
    regions.append(("arena-bitmap", arena.name, _ARENA_BITMAP, 8))
    for obj in (q, *locks, *events, sem):
        regions.append(("block", obj._segment.name, obj._header_offset, OBJECT_HEADER_SIZE))
    for lock in locks:  # past the owner word
        regions.append(("payload", arena.name, lock._payload_offset + 8, _core.LOCK_SIZE - 8))
    for obj in (*events, sem):
        regions.append(("payload", arena.name, obj._payload_offset, obj._PAYLOAD_SIZE))
    for name in {arena.name, q._segment.name, d._segment.name}:
        for offset, size in _HEADER_WORDS:
            regions.append(("header", name, offset, size))
        regions.append(("holders", name, 128, 8 * 8))
        regions.append(("keepers", name, 3072, HEADER_SIZE - 3072))
    conn.send(([pickle.dumps(objects) for _ in range(users)], regions))
    conn.recv()  # the round is over
    for obj in (q, d, *locks, *events, sem):
        outcomes.call("owner", "close", obj.close)
    conn.send(outcomes.report())


def _user(kind: str, handles: bytes, deadline: float, conn: Any, ops: Any, slot: int,
          seed: int) -> None:  # fmt: skip
    outcomes = _Outcomes(ops, slot)
    _fuzz_hooks(outcomes)
    _stack_on_sigusr1()
    rng = random.Random(seed)
    objects = outcomes.call(kind, "attach", lambda: pickle.loads(handles))
    if objects is not None:
        calls = _calls(kind, objects, rng, outcomes)
        while time.monotonic() < deadline:
            name, fn = rng.choice(calls)
            outcomes.call(kind, name, fn)
        if kind == "late":
            for name, fn in calls:  # each call once, on what the round left
                outcomes.call(kind, name, fn)
        del calls
        q, d, locks, events, sem = objects
        for obj in (q, d, *locks, *events, sem):
            outcomes.call(kind, "close", obj.close)
        del objects, q, d, locks, events, sem, obj
    outcomes.mark("exit")
    conn.send(outcomes.report())


def _stack_on_sigusr1() -> None:
    """SIGUSR1 writes this process's Python stack to a file the scenario reads (hangs)."""
    import faulthandler

    stacks = open(f"/tmp/shoal-chaos-stack-{os.getpid()}", "w")  # noqa: SIM115 (for ever)
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=False)


def _stack_of(pid: int) -> str:
    """The Python stack of a hung process (innermost first), from _stack_on_sigusr1."""
    try:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.5)
        with open(f"/tmp/shoal-chaos-stack-{pid}") as f:
            frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', f.read())
    except OSError:
        return "?"
    return " < ".join(f"{fn}@{os.path.basename(path)}:{line}" for path, line, fn in frames[:5])


def _scribbler(regions: list[tuple[str, str, int, int]], at: list[float], conn: Any,
               seed: int) -> None:  # fmt: skip
    """Write garbage into the round's segments, through mappings of its own (not shoal's)."""
    rng = random.Random(seed)
    maps: dict[str, mmap.mmap] = {}
    log: list[str] = []
    writes = 0
    for when in at:
        time.sleep(max(0.0, when - time.monotonic()))
        family = rng.choice(sorted(_FAMILIES))
        target = rng.choice(_FAMILIES[family])
        choices = [r for r in regions if r[0] == target]
        for _ in range(rng.randrange(1, 4)):
            _, name, start, length = rng.choice(choices)
            buf = maps.get(name) or _map(name, maps)
            if buf is None:
                continue
            if target == "dict-table":
                buf, start, length = _current_table(buf, start, rng)
                if buf is None:
                    continue
            size = rng.choice([1, 4, 8]) if length > 8 else length
            size = min(size, length)
            offset = start + rng.randrange(0, max(1, length - size + 1))
            offset -= offset % size if target not in ("ring-data", "keepers") else 0
            if offset + size > len(buf):
                continue
            old = int.from_bytes(buf[offset : offset + size], "little")
            new = _garbage(rng, size, old)
            try:
                buf[offset : offset + size] = new.to_bytes(size, "little")
            except (IndexError, ValueError):
                continue
            writes += 1
            log.append(f"{target} {name}+{offset}:{size} {old:#x}->{new:#x}")
    for buf in maps.values():
        buf.close()
    conn.send((writes, log))


# what the scribbler aims at: a family first (each as likely), then one of its parts
_FAMILIES = {
    "ring": ["ring", "ring", "ring-data"],
    "dict": ["dict-root", "dict-table", "dict-table", "dict-table"],
    "arena": ["arena", "arena-bitmap", "block", "block", "payload"],
    "header": ["header", "header", "holders", "keepers"],
}


def _map(name: str, maps: dict[str, mmap.mmap]) -> mmap.mmap | None:
    try:
        fd = os.open("/dev/shm" + name, os.O_RDWR)
    except OSError:
        return None
    try:
        maps[name] = mmap.mmap(fd, os.fstat(fd).st_size)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return maps[name]


def _current_table(
    root_buf: mmap.mmap, root: int, rng: random.Random
) -> tuple[mmap.mmap | None, int, int]:
    """Where to write in the dict's current table: (its mapping, offset, size), or
    (None, 0, 0) where the root names no table."""
    gen = int.from_bytes(root_buf[root + 40 : root + 48], "little")
    at = root + 128 + 64 * (gen & 1)
    name = bytes(root_buf[at : at + 64]).rstrip(b"\0").decode("ascii", "replace")
    if not name.startswith("/shoal-") or "/" in name[1:] or "\0" in name:
        return None, 0, 0
    table = _map(name, _tables)
    if table is None:
        return None, 0, 0
    base = 4096
    nslots = int.from_bytes(table[base + 32 : base + 40], "little")
    if rng.random() < 0.4:
        offset, size = rng.choice(_DICT_WORDS)
        return table, base + offset, size
    slots_end = min(base + 512 + 16 * min(nslots, 4096), len(table))
    if rng.random() < 0.5:
        return table, base + 512, max(1, slots_end - base - 512)
    return table, slots_end, max(1, len(table) - slots_end)


_tables: dict[str, mmap.mmap] = {}


def _garbage(rng: random.Random, size: int, old: int) -> int:
    bits = 8 * size
    how = rng.randrange(6)
    if how == 0:
        new = rng.getrandbits(bits)
    elif how == 1:  # a small step: an off-by-some position, length or count
        new = old + rng.choice([-9, -8, -1, 1, 7, 8, 9, 16, 64, 4096])
    elif how == 2:
        new = old ^ (1 << rng.randrange(bits))
    elif how == 3:
        new = rng.choice([0, 1, (1 << bits) - 1, 1 << (bits - 1), 1 << 31, 1 << 20])
    elif how == 4:
        new = old + (rng.randrange(1, 4) << 32) if size == 8 else 0
    else:
        new = old * rng.choice([2, 16, 1024])
    return new % (1 << bits)


# ---- what the users call ------------------------------------------------------------------


def _item(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randrange(-(2**40), 2**40)
    if kind == 1:
        return "s" * rng.randrange(60)
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(50)))
    if kind == 3:
        return (1, "two", b"3", None, 4.5)
    if kind == 4:
        return b"B" * _BIG  # a transit segment
    return rng.random()


def _calls(kind: str, objects: Any, rng: random.Random, outcomes: _Outcomes
           ) -> list[tuple[str, Any]]:  # fmt: skip
    q, d, locks, events, sem = objects

    def item(got: Any) -> None:  # one of _item()'s, or of what the owner put
        if not isinstance(got, (int, float, str, bytes, tuple)):
            outcomes.wrong += 1

    def items(got: Any) -> None:
        for one in got:
            item(one)

    def value(got: Any) -> None:  # one of value()'s, the owner's, or a count
        if got is not None and not isinstance(got, (int, str, bytes)):
            outcomes.wrong += 1

    def lock_round(lock: Any) -> None:
        if lock.acquire(timeout=0.02):
            lock.release()

    def lock_round_nowait(lock: Any) -> None:
        if lock.acquire(False):
            lock.release()

    def sem_round() -> None:
        if sem.acquire(timeout=0.02):
            sem.release()

    queue_calls = [
        ("get", lambda: item(q.get(timeout=0.01))),
        ("get_nowait", lambda: item(q.get_nowait())),
        ("get_many", lambda: items(q.get_many(5, timeout=0.01))),
        ("put", lambda: q.put(_item(rng), timeout=0.01)),
        ("put_many", lambda: q.put_many([_item(rng) for _ in range(3)], timeout=0.01)),
        ("qsize", q.qsize),
        ("statistics", q.statistics),
        ("repr", lambda: repr(q)),
        ("attach", lambda: pickle.loads(pickle.dumps(q)).close()),
    ]
    key = lambda: rng.randrange(_KEYS)  # noqa: E731
    new = lambda: rng.choice([rng.randrange(1000), "v" * rng.randrange(200), b"x" * 9])  # noqa: E731
    dict_calls = [
        ("getitem", lambda: value(d[key()])),
        ("get", lambda: value(d.get(key()))),
        ("setitem", lambda: d.__setitem__(key(), new())),
        ("delitem", lambda: d.__delitem__(key())),
        ("pop", lambda: value(d.pop(key(), None))),
        ("incr", lambda: d.incr(("n", rng.randrange(3)))),
        ("get_or_set", lambda: d.get_or_set(key(), 7)),
        ("contains", lambda: key() in d),
        ("len", lambda: len(d)),
        ("items", d.items),
        ("keys", d.keys),
        ("popitem", d.popitem),
        ("statistics", d.statistics),
        ("attach", lambda: pickle.loads(pickle.dumps(d)).close()),
    ]
    if rng.random() < 0.1:
        dict_calls.append(("clear", d.clear))
    sync_calls = [
        ("lock", lambda: lock_round(rng.choice(locks))),
        ("lock_nowait", lambda: lock_round_nowait(rng.choice(locks))),
        ("lock_statistics", lambda: rng.choice(locks).statistics()),
        ("event_set", lambda: rng.choice(events).set()),
        ("event_clear", lambda: rng.choice(events).clear()),
        ("event_wait", lambda: rng.choice(events).wait(0.01)),
        ("event_statistics", lambda: rng.choice(events).statistics()),
        ("semaphore", sem_round),
        ("semaphore_repr", lambda: repr(sem)),
        ("attach", lambda: pickle.loads(pickle.dumps(rng.choice(locks))).close()),
    ]
    if kind == "queue":
        return queue_calls
    if kind == "dict":
        return dict_calls
    if kind == "sync":
        return sync_calls
    return queue_calls + dict_calls + sync_calls


class _Outcomes:
    """What one process's calls did, by kind of outcome."""

    def __init__(self, ops: Any = None, slot: int = 0) -> None:
        self.ops, self.slot = ops, slot
        self.calls = self.raised = self.wrong = 0
        self.errors: dict[str, int] = {}
        self.unclear: list[str] = []

    def mark(self, what: str) -> None:
        if self.ops is not None:
            raw = what.encode()[: _OP_SLOT - 1].ljust(_OP_SLOT, b"\0")
            self.ops[self.slot * _OP_SLOT : (self.slot + 1) * _OP_SLOT] = raw

    def call(self, kind: str, name: str, fn: Any) -> Any:
        import shoal

        self.mark(f"{kind}.{name}")
        self.calls += 1
        try:
            return fn()
        except (stdlib_queue.Empty, stdlib_queue.Full, KeyError):
            return None  # what these calls raise anyway
        except (shoal.ShoalError, PickleGarbage) as exc:
            self.raised += 1
            what = f"{type(exc).__name__}@{kind}.{name}"
            self.errors[what] = self.errors.get(what, 0) + 1
        except Exception as exc:
            self.unclear.append(f"{kind}.{name}: {_describe(exc)}")
        return None

    def report(self) -> dict[str, Any]:
        return {"calls": self.calls, "raised": self.raised, "wrong": self.wrong,
                "errors": self.errors, "unclear": self.unclear}  # fmt: skip


def _describe(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:]
    at = f" at {os.path.basename(where[0].filename)}:{where[0].lineno}" if where else ""
    return f"{type(exc).__name__}: {str(exc)[:160]}{at}"


def _fuzz_hooks(outcomes: _Outcomes) -> None:
    """Pickles of garbage raise PickleGarbage; finalizers' errors count as calls'."""
    import shoal
    from shoal import _serialize

    real = _serialize._loads

    def loads(data: Any, **kwargs: Any) -> Any:
        try:
            return real(data, **kwargs)
        except shoal.ShoalError:
            raise
        except Exception as exc:
            raise PickleGarbage(f"{type(exc).__name__}: {exc}") from None

    _serialize._loads = loads

    def unraisable(u: Any) -> None:
        exc = u.exc_value
        if isinstance(exc, (shoal.ShoalError, PickleGarbage)):
            outcomes.raised += 1
            what = f"{type(exc).__name__}@finalizer"
            outcomes.errors[what] = outcomes.errors.get(what, 0) + 1
        else:
            outcomes.unclear.append(f"finalizer: {_describe(exc)}")

    sys.unraisablehook = unraisable


# ---- the scenario ---------------------------------------------------------------------------


_USERS = ("queue", "dict", "sync", "mixed")


def _one_round(rng: random.Random, totals: dict[str, Any]) -> None:
    before = set(os.listdir("/dev/shm"))
    ops = _FORK.RawArray("c", _OP_SLOT * (len(_USERS) + 2))
    here, there = _FORK.Pipe()
    owner = _FORK.Process(target=_owner, args=(there, len(_USERS) + 1))
    owner.start()
    procs: dict[str, Any] = {"owner": owner}
    pipes: dict[str, Any] = {"owner": here}
    try:
        if not here.poll(_GRACE_S):
            totals["hangs"] += 1
            totals.setdefault("first_hang", f"owner making the objects ({_stack_of(owner.pid)})")
            return
        pickles, regions = here.recv()
        start = time.monotonic()
        deadline = start + _ACTIVE_S
        for slot, kind in enumerate(_USERS):
            a, b = _FORK.Pipe()
            p = _FORK.Process(
                target=_user,
                args=(kind, pickles[slot], deadline, b, ops, slot, rng.getrandbits(32)),
            )
            p.start()
            procs[kind], pipes[kind] = p, a
        schedule = sorted(start + 0.02 + rng.uniform(0, _ACTIVE_S * 0.8)
                          for _ in range(rng.randrange(1, 5)))  # fmt: skip
        a, b = _FORK.Pipe()
        scribbler = _FORK.Process(
            target=_scribbler, args=(regions, schedule, b, rng.getrandbits(32))
        )
        scribbler.start()
        procs["scribbler"], pipes["scribbler"] = scribbler, a
        scribbler.join(_ACTIVE_S + _GRACE_S)
        log: list[str] = []
        if a.poll(1):
            writes, log = a.recv()
            totals["writes"] += writes
        a, b = _FORK.Pipe()
        late_args = ("late", pickles[-1], time.monotonic() + 0.05, b, ops, len(_USERS))
        late = _FORK.Process(target=_user, args=(*late_args, rng.getrandbits(32)))
        late.start()
        procs["late"], pipes["late"] = late, a
        end = max(deadline, time.monotonic() + 0.05) + _GRACE_S
        for kind in (*_USERS, "late"):
            _settle(kind, procs[kind], pipes[kind], end, ops, log, totals)
        here.send("done")
        _settle("owner", owner, here, time.monotonic() + _GRACE_S, None, log, totals)
    finally:
        for p in procs.values():
            if p.exitcode is None:
                p.kill()
                p.join(5)
            if p.pid:
                try:
                    os.unlink(f"/tmp/shoal-chaos-stack-{p.pid}")
                except OSError:
                    pass
        for name in set(os.listdir("/dev/shm")) - before:
            if name.startswith("shoal-"):
                try:
                    os.unlink("/dev/shm/" + name)
                except OSError:
                    pass
        for conn in pipes.values():
            conn.close()
        totals["rounds"] += 1


def _settle(kind: str, p: Any, conn: Any, end: float, ops: Any, log: list[str],
            totals: dict[str, Any]) -> None:  # fmt: skip
    """Wait for one process of the round and add up what it reported."""
    report = None
    while report is None and time.monotonic() < end:
        if conn.poll(0.05):
            try:
                report = conn.recv()
            except (EOFError, OSError):
                break
        elif p.exitcode is not None:
            break
    p.join(max(0.1, end - time.monotonic()))
    if p.exitcode is None:
        totals["hangs"] += 1
        if ops is not None:
            slot = (*_USERS, "late").index(kind)
            doing = bytes(ops[slot * _OP_SLOT : (slot + 1) * _OP_SLOT]).rstrip(b"\0").decode()
        else:
            doing = "closing"
        if "first_hang" not in totals:
            stack = _stack_of(p.pid)
            if os.environ.get("CHAOS_GDB"):
                import subprocess

                bt = subprocess.run(
                    ["gdb", "-p", str(p.pid), "-batch", "-ex", "bt 25"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
                print(f"hang of {kind}: {bt}", file=sys.stderr, flush=True)
            totals["first_hang"] = f"{kind} in {doing} ({stack}) after {log}"
        p.kill()
        p.join(5)
        return
    if p.exitcode < 0:
        totals["crashes"] += 1
        signame = signal.Signals(-p.exitcode).name
        totals.setdefault("first_crash", f"{kind} died of {signame} after {log}")
    elif p.exitcode != 0:
        totals["unclear"] += 1
        totals.setdefault("first_unclear", f"{kind} exited with {p.exitcode} after {log}")
    if report:
        totals["calls"] += report["calls"]
        totals["errors_raised"] += report["raised"]
        totals["wrong"] += report["wrong"]
        for what, n in report["errors"].items():
            totals["errors"][what] = totals["errors"].get(what, 0) + n
        for what in report["unclear"]:
            totals["unclear"] += 1
            totals.setdefault("first_unclear", f"{what} after {log}")
            where = what.split(": ", 2)[1] + (what.rsplit(" at ", 1)[1:] or ["?"])[0]
            totals["unclear_at"][where] = totals["unclear_at"].get(where, 0) + 1


def run(seconds: float) -> dict[str, Any]:
    # imported once here, not in every process of every round (this process makes no
    # shoal object: its allocator stays empty, and the rounds' children inherit nothing)
    import shoal  # noqa: F401

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    totals: dict[str, Any] = {"rounds": 0, "writes": 0, "calls": 0, "errors_raised": 0,
                              "errors": {}, "wrong": 0, "crashes": 0, "hangs": 0,
                              "unclear": 0, "unclear_at": {}}  # fmt: skip
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or totals["rounds"] < 3:
        _one_round(rng, totals)
    if os.environ.get("CHAOS_VERBOSE"):
        for what, n in sorted(totals["errors"].items()):
            print(f"{n:8} {what}", file=sys.stderr)
    by_type: dict[str, int] = {}
    for what, n in totals["errors"].items():
        by_type[what.split("@")[0]] = by_type.get(what.split("@")[0], 0) + n
    common = sorted(by_type.items(), key=lambda kv: -kv[1])[:4]
    totals["errors"] = "/".join(f"{k} {v}" for k, v in common) or "-"
    totals["unclear_at"] = "/".join(f"{k} {v}" for k, v in totals["unclear_at"].items()) or "-"
    return {"seconds": seconds, "seed": seed, **totals}
