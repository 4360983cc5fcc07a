"""A hostile second user planting files named like shoal segments while root uses shoal.

The user ``nobody`` (``setpriv --reuid=nobody --regid=nogroup --clear-groups``) fills
``/dev/shm`` with files named ``shoal-`` + 20 hex digits: exact copies of real
segments (valid headers whose holders are dead: they look orphaned), copies with the
magic number zeroed and an old mtime (they look abandoned mid-creation), copies that
are truncated or whose header lies about their size, garbage, empty files, FIFOs,
directories, symlinks to root's segments and to a root file, and real segments of its
own whose holder tables it keeps locked.  Half of them it leaves alone ("stable"); the
rest it keeps truncating, regrowing and rewriting for as long as the scenario runs.
Meanwhile two root processes use shoal: one creates locks, queues (with items big
enough for a transit segment), dicts and events, uses and closes them and reaps; a
second does the same and is SIGKILLed at a random moment, again and again, each new
one reaping as it starts.

Figures: ``planted`` files, ``rewrites`` (truncations and rewrites by nobody),
``creates`` and ``reaps`` by the victims, the slowest of each (ms), ``stalls`` (a
create or reap that took over 1 s), ``victim_kills``, ``crashes`` (a victim that died
of anything but our SIGKILL: SIGBUS, SIGSEGV…), ``failed`` (a victim's call that
raised), and what happened to nobody's files, as nobody saw it (inotify, and a final
check of each): ``vanished`` (removed or renamed), ``changed_owner``, ``opened`` (a
stable one opened by anyone) and ``opened_for_writing`` (a stable one closed after
being opened for writing, or its attributes changed); and ``leftovers``: root's
``shoal-*`` files left once the victims are gone and ``doctor --reap`` ran (nobody's are
not counted).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOLDS = ("crashes", "stalls", "failed", "vanished", "changed_owner", "opened",
         "opened_for_writing", "leftovers")  # fmt: skip

HOSTILE = ("nobody", "nogroup")
_STALL_S = 1.0
_FORK = mp.get_context("fork")
_ROOT = Path(__file__).resolve().parent.parent
_REC = struct.Struct("<cd")  # b"C" create / b"R" reap / b"F" failed call, seconds
_SHM = "/dev/shm"


# ---- the victims (root) -----------------------------------------------------------------


def _victim(log_path: str, deadline: float, started: Any) -> None:
    """Create, use and close shoal objects and reap, logging how long each took."""
    import shoal
    from shoal import lowlevel

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    rng = random.Random(os.getpid())

    def timed(kind: bytes, fn: Any) -> Any:
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            os.write(fd, _REC.pack(b"F", time.monotonic() - t0))
            os.write(fd, f"{type(exc).__name__}: {exc}\n".encode()[:200].ljust(200))
            return None
        os.write(fd, _REC.pack(kind, time.monotonic() - t0))
        return result

    # a fresh victim sweeps first, as a fresh process's first creation does
    timed(b"R", lowlevel.reap)
    if started is not None:
        started.set()
    # (a small ring: the big item travels in a transit segment)
    makers = [shoal.Lock, lambda: shoal.Queue(capacity=65536), shoal.SharedDict, shoal.Event,
              shoal.RLock]  # fmt: skip
    i = 0
    while time.monotonic() < deadline:
        obj = timed(b"C", rng.choice(makers))
        if obj is not None:
            timed(b"U", lambda o=obj: _use(o, rng))
            obj.close()
        i += 1
        if i % 5 == 0:
            timed(b"R", lowlevel.reap)
    os.close(fd)


def _use(obj: Any, rng: random.Random) -> None:
    import shoal

    if isinstance(obj, shoal.Queue):
        obj.put("small")
        obj.put(bytearray(160 * 1024))  # over half the ring: a transit segment
        assert obj.get(timeout=5) == "small" and len(obj.get(timeout=5)) == 160 * 1024
    elif isinstance(obj, shoal.SharedDict):
        obj.update({k: "v" * k for k in range(rng.randrange(1, 50))})
        assert obj[0] == ""
    elif isinstance(obj, shoal.Event):
        obj.set()
        assert obj.wait(1)
    else:
        assert obj.acquire(timeout=5)
        obj.release()


def _read_log(path: str) -> dict[str, Any]:
    got: dict[str, Any] = {"creates": 0, "reaps": 0, "slowest_create": 0.0,
                           "slowest_reap": 0.0, "stalls": 0, "failed": 0}  # fmt: skip
    try:
        data = Path(path).read_bytes()
    except OSError:
        return got
    at = 0
    while at + _REC.size <= len(data):
        kind, took = _REC.unpack_from(data, at)
        at += _REC.size
        if kind == b"F":
            got["failed"] += 1
            got.setdefault("first_failure", data[at : at + 200].decode(errors="replace").strip())
            at += 200
            continue
        if kind == b"C":
            got["creates"] += 1
            got["slowest_create"] = max(got["slowest_create"], took)
        elif kind == b"R":
            got["reaps"] += 1
            got["slowest_reap"] = max(got["slowest_reap"], took)
        if kind in (b"C", b"R") and took > _STALL_S:
            got["stalls"] += 1
    return got


def _make_templates(directory: str) -> None:
    """Real segments of every kind, copied where nobody can read them (then closed)."""
    import shoal

    before = set(os.listdir(_SHM))
    q = shoal.Queue()
    q.put(bytearray(200 * 1024))  # its transit segment stays while it waits
    d = shoal.SharedDict({i: "x" * i for i in range(100)})
    lock, event = shoal.Lock(), shoal.Event()
    from shoal._memory import _NAME_PATTERN

    made = sorted(n for n in set(os.listdir(_SHM)) - before if _NAME_PATTERN.fullmatch("/" + n))
    for i, name in enumerate(made):  # (segments: not this process's liveness file)
        data = Path(_SHM, name).read_bytes()
        target = Path(directory, f"template-{i}")
        target.write_bytes(data)
        target.chmod(0o644)
    for obj in (q, d, lock, event):
        obj.close()


# ---- the hostile user (nobody) ----------------------------------------------------------

_IN_OPEN, _IN_MODIFY, _IN_ATTRIB = 0x20, 0x02, 0x04
_IN_CLOSE_WRITE, _IN_MOVED_FROM, _IN_DELETE = 0x08, 0x40, 0x200


def _planter_main() -> None:
    """Run as nobody: plant, watch, churn until told to stop on stdin, then report."""
    import fcntl
    import hashlib

    from shoal import _core
    from shoal.lowlevel import Segment

    templates_dir, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    templates = [Path(templates_dir, n).read_bytes() for n in sorted(os.listdir(templates_dir))]
    dead = (_core.self_token() & ~0xFFFFFFFF) | 12345  # pid 12345 of this namespace: gone
    kinds: dict[str, str] = {}  # planted name -> kind
    digests: dict[str, str] = {}  # stable regular files -> sha256 of their content
    counts = {"rewrites": 0}

    def new_name(kind: str) -> str:
        if kind.startswith("live"):  # named like a process's liveness file
            return (
                _core.LIVENESS_PREFIX
                + rng.randbytes(8).hex()
                + (_core.LIVENESS_TEMP_SUFFIX if rng.random() < 0.3 else "")
            )
        return "shoal-" + rng.randbytes(10).hex()

    def orphaned(data: bytes) -> bytes:
        # every holder dead: judged by its looks, the file would be reaped
        out = bytearray(data)
        if len(out) >= 4096:
            struct.pack_into("<Q", out, 128, dead)
            out[136:3072] = bytes(3072 - 136)
        return bytes(out)

    def content(kind: str) -> bytes:
        t = rng.choice(templates)
        if kind == "copy":
            return orphaned(t)
        if kind == "unfinished":
            return bytes(8) + orphaned(t)[8:]
        if kind == "truncated":
            return orphaned(t)[: rng.choice([0, 8, 100, 4095, 4096, 5000, len(t) - 1])]
        if kind == "size-lie":
            out = bytearray(orphaned(t))
            struct.pack_into("<Q", out, 16, len(out) * 2)
            return bytes(out)
        if kind == "live":
            return b""  # as a liveness file is
        return rng.randbytes(rng.choice([0, 7, 4096, 9000, 70_000]))  # garbage

    def plant(kind: str) -> str:
        name = new_name(kind)
        path = os.path.join(_SHM, name)
        if kind in ("fifo", "live-fifo"):
            os.mkfifo(path, 0o600)
        elif kind == "dir":
            os.mkdir(path, 0o700)
        elif kind in ("symlink", "live-symlink"):
            others = [n for n in os.listdir(_SHM) if n.startswith("shoal-") and n not in kinds]
            os.symlink(os.path.join(_SHM, rng.choice(others)) if others and rng.random() < 0.7
                       else target, path)  # fmt: skip
        else:
            data = content(kind)
            with open(path, "wb") as f:
                f.write(data)
            if kind == "unfinished":
                os.utime(path, (time.time() - 3600, time.time() - 3600))
        kinds[name] = kind
        return name

    # nobody's own segments: tables locked, or every holder dead
    own: list[Any] = []
    locked: list[Any] = []

    def unlock() -> None:  # (at exit too, before shoal's own hooks: they would wait)
        while locked:
            locked.pop()._table_lock.release()

    atexit.register(unlock)
    for i in range(6):
        seg = Segment.create(64)
        if i % 2:
            seg._table_lock.acquire()
            locked.append(seg)
        else:
            view = seg._holders_view()
            view[0] = dead
            view.release()
        own.append(seg)
        kinds[seg.name[1:]] = "own"
    stable = [plant(k) for k in ("copy", "unfinished", "truncated", "size-lie", "garbage",
                                 "fifo", "dir", "symlink", "live", "live-fifo",
                                 "live-symlink") for _ in range(3)]  # fmt: skip
    stable += [s.name[1:] for s in own]
    churn = [plant(k) for k in ("copy", "truncated", "garbage") for _ in range(4)]
    for name in stable:
        if stat.S_ISREG(os.lstat(os.path.join(_SHM, name)).st_mode):
            digests[name] = hashlib.sha256(Path(_SHM, name).read_bytes()).hexdigest()

    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(os.O_NONBLOCK)
    mask = _IN_OPEN | _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_DELETE
    if watch < 0 or libc.inotify_add_watch(watch, _SHM.encode(), mask) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    events = {"opened": 0, "opened_for_writing": 0, "vanished": 0}
    first: dict[str, str] = {}
    stable_set = set(stable)

    def drain(count: bool) -> None:
        while True:
            try:
                raw = os.read(watch, 65536)
            except BlockingIOError:
                return
            at = 0
            while at + 16 <= len(raw):
                _, ev, _, size = struct.unpack_from("<iIII", raw, at)
                name = raw[at + 16 : at + 16 + size].rstrip(b"\0").decode(errors="replace")
                at += 16 + size
                if not count or name not in kinds:
                    continue
                if ev & (_IN_DELETE | _IN_MOVED_FROM):
                    what = "vanished"
                elif name not in stable_set:
                    continue  # churned by nobody itself
                elif ev & (_IN_CLOSE_WRITE | _IN_MODIFY | _IN_ATTRIB):
                    what = "opened_for_writing"
                elif ev & _IN_OPEN:
                    what = "opened"
                else:
                    continue
                events[what] += 1
                first.setdefault(what, f"{kinds[name]} {name}")

    drain(False)  # the planting itself
    print(json.dumps({"ready": len(kinds)}), flush=True)
    fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_NONBLOCK)
    while True:
        try:
            if sys.stdin.buffer.read() is not None:
                break  # "stop" (or the end of stdin)
        except BlockingIOError:
            pass
        drain(True)
        name = rng.choice(churn)
        path = os.path.join(_SHM, name)
        try:
            with open(path, "r+b") as f:
                f.truncate(rng.choice([0, 100, 4095]))  # a mapping of it would SIGBUS
                f.truncate(rng.choice([4096, 8192, 300_000]))
                if rng.random() < 0.5:
                    f.seek(0)
                    f.write(content(rng.choice(["copy", "size-lie", "garbage"])))
            counts["rewrites"] += 1
        except OSError:
            pass
        if rng.random() < 0.05 and len(kinds) < 200:
            churn.append(plant(rng.choice(["copy", "garbage", "truncated"])))
        time.sleep(0.002)
    drain(True)
    report = dict(counts, **events, planted=len(kinds), changed_owner=0, first=first)
    for name, kind in kinds.items():
        try:
            st = os.lstat(os.path.join(_SHM, name))
        except FileNotFoundError:
            report["vanished"] += 1
            first.setdefault("vanished", f"{kind} {name} (at the end)")
            continue
        if st.st_uid != os.getuid():
            report["changed_owner"] += 1
            first.setdefault("changed_owner", f"{kind} {name}")
        elif name in digests:
            now = hashlib.sha256(Path(_SHM, name).read_bytes()).hexdigest()
            if now != digests[name]:
                report["opened_for_writing"] += 1
                first.setdefault("opened_for_writing", f"{kind} {name} (content changed)")
    print(json.dumps(report), flush=True)
    unlock()
    for seg in own:
        seg.close()


def _start_planter(templates: str, target: str, seed: int) -> subprocess.Popen[str]:
    code = (f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
            "from chaos.scenario_hostile_user import _planter_main; _planter_main()")  # fmt: skip
    return subprocess.Popen(
        ["setpriv", f"--reuid={HOSTILE[0]}", f"--regid={HOSTILE[1]}", "--clear-groups",
         sys.executable, "-c", code, templates, target, str(seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip


# ---- the scenario -----------------------------------------------------------------------


def _root_files() -> list[str]:
    out = []
    for name in os.listdir(_SHM):
        if name.startswith("shoal-"):
            try:
                st = os.lstat(os.path.join(_SHM, name))
            except FileNotFoundError:
                continue
            if st.st_uid == os.geteuid():
                out.append(name)
    return out


def run(seconds: float) -> dict[str, Any]:
    # imported once here, not by every victim it forks (this process makes no shoal
    # object: its victims inherit nothing)
    import shoal  # noqa: F401

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="shoal-chaos-hostile-")
    os.chmod(work, 0o755)  # nobody reads the templates (only)
    target = os.path.join(_SHM, "victim-target")  # root's, not shoal's: linked to
    Path(target).write_bytes(b"t" * 8192)
    figures: dict[str, Any] = {"seconds": seconds}
    maker = _FORK.Process(target=_make_templates, args=(work,))
    maker.start()
    maker.join(60)
    planter = _start_planter(work, target, rng.getrandbits(32))
    victims: list[Any] = []
    crashes = kills = 0
    try:
        assert planter.stdout is not None and planter.stdin is not None
        ready = planter.stdout.readline()
        if not ready.startswith("{"):
            raise RuntimeError(f"the hostile planter failed to start: {ready!r}")
        deadline = time.monotonic() + seconds
        user = _FORK.Process(target=_victim, args=(os.path.join(work, "user"), deadline, None))
        user.start()
        victims.append(user)
        n = 0
        while time.monotonic() < deadline:
            started = _FORK.Event()
            v = _FORK.Process(
                target=_victim, args=(os.path.join(work, f"victim-{n}"), deadline + 60, started)
            )
            v.start()
            victims.append(v)
            n += 1
            if started.wait(10):
                time.sleep(rng.uniform(0.05, 0.4))  # in the middle of something
            if v.exitcode is None:
                os.kill(v.pid, signal.SIGKILL)
                kills += 1
            v.join(10)
            if v.exitcode != -signal.SIGKILL:
                crashes += 1
                figures.setdefault("first_crash", f"victim exited with {v.exitcode}")
        user.join(60)
        if user.exitcode != 0:
            crashes += 1
            figures.setdefault("first_crash", f"user exited with {user.exitcode}")
        planter.stdin.write("stop\n")
        planter.stdin.close()
        report = json.loads(planter.stdout.readline() or "{}")
        planter.wait(30)
    finally:
        for v in victims:
            if v.exitcode is None:
                v.kill()
                v.join(5)
        if planter.poll() is None:
            planter.kill()
            planter.wait(10)
    totals = _read_log(os.path.join(work, "user"))
    for i in range(n):
        for k, v in _read_log(os.path.join(work, f"victim-{i}")).items():
            if k.startswith("slowest"):
                totals[k] = max(totals[k], v)
            elif k == "first_failure":
                totals.setdefault(k, v)
            else:
                totals[k] += v
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", "--reap"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        crashes += 1
        figures.setdefault("first_crash", f"doctor --reap exited with {done.returncode}")
    if Path(target).read_bytes() != b"t" * 8192:
        report["opened_for_writing"] = report.get("opened_for_writing", 0) + 1
        report.setdefault("first", {})["opened_for_writing"] = "the root file linked to"
    leftovers = _root_files()
    os.unlink(target)
    shutil.rmtree(work, ignore_errors=True)
    figures.update(
        planted=report.get("planted", 0),
        rewrites=report.get("rewrites", 0),
        creates=totals["creates"],
        reaps=totals["reaps"],
        slowest_create_ms=round(totals["slowest_create"] * 1000, 1),
        slowest_reap_ms=round(totals["slowest_reap"] * 1000, 1),
        stalls=totals["stalls"],
        victim_kills=kills,
        crashes=crashes,
        failed=totals["failed"],
        vanished=report.get("vanished", -1),
        changed_owner=report.get("changed_owner", -1),
        opened=report.get("opened", -1),
        opened_for_writing=report.get("opened_for_writing", -1),
        leftovers=len(leftovers),
    )
    for what, first in sorted(report.get("first", {}).items()):
        figures[f"first_{what}"] = first
    if "first_failure" in totals:
        figures["first_failure"] = totals["first_failure"]
    if leftovers:
        figures["first_leftover"] = leftovers[0]
    return figures
