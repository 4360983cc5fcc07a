"""Shared-memory segments: life cycle, names, sharing, reaping, layout checks (#2).

What these tests hold ``shoal.lowlevel.Segment`` and ``reap()`` to:

* a segment lives while any process holds it and is removed from ``/dev/shm`` when
  the last holder closes it, or (all holders dead, SIGKILL included) by ``reap()``
  or the first segment creation of the next shoal process;
* names are unguessable and the file is private (0600);
* attach checks the header and refuses a foreign or corrupt segment with
  ``LayoutError``; a missing one with ``SegmentNotFoundError``;
* no room in ``/dev/shm`` is a ``SharedMemoryError`` up front, never a SIGBUS.

The tests that start processes take the ``ctx`` fixture where the start method can
change the outcome (a spawned child imports shoal afresh; a forked one inherits the
parent's attachments and exit hooks).  Child-side helpers are module level so that
spawn and forkserver can import them.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import pytest
from conftest import join_all, shoal_segments, wait_until
from isolation import HOSTILE_USER, PYTHON, check_isolated

import shoal
from shoal import _core, _memory
from shoal.lowlevel import HEADER_SIZE, Segment, reap

TIMEOUT = 20.0
SHM = "/dev/shm"
FORK = mp.get_context("fork")

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)")


def shm_path(name: str) -> str:
    return SHM + name


def exists(name: str) -> bool:
    return os.path.exists(shm_path(name))


def run_python(code: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a brand-new shoal process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dead_token() -> int:
    """A token no live process has: our pid with a start time that is not ours."""
    token = _core.self_token()
    return (token & ~0xFFFFFFFF) | ((token + 12345) & 0xFFFFFFFF)


def header_bytes(
    *,
    magic: int = _memory.MAGIC,
    version: int = _core.LAYOUT_VERSION,
    header_size: int = HEADER_SIZE,
    total: int,
    holders: tuple[int, ...] = (),
) -> bytes:
    """A shoal segment header as the creator writes it (see _memory's table)."""
    head = bytearray(HEADER_SIZE)
    _memory._HEADER.pack_into(
        head,
        0,
        magic,
        version,
        header_size,
        total,
        _memory.KIND_DATA,
        0,
        holders[0] if holders else 0,
        time.time_ns(),
        _memory._HOLDER_CAPACITY,
        0,
    )
    for i, token in enumerate(holders):
        struct.pack_into("<Q", head, _memory._HOLDERS_OFFSET + 8 * i, token)
    return bytes(head)


class RawFile:
    """A file in /dev/shm named like a shoal segment, written by hand (always removed)."""

    def __init__(self, content: bytes, size: int | None = None, age_s: float = 0.0) -> None:
        self.name = "/shoal-" + secrets.token_hex(10)
        fd = os.open(shm_path(self.name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.write(fd, content)
            if size is not None:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        if age_s:
            past = time.time() - age_s
            os.utime(shm_path(self.name), (past, past))

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(shm_path(self.name))
        except FileNotFoundError:
            pass


# ---- child-side helpers (module level: spawn and forkserver import them) ---------------


def child_read_and_write(name: str, expected: bytes, reply: bytes, conn: Connection) -> None:
    seg = Segment.attach(name)
    try:
        got = bytes(seg.buffer[HEADER_SIZE : HEADER_SIZE + len(expected)])
        seg.buffer[HEADER_SIZE + 100 : HEADER_SIZE + 100 + len(reply)] = reply
        conn.send((got, os.getpid() in seg.holders()))
    finally:
        seg.close()


def child_outlive_parent(name: str, conn: Connection) -> None:
    seg = Segment.attach(name)
    conn.send("attached")
    assert conn.poll(TIMEOUT), "the parent never said it closed"
    conn.recv()
    # the parent closed its segment: ours still works
    seg.buffer[HEADER_SIZE : HEADER_SIZE + 5] = b"child"
    conn.send(bytes(seg.buffer[HEADER_SIZE + 10 : HEADER_SIZE + 16]))
    seg.close()
    conn.send("closed")


def child_create_and_hold(conn: Connection) -> None:
    seg = Segment.create(1000)
    seg.buffer[HEADER_SIZE : HEADER_SIZE + 7] = b"creator"
    conn.send(seg.name)
    time.sleep(TIMEOUT * 3)  # killed long before


def child_create_and_exit(conn: Connection) -> None:
    seg = Segment.create(64)
    conn.send(seg.name)
    # exits holding it: the exit hook must remove it (nobody else holds it)


def child_attach_expect_error(name: str, conn: Connection) -> None:
    try:
        Segment.attach(name).close()
    except shoal.LayoutError as exc:
        conn.send(("LayoutError", str(exc)))
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))
    else:
        conn.send(("attached", ""))


def child_attach_hold(name: str, conn: Connection) -> None:
    try:
        seg = Segment.attach(name)
    except shoal.SharedMemoryError as exc:
        conn.send((exc.errno, str(exc)))
        return
    conn.send(os.getpid() in seg.holders())
    assert conn.poll(TIMEOUT)
    conn.recv()
    seg.close()
    conn.send("closed")


def child_create_many(count: int, conn: Connection) -> None:
    lost = 0
    for _ in range(count):
        seg = Segment.create(64)
        lost += not exists(seg.name)  # a reaper running meanwhile must not take it
        seg.close()
    conn.send(lost)


@pytest.fixture
def new_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the segments this process makes during the test."""
    names: list[str] = []
    original = _memory._new_name

    def recording() -> str:
        names.append(original())
        return names[-1]

    monkeypatch.setattr(_memory, "_new_name", recording)
    return names


# ---- life cycle -------------------------------------------------------------------------


def test_create_attach_close_life_cycle() -> None:
    seg = Segment.create(100)
    try:
        assert seg.size == HEADER_SIZE + 100 == len(seg.buffer)
        assert seg.kind == _memory.KIND_DATA
        assert not seg.closed and exists(seg.name)
        assert "attached" in repr(seg) and seg.name in repr(seg)
        assert seg.holders() == [os.getpid()]
        assert seg.name in shoal.lowlevel.attached_names()
        # the header is checked and complete
        assert _core.load64(seg.buffer, 0) == _memory.MAGIC
        seg.buffer[HEADER_SIZE:] = bytes(range(100))
        # attaching in the same process reuses the attachment: one close each
        again = Segment.attach(seg.name)
        assert again is seg
        again.close()
        assert not seg.closed and exists(seg.name)
        assert bytes(seg.buffer[HEADER_SIZE:]) == bytes(range(100))
    finally:
        seg.close()
    assert seg.closed and "closed" in repr(seg)
    assert not exists(seg.name)
    assert seg.name not in shoal.lowlevel.attached_names()
    seg.close()  # harmless
    with pytest.raises(shoal.ClosedError):
        seg.holders()
    with pytest.raises(shoal.SegmentNotFoundError):
        Segment.attach(seg.name)


def test_empty_segment_is_just_a_header() -> None:
    seg = Segment.create(0)
    assert seg.size == HEADER_SIZE
    seg.close()
    assert not exists(seg.name)


def test_names_are_unguessable_and_files_private() -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        segs = [Segment.create(10) for _ in range(20)]
    finally:
        os.umask(old_umask)
    try:
        names = [s.name for s in segs]
        assert len(set(names)) == len(names)
        for name in names:
            assert re.fullmatch(r"/shoal-[0-9a-f]{20}", name), name
            st = os.stat(shm_path(name))
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
        assert len(names[0]) <= 31  # macOS's limit for shm names
    finally:
        for s in segs:
            s.close()


def test_attach_from_another_process_sees_the_same_bytes(ctx: Any) -> None:
    seg = Segment.create(4096)
    try:
        pattern = os.urandom(64)
        seg.buffer[HEADER_SIZE : HEADER_SIZE + 64] = pattern
        here, there = ctx.Pipe()
        p = ctx.Process(target=child_read_and_write, args=(seg.name, pattern, b"reply", there))
        p.start()
        assert here.poll(TIMEOUT), "the child never answered"
        got, child_listed = here.recv()
        join_all(p)
        assert p.exitcode == 0
        assert got == pattern
        assert child_listed, "the child was not in the holder table"
        assert bytes(seg.buffer[HEADER_SIZE + 100 : HEADER_SIZE + 105]) == b"reply"
        # the child closed: it left the table, the segment stays ours
        assert seg.holders() == [os.getpid()]
        assert exists(seg.name)
    finally:
        seg.close()
    assert not exists(seg.name)


def test_segment_lives_until_the_last_holder_closes(ctx: Any) -> None:
    seg = Segment.create(64)
    name = seg.name
    seg.buffer[HEADER_SIZE + 10 : HEADER_SIZE + 16] = b"parent"
    here, there = ctx.Pipe()
    p = ctx.Process(target=child_outlive_parent, args=(name, there))
    p.start()
    try:
        assert here.poll(TIMEOUT) and here.recv() == "attached"
        assert p.pid in seg.holders()
        seg.close()
        assert exists(name), "removed while a child still held it"
        here.send("go")
        assert here.poll(TIMEOUT)
        assert here.recv() == b"parent"
        assert here.poll(TIMEOUT) and here.recv() == "closed"
        assert wait_until(lambda: not exists(name), 5)
    finally:
        seg.close()
        join_all(p)
    assert p.exitcode == 0


def test_ten_thousand_create_close_cycles_leave_nothing() -> None:
    def fd_count() -> int:
        return len(os.listdir("/proc/self/fd"))

    Segment.create(1).close()  # the process's first creation also sweeps: not counted
    fds = fd_count()
    names = set()
    for i in range(10_000):
        seg = Segment.create(64 + i % 7)
        names.add(seg.name)
        seg.close()
    assert len(names) == 10_000
    assert not names & shoal_segments()
    assert fd_count() <= fds, "file descriptors leaked"
    assert not names & shoal.lowlevel.attached_names()


def test_close_with_a_live_export_of_the_buffer() -> None:
    # #2: close() raised BufferError and left the segment half closed (out of the
    # holder table, yet not closed) when something still held the buffer
    seg = Segment.create(16)
    seg.buffer[HEADER_SIZE : HEADER_SIZE + 2] = b"\x07\x09"
    reader = struct.iter_unpack("B", seg.buffer[HEADER_SIZE : HEADER_SIZE + 16])
    exporter = struct.iter_unpack("B", seg.buffer)  # exports the segment's own view
    seg.close()
    assert seg.closed
    assert not exists(seg.name)
    assert next(reader) == (7,)  # memory handed out stays valid until it is dropped
    assert next(exporter) == (ord("S"),)
    del reader, exporter


# ---- crashes and reaping ----------------------------------------------------------------


def test_creator_killed_survivor_closes_nothing_left(ctx: Any) -> None:
    here, there = ctx.Pipe()
    p = ctx.Process(target=child_create_and_hold, args=(there,))
    p.start()
    try:
        assert here.poll(TIMEOUT), "the child never created its segment"
        name = here.recv()
        seg = Segment.attach(name)
    finally:
        p.kill()
        join_all(p)
    assert p.exitcode == -signal.SIGKILL
    assert exists(name), "removed while this process still held it"
    assert sorted(seg.holders()) == sorted([p.pid, os.getpid()])
    assert bytes(seg.buffer[HEADER_SIZE : HEADER_SIZE + 7]) == b"creator"
    seg.close()
    assert not exists(name)


def test_attach_after_the_creator_died(ctx: Any) -> None:
    # the holder table then lists only a dead process: attaching must still work and
    # the last close (ours) must remove the segment
    here, there = ctx.Pipe()
    p = ctx.Process(target=child_create_and_hold, args=(there,))
    p.start()
    try:
        assert here.poll(TIMEOUT), "the child never created its segment"
        name = here.recv()
        # pinned meanwhile (an unrecorded holder), or any shoal process starting on
        # this machine could rightly reap it between the kill and our attach
        with open(shm_path(name), "r+b") as f:
            raw = mmap.mmap(f.fileno(), HEADER_SIZE)
        struct.pack_into("<I", raw, _memory._OVERFLOW_OFFSET, 1)
    finally:
        p.kill()
        join_all(p)
    seg = Segment.attach(name)
    struct.pack_into("<I", raw, _memory._OVERFLOW_OFFSET, 0)
    raw.close()
    assert sorted(seg.holders()) == sorted([p.pid, os.getpid()])
    assert bytes(seg.buffer[HEADER_SIZE : HEADER_SIZE + 7]) == b"creator"
    seg.close()
    assert not exists(name)


def orphan_segment() -> str:
    """Have a fresh process create a segment and die by SIGKILL; return its name."""
    code = """
        import os, signal, sys
        from shoal.lowlevel import Segment
        seg = Segment.create(100)
        sys.stdout.write(seg.name + "\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
    result = run_python(code)
    assert result.returncode == -signal.SIGKILL, result.stderr
    name = result.stdout.strip()
    assert re.fullmatch(r"/shoal-[0-9a-f]{20}", name), result.stdout
    return name


def test_reap_removes_a_segment_whose_holders_all_died() -> None:
    name = orphan_segment()
    # (another shoal process on this machine may sweep it first: either way it goes)
    reaped = reap()
    assert not exists(name)
    assert all(re.fullmatch(r"/shoal-[0-9a-f]{20}", n) for n in reaped)
    with pytest.raises(shoal.SegmentNotFoundError):
        Segment.attach(name)


def test_first_create_in_a_new_process_reaps() -> None:
    name = orphan_segment()
    result = run_python(
        """
        from shoal.lowlevel import Segment
        Segment.create(1).close()
        """
    )
    assert result.returncode == 0, result.stderr
    assert not exists(name)


def test_reap_judges_raw_segments() -> None:
    total = HEADER_SIZE + 64
    alive = header_bytes(total=total, holders=(_core.self_token(),))
    dead = header_bytes(total=total, holders=(dead_token(),))
    with contextlib.ExitStack() as stack:

        def raw(content: bytes, size: int | None = None, age_s: float = 0.0) -> str:
            return stack.enter_context(RawFile(content, size, age_s)).name

        live_holder = raw(alive, total)
        dead_holder = raw(dead, total)
        being_created = raw(b"")  # shm_open done, not sized yet
        header_pending = raw(b"", total)  # sized, magic not written yet
        abandoned = raw(b"", total, age_s=600)  # its creator died half way
        abandoned_small = raw(b"", 10, age_s=600)
        foreign = raw(b"NOTSHOAL" + bytes(100), total, age_s=600)
        other_version = raw(header_bytes(version=999, total=total), total)
        reap()
        assert exists(live_holder)
        assert not exists(dead_holder)
        assert exists(being_created)
        assert exists(header_pending)
        assert not exists(abandoned)
        assert not exists(abandoned_small)
        assert exists(foreign), "reap() must never remove what it cannot read"
        assert exists(other_version), "another shoal's segment is its own to judge"


def test_reap_skips_segments_this_process_holds() -> None:
    seg = Segment.create(8)
    try:
        assert seg.name not in reap()
        assert exists(seg.name)
    finally:
        seg.close()


def test_reap_racing_a_process_creating_segments() -> None:
    # a reaper must never take a segment that is being created (unsized, or without
    # its magic number yet) or that its creator just finished
    here, there = FORK.Pipe()
    p = FORK.Process(target=child_create_many, args=(400, there))
    p.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while p.is_alive() and time.monotonic() < deadline:
            reap()
        assert here.poll(TIMEOUT), "the creating child never reported"
        assert here.recv() == 0, "the reaper removed segments still being used"
    finally:
        join_all(p)
    assert p.exitcode == 0


# ---- refusing bad segments and bad input ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "size", "message"),
    [
        ({"magic": int.from_bytes(b"NOTSHOAL", "little")}, None, "bad magic number"),
        ({"magic": 0}, None, "bad magic number"),
        ({"version": _core.LAYOUT_VERSION + 1}, None, "layout version"),
        ({"header_size": 8192}, None, "corrupt"),
        ({}, HEADER_SIZE + 128, "corrupt"),  # the header says 64 bytes more
    ],
    ids=["magic", "unfinished", "version", "header-size", "total-size"],
)
def test_attach_refuses_a_bad_header(
    fields: dict[str, int], size: int | None, message: str
) -> None:
    total = HEADER_SIZE + 64
    with RawFile(header_bytes(total=total, **fields), size or total) as raw:
        with pytest.raises(shoal.LayoutError, match=message) as info:
            Segment.attach(raw.name)
        assert raw.name in str(info.value) and "refusing" in str(info.value)
        assert isinstance(info.value, shoal.SharedMemoryError)
        assert isinstance(info.value, OSError)
        assert exists(raw.name), "attach must not remove what it refused"
        assert raw.name not in shoal.lowlevel.attached_names()


def test_attach_refuses_a_file_smaller_than_a_header() -> None:
    with (
        RawFile(b"SHOALSEG", 100) as raw,
        pytest.raises(shoal.LayoutError, match="smaller than a shoal header"),
    ):
        Segment.attach(raw.name)


def test_attach_refuses_a_header_overwritten_in_place() -> None:
    # a real segment whose version field is overwritten through its buffer is
    # refused by a process that attaches it afresh (spawned: a forked child would
    # inherit the attachment instead)
    seg = Segment.create(64)
    try:
        struct.pack_into("<I", seg.buffer, 8, 999)
        spawn = mp.get_context("spawn")
        here, there = spawn.Pipe()
        p = spawn.Process(target=child_attach_expect_error, args=(seg.name, there))
        p.start()
        assert here.poll(TIMEOUT)
        kind, message = here.recv()
        join_all(p)
        assert kind == "LayoutError"
        assert "layout version 999" in message and "incompatible" in message
        struct.pack_into("<I", seg.buffer, 8, _core.LAYOUT_VERSION)
    finally:
        seg.close()
    assert not exists(seg.name)


def test_attach_a_missing_segment() -> None:
    name = "/shoal-" + secrets.token_hex(10)
    with pytest.raises(shoal.SegmentNotFoundError, match=re.escape(name)) as info:
        Segment.attach(name)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("100",), TypeError),
        ((1.5,), TypeError),
        ((True,), TypeError),
        ((None,), TypeError),
        ((-1,), ValueError),
        ((2**70,), ValueError),
        ((10, "arena"), TypeError),
        ((10, 0), ValueError),
        ((10, 2**32), ValueError),
    ],
)
def test_create_refuses_bad_arguments(
    args: tuple[Any, ...], error: type[Exception], new_names: list[str]
) -> None:
    with pytest.raises(error):
        Segment.create(*args)
    assert new_names == [], "refused only after making a file"


@pytest.mark.parametrize("name", [None, b"/shoal-00", 17])
def test_attach_refuses_a_name_that_is_not_a_str(name: Any) -> None:
    with pytest.raises(TypeError):
        Segment.attach(name)


def test_no_room_in_dev_shm_is_a_clear_error_up_front(new_names: list[str]) -> None:
    st = os.statvfs(SHM)
    capacity = st.f_blocks * st.f_frsize
    t0 = time.monotonic()
    with pytest.raises(shoal.SharedMemoryError) as info:
        Segment.create(capacity + 2**20)
    took = time.monotonic() - t0
    # tmpfs refuses a fallocate larger than itself before touching a page: no SIGBUS
    # later, no time spent zeroing memory now
    assert took < 2.0
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "no room in shared memory" in message and "free" in message and SHM in message
    assert f"{capacity + 2**20 + HEADER_SIZE:,}" in message
    assert len(new_names) == 1
    assert not exists(new_names[0]), "a failed creation left its file behind"


# ---- holders ------------------------------------------------------------------------------


def test_holders_lists_every_process_attached(ctx: Any) -> None:
    seg = Segment.create(8)
    here, there = ctx.Pipe()
    p = ctx.Process(target=child_attach_hold, args=(seg.name, there))
    p.start()
    try:
        assert here.poll(TIMEOUT)
        assert here.recv() is True  # recorded in the table
        assert sorted(seg.holders()) == sorted([os.getpid(), p.pid])
        here.send("close")
        assert here.poll(TIMEOUT) and here.recv() == "closed"
        if ctx.get_start_method() != "fork":
            assert seg.holders() == [os.getpid()]
        # a forked child also holds the attachment it inherited, until it exits
        join_all(p)
        assert seg.holders() == [os.getpid()]
    finally:
        join_all(p)
        seg.close()


def test_a_holder_beyond_a_full_table_is_refused_with_a_clear_error() -> None:
    # #10: a process beyond the table was counted in the overflow field, which cannot
    # name it: once it was SIGKILLed the segment could never be reaped
    seg = Segment.create(8)
    token = _core.self_token()
    slots = seg.buffer[_memory._HOLDERS_OFFSET : _memory._KEEPERS_OFFSET].cast("Q")
    try:
        for i in range(1, _memory._HOLDER_CAPACITY):
            slots[i] = token  # live stand-ins fill the table
        here, there = FORK.Pipe()
        p = FORK.Process(target=child_attach_hold, args=(seg.name, there))
        p.start()
        assert here.poll(TIMEOUT)
        code, message = here.recv()
        join_all(p)
        assert code == errno.EUSERS
        assert seg.name in message and "live processes" in message
        assert struct.unpack_from("<I", seg.buffer, _memory._OVERFLOW_OFFSET)[0] == 0
        # a dead stand-in frees a slot: the next attach is recorded
        slots[1] = dead_token()
        here, there = FORK.Pipe()
        p = FORK.Process(target=child_attach_hold, args=(seg.name, there))
        p.start()
        assert here.poll(TIMEOUT) and here.recv() is True
        here.send("close")
        assert here.poll(TIMEOUT) and here.recv() == "closed"
        join_all(p)
        for i in range(1, _memory._HOLDER_CAPACITY):
            slots[i] = 0
    finally:
        slots.release()
        seg.close()
    assert not exists(seg.name)


def test_a_reservation_takes_a_slot_and_counts_while_its_process_lives() -> None:
    # a reservation (a forked child's cover, see shoal._memory) is judged by the token
    # under its mark: a full table of live reservations refuses the next holder, and
    # one whose process died is forgotten to make room.  (Spawned children: a forked
    # one would take its parent's reservations over, as it should.)
    spawn = mp.get_context("spawn")
    seg = Segment.create(8)
    reserved = _core.self_token() | _memory._RESERVED
    slots = seg.buffer[_memory._HOLDERS_OFFSET : _memory._KEEPERS_OFFSET].cast("Q")
    try:
        for i in range(1, _memory._HOLDER_CAPACITY):
            slots[i] = reserved
        here, there = spawn.Pipe()
        p = spawn.Process(target=child_attach_hold, args=(seg.name, there))
        p.start()
        assert here.poll(TIMEOUT)
        code, _ = here.recv()
        join_all(p)
        assert code == errno.EUSERS
        assert seg.holders() == [os.getpid()], "a reservation is listed as a holder"
        slots[1] = dead_token() | _memory._RESERVED
        here, there = spawn.Pipe()
        p = spawn.Process(target=child_attach_hold, args=(seg.name, there))
        p.start()
        assert here.poll(TIMEOUT) and here.recv() is True
        here.send("close")
        assert here.poll(TIMEOUT) and here.recv() == "closed"
        join_all(p)
        assert slots[2] == reserved, "a live reservation was forgotten"
        for i in range(1, _memory._HOLDER_CAPACITY):
            slots[i] = 0
    finally:
        slots.release()
        seg.close()
    assert not exists(seg.name)


# ---- threads and forks ----------------------------------------------------------------------


def test_close_does_not_hand_attach_a_segment_being_closed(monkeypatch: Any) -> None:
    # #2: close() dropped the process lock between "last reference gone" and the
    # detach; an attach() in that window got the cached segment back (0 -> 1
    # reference), and the detach then closed it under its feet
    seg = Segment.create(8)
    name = seg.name
    in_detach = threading.Event()
    original = Segment._detach

    def slow_detach(self: Segment) -> None:
        in_detach.set()
        time.sleep(0.2)
        original(self)

    monkeypatch.setattr(Segment, "_detach", slow_detach)
    closer = threading.Thread(target=seg.close)
    closer.start()
    assert in_detach.wait(TIMEOUT)
    try:
        other = Segment.attach(name)
    except shoal.SegmentNotFoundError:
        other = None  # attached after the detach: the segment was gone, as it should be
    closer.join(TIMEOUT)
    assert seg.closed and not exists(name)
    if other is not None:
        closed_under_it = other.closed
        other.close()
        assert not closed_under_it, "attach() returned a segment another thread was closing"


def hold_state_lock(started: threading.Event, seconds: float) -> None:
    with _memory._state.lock:
        started.set()
        time.sleep(seconds)


def test_fork_while_another_thread_holds_the_process_lock() -> None:
    # the fork waits for the lock (taken in os.register_at_fork's before hook), so
    # the child gets a consistent table of attachments and a fresh lock
    seg = Segment.create(256)
    try:
        started = threading.Event()
        holder = threading.Thread(target=hold_state_lock, args=(started, 0.3))
        holder.start()
        assert started.wait(TIMEOUT)
        here, there = FORK.Pipe()
        p = FORK.Process(target=child_read_and_write, args=(seg.name, b"", b"forked", there))
        p.start()
        holder.join(TIMEOUT)
        assert here.poll(TIMEOUT), "the forked child is stuck"
        _, listed = here.recv()
        join_all(p)
        assert p.exitcode == 0 and listed
        assert bytes(seg.buffer[HEADER_SIZE + 100 : HEADER_SIZE + 106]) == b"forked"
        assert seg.holders() == [os.getpid()], "the child did not leave the table"
    finally:
        seg.close()


def test_segments_a_child_creates_go_when_it_exits(ctx: Any) -> None:
    # #2: multiprocessing empties util.Finalize's registry in the children it forks,
    # after the at-fork hooks armed the exit hook there; a forked child that held a
    # segment then left every segment it created in /dev/shm
    keep = Segment.create(8)  # held across the fork: the hook was armed in the parent
    try:
        here, there = ctx.Pipe()
        p = ctx.Process(target=child_create_and_exit, args=(there,))
        p.start()
        assert here.poll(TIMEOUT)
        name = here.recv()
        join_all(p)
        assert p.exitcode == 0
        assert not exists(name), f"{ctx.get_start_method()} child left {name} behind"
    finally:
        keep.close()


# ---- a fork racing the parent's close (#10) ---------------------------------------------
#
# A forked child records itself in the segments it inherits only in its own at-fork hook.
# The scripts below run in a fresh interpreter whose first at-fork hook (registered before
# shoal's, so it runs first in the child) holds the child until the parent sends a byte:
# the parent closes first, as `p.start(); q.put(x); q.close()` often does.
FORK_RACE = """
import os, pickle, signal, subprocess, sys, threading, time
r, w = os.pipe()
held = []

def hold():
    if held:
        os.close(w)  # only the parent releases it (its exit does too: end of file)
        os.read(r, 1)

os.register_at_fork(after_in_child=hold)
import shoal
from shoal import _core, _memory, lowlevel
from shoal.lowlevel import Segment

def on_shm(name):
    return os.path.exists("/dev/shm" + name)

def exit_code(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

def reservations(name):
    # marked entries in the segment's holder table, read without attaching
    with open("/dev/shm" + name, "rb") as f:
        f.seek(_memory._HOLDERS_OFFSET)
        table = f.read(_memory._KEEPERS_OFFSET - _memory._HOLDERS_OFFSET)
    return [h for h in memoryview(table).cast("Q") if h & _memory._RESERVED]

def attach_elsewhere(name):
    # what a spawned process or a Pool task given the handle does: attach by name
    code = f"from shoal.lowlevel import Segment; Segment.attach({name!r}).close()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
"""


def run_fork_race(script: str, timeout: float = 40.0, isolated: bool = False) -> str:
    if isolated:  # (it sweeps: never the machine's /dev/shm)
        return check_isolated(FORK_RACE + textwrap.dedent(script), timeout=timeout)
    done = subprocess.run(
        [sys.executable, "-c", FORK_RACE + textwrap.dedent(script)],
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
    return done.stdout


def test_a_segment_closed_by_the_parent_before_a_forked_child_claims_it_stays() -> None:
    out = run_fork_race(
        """
        seg = Segment.create(8)
        name = seg.name
        held.append(1)
        pid = os.fork()
        if pid == 0:
            # the parent closed its last handle before this child's shoal hook ran
            done = attach_elsewhere(name)
            sys.exit(0 if done.returncode == 0 else 3)  # (exit hooks: it leaves the table)
        held.clear()
        t0 = time.monotonic()
        seg.close()
        took = time.monotonic() - t0
        assert took < 1.0, f"the close waited {took:.2f} s for the child"
        assert on_shm(name), "unlinked under a child that had not claimed it yet"
        assert len(reservations(name)) == 1
        # attached again and closed again while the fork is unsettled: still one
        again = Segment.attach(name)
        assert again.holders() == [os.getpid()], "a reservation is not a holder"
        again.close()
        assert len(reservations(name)) == 1
        os.write(w, b"x")
        assert exit_code(pid) == 0, "the child could not pass the segment on"
        # the child took the reservation over, and was the last to leave: no settle
        # point of the parent's was needed
        assert not on_shm(name), "the reservation outlived the fork"
        print("ok")
        """
    )
    assert out.strip() == "ok"


# (make the object, use it in a process it is passed to, check that use in the child)
PASSED_ON = {
    "queue": (
        'obj = shoal.Queue()\nobj.put("kept")',
        'assert o.get(timeout=10) == "kept"\no.put(2)',
        "obj.get(timeout=10) == 2",
    ),
    "lock": (
        "obj = shoal.Lock()",
        "assert o.acquire(timeout=10)\no.release()",
        "obj.acquire(timeout=1)",
    ),
    "dict": (
        'obj = shoal.SharedDict()\nobj["a"] = 1',
        'assert o["a"] == 1\no["b"] = 2',
        'obj["b"] == 2',
    ),
}


@pytest.mark.parametrize("kind", PASSED_ON)
def test_an_object_the_parent_closed_before_a_forked_child_claimed_can_be_passed_on(
    kind: str,
) -> None:
    # #10: the parent was the last holder: its close unlinked the names (the dict's
    # tables too, freed by its last handle), and the child's object worked only in the
    # child; a Pool task or spawned process given it got SegmentNotFoundError
    make, use, check = PASSED_ON[kind]
    use = f"import pickle, sys\no = pickle.loads(sys.stdin.buffer.read())\n{use}\no.close()"
    run_fork_race(
        make
        + f"""
held.append(1)
pid = os.fork()
if pid == 0:
    done = subprocess.run([sys.executable, "-c", {use!r}], input=pickle.dumps(obj),
                          capture_output=True, timeout=30)
    sys.stderr.write(done.stderr.decode()[-2000:])
    sys.exit(0 if done.returncode == 0 and {check} else 3)  # (exit hooks: it lets go)
held.clear()
obj.close()
os.write(w, b"x")
assert exit_code(pid) == 0, "the child could not pass it on"
"""
    )


# where the parent settles its forks: each must release a dead child's reservation at
# once, waiting on nothing ("close": the child is killed before the parent closes)
SETTLE_POINTS = {
    "close": "",
    "attached_names": "lowlevel.attached_names()",
    "reap": "lowlevel.reap()",
    "create": "Segment.create(8).close()",
    "fork": "other = os.fork()\nif other == 0:\n    os._exit(0)\nassert exit_code(other) == 0",
    "exit": "",
}


@pytest.mark.parametrize("settle", SETTLE_POINTS)
def test_a_child_killed_before_it_claims_pins_nothing(settle: str) -> None:
    # the parent never waits for its child: it learns from a pipe (end of file once the
    # child claimed or died) and releases what it reserved at its next settle point
    kill = "os.kill(pid, signal.SIGKILL)\nassert exit_code(pid) == -signal.SIGKILL\n"
    close = (
        "t0 = time.monotonic()\nseg.close()\n"
        "assert time.monotonic() - t0 < 1.0, 'the close waited for the child'\n"
    )
    if settle == "close":
        steps = kill + close + "assert not on_shm(name), 'pinned by a dead child'\n"
    else:
        steps = (
            close
            + "assert on_shm(name) and len(reservations(name)) == 1, 'not reserved'\n"
            + kill
            + "t0 = time.monotonic()\n"
            + SETTLE_POINTS[settle]
            + "\nassert time.monotonic() - t0 < 0.5, 'settling waited'\n"
        )
        if settle != "exit":
            steps += "assert not on_shm(name), 'pinned by a child killed before it claimed'\n"
    start = textwrap.dedent(
        """
        seg = Segment.create(8)
        name = seg.name
        print(name, flush=True)
        held.append(1)
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # not reached: killed while held in the first at-fork hook
        held.clear()
        """
    )
    out = run_fork_race(start + steps + "print('ok')\n", isolated=settle == "reap").split()
    assert out[-1] == "ok"
    assert not exists(out[0]), "left behind once the parent exited"


def test_forks_from_two_threads_each_keep_what_they_inherited() -> None:
    run_fork_race(
        """
        q = shoal.Queue()
        name = q._segment.name
        pids = []

        def fork():
            pid = os.fork()
            if pid == 0:
                try:
                    pickle.loads(pickle.dumps(q)).close()
                except shoal.SegmentNotFoundError:
                    os._exit(3)
                os._exit(0 if on_shm(name) else 4)
            pids.append(pid)

        held.append(1)
        threads = [threading.Thread(target=fork) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held.clear()
        q.close()
        assert on_shm(name) and len(reservations(name)) == 2, "one a fork"
        os.write(w, b"x")  # one child claims and exits; the other is still held
        first, status = os.wait()
        lowlevel.attached_names()
        assert os.waitstatus_to_exitcode(status) == 0
        assert on_shm(name), "released while a fork that inherited it is unsettled"
        assert len(reservations(name)) == 1, "the first child took over none, or both"
        os.write(w, b"x")
        (second,) = set(pids) - {first}
        assert exit_code(second) == 0
        lowlevel.attached_names()
        assert not on_shm(name)
        """
    )


def test_a_child_that_forks_again_before_the_parent_settled() -> None:
    # the child claims, then forks a grandchild of its own (held), and both the parent
    # and the child close before the grandchild claims: the child's reservation covers it
    run_fork_race(
        """
        q = shoal.Queue()
        name = q._segment.name
        pid = os.fork()  # (not held: `held` is still empty)
        if pid == 0:
            held.append(1)
            grandchild = os.fork()
            if grandchild == 0:
                done = attach_elsewhere(name)
                sys.exit(0 if done.returncode == 0 else 3)  # (exit hooks: it leaves)
            held.clear()
            q.close()
            code = 0 if on_shm(name) and len(reservations(name)) >= 1 else 5
            os.write(w, b"x")
            sys.exit(code or exit_code(grandchild))
        q.close()  # the parent's fork has settled by now, or not: either way
        assert exit_code(pid) == 0, "the grandchild could not pass the queue on"
        lowlevel.attached_names()
        assert not on_shm(name)
        """
    )


def test_a_fork_that_fails_reserves_nothing() -> None:
    # os.fork() raising still runs the at-fork hooks (before, then after_in_parent):
    # the pipe made for the child is at end of file at once, nothing stays reserved,
    # and nothing is left open.  A user beyond RLIMIT_NPROC cannot fork (root can).
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    inner = textwrap.dedent(
        """
        import os, resource
        from shoal import _core
        from shoal.lowlevel import Segment
        _core.self_token()  # (its liveness file stays open for the process's life)
        fds = sorted(os.listdir("/proc/self/fd"))
        seg = Segment.create(8)
        name = seg.name
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        try:
            os.fork()
        except BlockingIOError:
            pass
        else:
            raise SystemExit("the fork did not fail")
        seg.close()
        assert not os.path.exists("/dev/shm" + name), "reserved for a child never born"
        left = sorted(os.listdir("/proc/self/fd"))
        assert left == fds, ("the fork's pipe stayed open", fds, left)
        Segment.create(8).close()  # the hooks let go of the process lock
        print("ok")
        """
    )
    out = check_isolated(
        f"""
        import subprocess
        done = subprocess.run(
            ["setpriv", "--reuid={HOSTILE_USER[0]}", "--regid={HOSTILE_USER[1]}",
             "--clear-groups", {PYTHON!r}, "-c", {inner!r}],
            capture_output=True, text=True, timeout=60)
        print(done.stdout, done.stderr)
        assert done.returncode == 0
        """
    )
    assert out.split()[0] == "ok", out


# ---- references in flight (#4): a pickled handle keeps its segment ------------------------


def child_attach_and_adopt(name: str, conn: Connection) -> None:
    seg = Segment.attach(name)
    seg._end_flight()  # what shoal._handle does when an unpickling adopts the reference
    conn.send((bytes(seg.buffer[HEADER_SIZE : HEADER_SIZE + 5]), seg.in_flight))
    seg.close()


def test_a_segment_with_references_in_flight_outlives_its_last_holder(ctx: Any) -> None:
    seg = Segment.create(64)
    name = seg.name
    seg.buffer[HEADER_SIZE : HEADER_SIZE + 5] = b"hello"
    assert seg.in_flight == 0
    seg._begin_flight()
    assert seg.in_flight == 1
    seg.close()
    # nobody holds it, but a pickled handle to it is on its way: it stays
    assert exists(name)
    assert name not in reap()
    here, there = ctx.Pipe()
    p = ctx.Process(target=child_attach_and_adopt, args=(name, there))
    p.start()
    assert here.poll(TIMEOUT)
    got, in_flight = here.recv()
    join_all(p)
    assert (got, in_flight, p.exitcode) == (b"hello", 0, 0)
    # the receiver was the last holder, with nothing in flight: it unlinked the segment
    assert not exists(name)


def test_references_in_flight_never_go_below_zero() -> None:
    seg = Segment.create(8)
    try:
        seg._end_flight()
        assert seg.in_flight == 0
        seg._begin_flight()
        seg._begin_flight()
        seg._end_flight()
        assert seg.in_flight == 1
        seg._end_flight()
        seg._end_flight()
        assert seg.in_flight == 0
    finally:
        seg.close()
    assert not exists(seg.name)
    with pytest.raises(shoal.ClosedError):
        seg.in_flight  # noqa: B018


def test_lost_references_in_flight_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    # a pickle never unpickled must not keep a segment forever (#4)
    kept = Segment.create(8)
    kept._begin_flight()
    kept.close()
    assert exists(kept.name)
    assert kept.name not in reap()
    monkeypatch.setattr(_memory, "IN_FLIGHT_TIMEOUT_S", 0.0)
    time.sleep(0.01)
    # this one only: a sweep of all /dev/shm with no patience for references in flight
    # would reap those of other shoal programs (test runs) on this machine
    assert _memory._reap_one(kept.name)
    assert not exists(kept.name)
    # and the last holder unlinks a segment whose references in flight expired
    seg = Segment.create(8)
    seg._begin_flight()
    time.sleep(0.01)
    seg.close()
    assert not exists(seg.name)


def test_a_process_that_keeps_creating_segments_sweeps_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweeps: list[float] = []
    original = _memory.reap
    monkeypatch.setattr(_memory, "reap", lambda: sweeps.append(time.monotonic()) or original())
    monkeypatch.setattr(_memory._state, "swept_at", time.monotonic())
    Segment.create(1).close()
    assert sweeps == [], "swept again right after a sweep"
    monkeypatch.setattr(
        _memory._state, "swept_at", time.monotonic() - _memory.IN_FLIGHT_TIMEOUT_S - 1
    )
    Segment.create(1).close()
    assert len(sweeps) == 1
