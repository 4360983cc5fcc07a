"""Shared-memory segments: create, attach, reference count, close, unlink, reap.

Every segment starts with a one-page header::

    offset  size  field
    0       8     magic  b"SHOALSEG"   (written last: a segment without it is unfinished)
    8       4     layout version       (_core.LAYOUT_VERSION)
    12      4     header size          (HEADER_SIZE)
    16      8     total size in bytes  (must equal the file's size)
    24      4     kind                 (KIND_DATA, KIND_ARENA)
    28      4     flags                (FLAG_UNLINKED once the name is gone)
    32      8     creator token
    40      8     creation time, ns since the epoch
    48      4     holder capacity
    52      4     holders not recorded (the table was full)
    64      40    shoal_mutex guarding the holder table
    128     8*N   holder table: the token of each process attached, 0 = free slot

Lifetime.  A process attaches a segment once (``Segment.attach`` is cached per
process) and writes its token into the holder table.  ``close()`` drops the process's
local reference; the last one removes the process from the table, and if no live
holder is left the segment is marked unlinked and its name removed.  A holder that
died (SIGKILL included) is recognised by its token (pid + start time): survivors skip
it when they close.  When *every* holder died, nobody is left to close: the next
shoal process that creates a segment, or ``reap()`` (``python -m shoal doctor
--reap``), sweeps ``/dev/shm`` and removes shoal segments whose holders are all dead.

Forking copies a process's mappings, so the child registers itself as a holder of
every segment it inherits (``os.register_at_fork``), and every process removes
itself at exit, multiprocessing children included (``multiprocessing.util.Finalize``
runs in them where ``atexit`` does not).

Names are ``/shoal-`` plus 20 random hex digits (27 characters: within macOS's 31),
created with O_EXCL and mode 0600, so they are neither guessable nor readable by
other users.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import struct
import threading
import time
from multiprocessing import util
from typing import ClassVar

from . import _core
from ._errors import LayoutError, SegmentNotFoundError, SharedMemoryError

__all__ = ["HEADER_SIZE", "KIND_ARENA", "KIND_DATA", "Segment", "reap"]

MAGIC = int.from_bytes(b"SHOALSEG", "little")
HEADER_SIZE = 4096
NAME_PREFIX = "shoal-"
KIND_DATA = 1
KIND_ARENA = 2
FLAG_UNLINKED = 1

_HEADER = struct.Struct("<QIIQIIQQII")  # magic .. overflow, see the table above
_TABLE_LOCK_OFFSET = 64
_HOLDERS_OFFSET = 128
_HOLDER_CAPACITY = (HEADER_SIZE - _HOLDERS_OFFSET) // 8
_FLAGS_OFFSET = 28
_OVERFLOW_OFFSET = 52
_TABLE_LOCK_TIMEOUT = 30.0
# A segment with no magic yet is being created; only after this long is its creator
# presumed dead mid-creation.
_UNFINISHED_GRACE_S = 60.0
_SHM_DIR = "/dev/shm"


def _new_name() -> str:
    return "/" + NAME_PREFIX + secrets.token_hex(10)


def _shm_free_bytes() -> int | None:
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _no_room_error(size: int, exc: OSError) -> SharedMemoryError:
    free = _shm_free_bytes()
    free_text = f"{free:,} bytes are free" if free is not None else "free space unknown"
    return SharedMemoryError(
        exc.errno,
        f"no room in shared memory for a segment of {size:,} bytes ({free_text} in "
        f"{_SHM_DIR}); free some, or enlarge it (in Docker: --shm-size)",
    )


def _reserve(fd: int, size: int) -> None:
    """Give the segment its size, with the pages really reserved where possible.

    On tmpfs a plain ftruncate makes a sparse file, and touching a page that does not
    fit later kills the process with SIGBUS; posix_fallocate fails here instead.
    """
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise _no_room_error(size, exc) from None
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)


class _ProcessState:
    """Per-process bookkeeping: the attached segments, reset in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.attached: dict[str, Segment] = {}
        self.swept = False
        self.exit_hook: util.Finalize | None = None


_state = _ProcessState()


def _ensure_exit_hook() -> None:
    if _state.exit_hook is None:
        # runs at interpreter exit and at the end of multiprocessing children
        _state.exit_hook = util.Finalize(None, _detach_all, exitpriority=-100)


def _detach_all() -> None:
    with _state.lock:
        segments = list(_state.attached.values())
    for segment in segments:
        segment._detach()


class Segment:
    """A named shared-memory segment with a checked header and holder tracking.

    Use :meth:`create` or :meth:`attach`; both return an object whose ``buffer`` is a
    writable memoryview of the whole segment (header included: offsets below
    :data:`HEADER_SIZE` belong to shoal).  Every ``create``/``attach`` must be
    matched by one ``close``.
    """

    _table_lock: _core.Mutex
    HEADER_SIZE: ClassVar[int] = HEADER_SIZE

    def __init__(self, name: str, mapping: mmap.mmap, kind: int) -> None:
        self.name = name
        self.size = len(mapping)
        self.kind = kind
        self._mmap: mmap.mmap | None = mapping
        self.buffer = memoryview(mapping)
        self._local_refs = 1
        self._table_lock = _core.Mutex()
        self._table_lock._bind(mapping, _TABLE_LOCK_OFFSET, False, False)

    def __repr__(self) -> str:
        state = "attached" if self._mmap is not None else "closed"
        return f"<shoal.lowlevel.Segment {self.name!r} {self.size} bytes, {state}>"

    # ---- creation and attachment -------------------------------------------------------

    @classmethod
    def create(cls, size: int, kind: int = KIND_DATA) -> Segment:
        """Create a new segment with ``size`` bytes after the header.

        Raises:
            SharedMemoryError: no room in ``/dev/shm`` (the message says how much is
                free), or the operating system refused.
            ValueError: ``size`` is negative or not an int.
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"segment size must be an int, not {type(size).__name__}")
        if size < 0:
            raise ValueError(f"segment size must be >= 0, got {size}")
        _ensure_exit_hook()
        if not _state.swept:
            _state.swept = True
            reap()
        total = HEADER_SIZE + size
        name = _new_name()
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        try:
            fd = _core.shm_open(name, flags, 0o600)
        except OSError as exc:
            raise SharedMemoryError(exc.errno, f"cannot create segment {name}: {exc}") from exc
        try:
            _reserve(fd, total)
            mapping = mmap.mmap(fd, total)
        except BaseException:
            os.close(fd)
            _core.shm_unlink(name)
            raise
        os.close(fd)
        token = _core.self_token()
        _HEADER.pack_into(
            mapping,
            0,
            0,
            _core.LAYOUT_VERSION,
            HEADER_SIZE,
            total,
            kind,
            0,
            token,
            time.time_ns(),
            _HOLDER_CAPACITY,
            0,
        )
        struct.pack_into("<Q", mapping, _HOLDERS_OFFSET, token)
        _core.store64(mapping, 0, MAGIC)  # last: the segment is now complete
        segment = cls(name, mapping, kind)
        with _state.lock:
            _state.attached[name] = segment
        return segment

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Attach the segment called ``name`` (or reuse this process's attachment).

        Raises:
            SegmentNotFoundError: no such segment (every holder closed it or died).
            LayoutError: it is not a segment this version of shoal understands.
        """
        if not isinstance(name, str):
            raise TypeError(f"segment name must be a str, not {type(name).__name__}")
        with _state.lock:
            segment = _state.attached.get(name)
            if segment is not None:
                segment._local_refs += 1
                return segment
            _ensure_exit_hook()
            mapping = _open_mapping(name)
            kind = _check_header(name, mapping)
            segment = cls(name, mapping, kind)
            if not segment._add_holder(_core.self_token()):
                segment._release_mapping()
                raise SegmentNotFoundError(
                    errno.ENOENT, f"shared-memory segment {name!r} was already released"
                )
            _state.attached[name] = segment
            return segment

    # ---- holder table --------------------------------------------------------------------

    # u32 header fields that change; only touched with the table lock held
    def _field(self, offset: int) -> int:
        return struct.unpack_from("<I", self.buffer, offset)[0]

    def _set_field(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.buffer, offset, value)

    def _holders_view(self) -> memoryview:
        return self.buffer[_HOLDERS_OFFSET:HEADER_SIZE].cast("Q")

    def _lock_table(self) -> None:
        if not self._table_lock.acquire(True, _TABLE_LOCK_TIMEOUT):
            raise SharedMemoryError(
                errno.EDEADLK,
                f"holder table of {self.name} stayed locked for "
                f"{_TABLE_LOCK_TIMEOUT:.0f} s; the segment looks corrupt",
            )

    def _add_holder(self, token: int) -> bool:
        """Record ``token`` as a holder; False if the segment was already unlinked."""
        self._lock_table()
        try:
            if self._field(_FLAGS_OFFSET) & FLAG_UNLINKED:
                return False
            holders = self._holders_view()
            try:
                for _ in range(2):
                    for i, holder in enumerate(holders):
                        if holder == 0:
                            holders[i] = token
                            return True
                    # full: forget dead holders, then try once more
                    for i, holder in enumerate(holders):
                        if not _core.token_alive(holder):
                            holders[i] = 0
                self._set_field(_OVERFLOW_OFFSET, self._field(_OVERFLOW_OFFSET) + 1)
                return True
            finally:
                holders.release()
        finally:
            self._table_lock.release()

    def _remove_holder_and_maybe_unlink(self, token: int) -> bool:
        """Remove ``token``; unlink if no live holder is left.  True if unlinked."""
        self._lock_table()
        try:
            holders = self._holders_view()
            try:
                for i, holder in enumerate(holders):
                    if holder == token:
                        holders[i] = 0
                        break
                live = any(h and _core.token_alive(h) for h in holders)
            finally:
                holders.release()
            if live or self._field(_OVERFLOW_OFFSET):
                return False
            self._set_field(_FLAGS_OFFSET, self._field(_FLAGS_OFFSET) | FLAG_UNLINKED)
            try:
                _core.shm_unlink(self.name)
            except FileNotFoundError:
                pass
            return True
        finally:
            self._table_lock.release()

    def holders(self) -> list[int]:
        """Pids of the processes recorded as holding this segment (dead ones included)."""
        holders = self._holders_view()
        try:
            return [h >> 32 for h in holders if h]
        finally:
            holders.release()

    # ---- closing ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once this process no longer holds the segment."""
        return self._mmap is None

    def close(self) -> None:
        """Drop one reference; the last one in this process detaches it.

        Detaching removes this process from the holder table and removes the segment
        itself when no live process holds it any more.  Memory already handed out
        (views, objects) stays valid in this process until they are gone.
        """
        with _state.lock:
            if self._mmap is None:
                return
            self._local_refs -= 1
            if self._local_refs > 0:
                return
        self._detach()

    def _detach(self) -> None:
        with _state.lock:
            if self._mmap is None:
                return
            if _state.attached.get(self.name) is self:
                del _state.attached[self.name]
            self._local_refs = 0
            try:
                self._remove_holder_and_maybe_unlink(_core.self_token())
            finally:
                self._release_mapping()

    def _release_mapping(self) -> None:
        # The mapping is not closed explicitly: objects bound into it keep the mmap
        # alive and it is unmapped when the last of them goes, never under their feet.
        self._table_lock._unbind()
        self.buffer.release()
        self._mmap = None


def _open_mapping(name: str) -> mmap.mmap:
    try:
        fd = _core.shm_open(name, os.O_RDWR, 0o600)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            errno.ENOENT,
            f"no shared-memory segment {name!r}: every process that held it closed it or died",
        ) from None
    except OSError as exc:
        raise SharedMemoryError(exc.errno, f"cannot open segment {name!r}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise LayoutError(
                errno.EINVAL,
                f"{name!r} is {size} bytes, smaller than a shoal header: "
                "not a shoal segment, or one whose creation failed",
            )
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _check_header(name: str, mapping: mmap.mmap) -> int:
    magic, version, header_size, total, kind, *_ = _HEADER.unpack_from(mapping, 0)
    problem = None
    if magic != MAGIC:
        problem = f"bad magic number {magic:#018x}: not a shoal segment"
    elif version != _core.LAYOUT_VERSION:
        problem = (
            f"layout version {version}, but this shoal reads version "
            f"{_core.LAYOUT_VERSION}: it was made by an incompatible shoal"
        )
    elif header_size != HEADER_SIZE or total != len(mapping):
        problem = (
            f"header says {header_size}/{total} bytes but the segment is "
            f"{HEADER_SIZE}/{len(mapping)}: it is corrupt"
        )
    if problem:
        raise LayoutError(errno.EINVAL, f"refusing shared-memory segment {name!r}: {problem}")
    return kind


def _after_fork_in_child() -> None:
    global _state
    parent = _state
    _state = _ProcessState()
    _state.swept = True
    token = _core.self_token()
    for name, segment in parent.attached.items():
        if segment._mmap is not None and segment._add_holder(token):
            _state.attached[name] = segment
    if _state.attached:
        _ensure_exit_hook()


def _before_fork() -> None:
    _state.lock.acquire()


def _after_fork_in_parent() -> None:
    _state.lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def attached_names() -> set[str]:
    """Names of the segments this process holds now (for leak checks)."""
    with _state.lock:
        return set(_state.attached)


def reap() -> list[str]:
    """Remove shoal segments whose holders all died; return their names.

    Sweeps ``/dev/shm`` where the platform has it (Linux); elsewhere it has nothing
    to list and returns ``[]``.  Segments of other users are skipped (mode 0600).
    """
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    reaped = []
    for entry in entries:
        if entry.startswith(NAME_PREFIX) and _reap_one("/" + entry):
            reaped.append("/" + entry)
    return reaped


def _reap_one(name: str) -> bool:
    with _state.lock:
        if name in _state.attached:
            return False
    try:
        fd = _core.shm_open(name, os.O_RDWR, 0o600)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_size < HEADER_SIZE:
            if time.time() - st.st_mtime > _UNFINISHED_GRACE_S:
                _unlink_quietly(name)
                return True
            return False
        mapping = mmap.mmap(fd, HEADER_SIZE)
    finally:
        os.close(fd)
    magic, version = struct.unpack_from("<QI", mapping, 0)
    if magic != MAGIC:
        if magic == 0 and time.time() - st.st_mtime > _UNFINISHED_GRACE_S:
            _unlink_quietly(name)
            return True
        return False
    if version != _core.LAYOUT_VERSION:
        return False  # another shoal's segment: its own sweeps judge it
    lock = _core.Mutex()
    lock._bind(mapping, _TABLE_LOCK_OFFSET, False, False)
    try:
        if not lock.acquire(True, 1.0):
            return False
        try:
            holders = struct.unpack_from(f"<{_HOLDER_CAPACITY}Q", mapping, _HOLDERS_OFFSET)
            overflow = struct.unpack_from("<I", mapping, _OVERFLOW_OFFSET)[0]
            if overflow or any(h and _core.token_alive(h) for h in holders):
                return False
            struct.pack_into("<I", mapping, _FLAGS_OFFSET, FLAG_UNLINKED)
            _unlink_quietly(name)
            return True
        finally:
            lock.release()
    finally:
        lock._unbind()


def _unlink_quietly(name: str) -> None:
    try:
        _core.shm_unlink(name)
    except OSError:
        pass
