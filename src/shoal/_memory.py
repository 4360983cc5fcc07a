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
    52      4     holders not recorded (written by no shoal since #10; still honoured)
    56      8     references in flight: handles pickled and not yet unpickled
    64      40    shoal_mutex guarding the holder table
    104     8     when the last reference in flight was taken, ns since the epoch
    112     8     references kept by containers that found no free keeper entry
    128     8*N   holder table: the token of each process attached, 0 = free slot;
                  bit 63 set: a reservation for forked children (see "Forking")
    3072    32*K  keeper table: references kept by containers (queues, dicts), one
                  entry per container: u64 count, 20 ASCII bytes naming the container's
                  segment (the hex digits after "/shoal-"), 4 bytes zero

A ledger (KIND_LEDGER) is one process's record of the object references it holds
(``shoal._handle``); that process is its only holder, a forked child does not inherit
it, and the sweep that reaps it once its process died hands its bytes to the
reclaimer ``shoal._handle`` set (:func:`set_ledger_reclaimer`), which gives the
references back.

A transit segment (KIND_TRANSIT) has no holder table; in its place it names its
parent::

    128     64    the parent segment's name (ASCII, NUL-padded)
    192     8     the parent object's header offset in it (0: the whole segment)
    200     8     the parent object's serial (shoal._handle)

Lifetime.  A process attaches a segment once (``Segment.attach`` is cached per
process) and writes its token into the holder table.  ``close()`` drops the process's
local reference; the last one removes the process from the table, and if no live
holder is left the segment is marked unlinked and its name removed.  A holder that
died (SIGKILL included) is recognised by its token (pid + start time): survivors skip
it when they close.  When *every* holder died, nobody is left to close: the next
shoal process that creates a segment, or ``reap()`` (``python -m shoal doctor
--reap``), sweeps ``/dev/shm`` and removes shoal segments whose holders are all dead.
(A process that keeps creating segments sweeps again every ``IN_FLIGHT_TIMEOUT_S``.)
A table is full at ``_HOLDER_CAPACITY`` live holders: the next one is refused, since a
holder the table does not name could never be told dead (#10).

The sweep (#10).  Another user can plant files named ``shoal-*`` in ``/dev/shm``; root
could open them.  So the reaper judges only names of the form :func:`_new_name` makes
that are this user's regular files (``lstat``, then ``fstat`` on what was opened with
``O_NOFOLLOW | O_NOCTTY | O_NONBLOCK``), reads their headers with ``pread`` (a file
that shrank gives a short read, not a SIGBUS), maps a header page only to take the
final decision on one that looks unheld, and only tries its table's mutex: one locked
by a live process is left for a later sweep.  No file costs any waiting.  A file
without its magic number is unfinished: removed at once if the creator token in its
header is dead, else after ``_UNFINISHED_GRACE_S``.  (On Linux none is ever seen: a
segment is named only once complete, see "Names" below.  Elsewhere a creator writes
its header page before it reserves the rest or writes any data, so only one killed
between creating the file and that write leaves a file that names nobody.)  A
transit segment is removed once its parent object is gone (:func:`_parent_gone`).

Liveness files (#10).  Every shoal process holds its own
``/dev/shm/shoal-live-<token>`` locked for life (``shoal_core.h``), so that processes
of another PID namespace can tell whether it died.  The sweep removes one once its
lock is free (its process died without removing it at exit); never one whose lock is
held, never another user's, and never this process's own (matched by name, never
opened).  A ``<name>.tmp`` (a process killed while making its file) is removed once
free and its process is dead, or after ``_UNFINISHED_GRACE_S`` when that cannot be
told (another namespace's).  A process removes its own at exit, after its segments
(:data:`LIVENESS_EXIT_PRIORITY`).  They are not segments: the sweep and everything
that opens segments by name (``_NAME_PATTERN``) never take one for a segment.

References in flight (#4).  A handle that was pickled and not yet unpickled — a
``Pool`` worker's return value after the worker exited, a lock sent through a pipe by
a process that then dropped it — must keep its segment even when no process holds it
any more.  ``shoal._handle`` counts each pickled handle here (``_begin_flight``) and
the unpickling that adopts it takes it back (``_end_flight``); the last holder does
not unlink a segment with references in flight.  A pickle that is never unpickled
must not keep its segment forever, so the count carries the time of the latest
pickle: once that is more than ``IN_FLIGHT_TIMEOUT_S`` (10 minutes) ago, the
references count as lost, and a segment with no live holder is unlinked by its last
holder or reaped as any other.

References kept by containers (#10).  A pickle that a shoal container holds — a record
waiting in a ``Queue``, a value stored in a ``SharedDict`` — is not lost however long
it waits: the container can still hand it out.  So its references move from the
in-flight count to the *keeper table*, under the container's name (``_keep``), and go
when the container gives them up (``_unkeep``: the record was received, the value
removed).  They never expire; they count only while their container's segment
exists, so what a container that died (reaped with its holders) still kept is
reclaimed with it, by the same sweep or the next.  A segment naming itself as keeper
(a dict stored in itself) does not keep itself; a longer cycle keeps its segments
until one of them is cleared.  More containers than the table has entries (32) are
counted in one overflow word, which cannot name them: the segment is then kept until
they give their references back, and for ever if one of them dies keeping some (a
leak, never an early free).

Forking (#10).  Forking copies a process's mappings, so the child records itself as a
holder of every segment it inherits, in its at-fork hook (``os.register_at_fork``).
That hook may run late: hooks registered before shoal's run first in the child, and
one may wait for the parent; meanwhile the parent may close its last handle
(``p.start(); q.put(x); q.close()``).  Were the parent then the last holder, the name
would be unlinked: the child keeps its mapping but could not hand the object on to
a Pool task or a spawned process.  So a fork is *unsettled* until every child it made
has recorded itself or died, and the parent learns which without ever waiting, and
without knowing the child's pid:

- before each fork of a process that holds segments, it makes a pipe
  (close-on-exec) for that fork; it closes its copy of the write end right after the
  fork (fork() failing included: the pipe is then at end of file at once);
- the child's hook, in a ``finally`` once it recorded itself everywhere, closes the
  write end of every fork under way that it inherited, and the read ends of its
  parent's unsettled forks;
- end of file on the read end (a non-blocking read) means the fork has settled:
  every process that had the write end (the child, or a grandchild it forked before
  its own hook ran) closed it, or died;
- a segment the parent closes while forks made since it attached it are unsettled is
  not left: the parent writes one *reservation* for each such fork, its token with
  bit 63 set (:data:`_RESERVED`; tokens never have it, see ``shoal_core.h``), the
  first in place of its own entry.  It keeps its mapping, to reach the table later.
  A reservation counts as a live holder while the process that made it lives (the
  token under the mark judges it, for every reaper), and is not listed by
  :meth:`Segment.holders`;
- the child's hook takes the reservation in place of its parent's entry over as its
  own (it inherited where that is: no search, in every segment it inherits), else
  adds its entry as before: a child that then leaves as usual is the last holder as
  usual, and unlinks.  Of children of several forks unsettled at once, one takes it
  over; the parent's other reservations wait until it settles those forks;
- at every fork, creation, attach, close and sweep, at ``attached_names()`` and at
  exit, the parent polls its unsettled forks (:func:`_settle_forks`); once all the
  forks a segment's reservations were made for have settled, those no child took
  over (its child died first, or had recorded itself before the close) are removed,
  and the segment unlinked if nothing else keeps it, as a close would have;
- a layer above that asks whether another process still uses a segment
  (``Segment._held_elsewhere``: a ``SharedDict``'s last handle, before it frees the
  tables) is told yes while a fork that inherited it is unsettled.

Nothing is written into any segment before a fork; a fork costs one pipe, and a close
made while a fork is unsettled costs one table update, as any close does (the eager
alternative, reservations written into every segment held before each fork, costs a
table update per segment on every fork).  A child
killed before its hook ran pins nothing once its parent next settles.  What remains: a
parent that exits (or dies) before its child recorded itself leaves reservations that
count as dead from then on, so a sweep in between can still remove what that child
inherited (the window is the child's first at-fork hooks); a fork made outside
Python's hooks (a C library's ``fork()`` in another thread, with no exec) that copied
a write end keeps that fork unsettled, and the parent's reservations, while it lives.

A segment its holder *keeps for its children* (``Segment.kept_for_children``, set by
``shoal._handle.keep_for_children`` for a pool's rings and slots) is not recorded by a
forked child at all: the child uses the mapping it inherited and has no entry to
remove.  Only for a segment whose creator outlives every child that uses it, and
closes it only once they are gone: a pool, whose workers each recorded themselves in
three tables and left them again, a tenth of a one-task pool's start (#11).  If the
creator dies first, a sweep unlinks the segment while such a child still has it
mapped, which it keeps using until it notices and exits.

Every process removes itself at exit, multiprocessing children included
(``multiprocessing.util.Finalize`` runs in them where ``atexit`` does not).
multiprocessing empties the Finalize registry in every child it forks, after
``os.register_at_fork`` hooks ran, so exit hooks are re-armed from
``util.register_after_fork`` too (:class:`ExitHook`).

Re-entrancy.  A garbage-collection pass can run a finalizer at any allocation,
including while this thread holds a process-shared mutex (a holder table's, an
arena's); those mutexes are not recursive, so a finalizer that needed the same one
would wait for itself.  Code holding one runs inside :func:`shared_section`, and
finalizers go through :func:`call_outside_sections`, which defers them to the end of
the outermost section.

Names are ``/shoal-`` plus 20 random hex digits (27 characters: within macOS's 31),
created with O_EXCL and mode 0600, so they are neither guessable nor readable by
other users.  On Linux a segment is built in an unnamed file of ``/dev/shm``
(``O_TMPFILE``) and linked under its name (which fails if taken, as O_EXCL does) only
once complete, magic included: no process ever sees a half-made one, and a creator
killed half way leaves nothing behind (#10).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import util
from typing import Any, ClassVar, NamedTuple

from . import _core
from ._errors import ClosedError, LayoutError, SegmentNotFoundError, SharedMemoryError

__all__ = [
    "HEADER_SIZE",
    "IN_FLIGHT_TIMEOUT_S",
    "KEEPER_ID_SIZE",
    "KIND_ARENA",
    "KIND_DATA",
    "KIND_LEDGER",
    "KIND_TRANSIT",
    "SEGMENT_LEFTOVER",
    "SEGMENT_LIVE",
    "SEGMENT_UNKNOWN",
    "ExitHook",
    "Segment",
    "SegmentReport",
    "call_outside_sections",
    "discard_transit",
    "keeper_id",
    "liveness_files",
    "open_transit",
    "reap",
    "reap_liveness",
    "report_unraisable",
    "segment_report",
    "set_ledger_reclaimer",
    "shared_section",
    "write_transit",
]

MAGIC = int.from_bytes(b"SHOALSEG", "little")
HEADER_SIZE = 4096
NAME_PREFIX = "shoal-"
KIND_DATA = 1
KIND_ARENA = 2
# a one-reader message: holds no holder table but its parent queue's name (_serialize)
KIND_TRANSIT = 3
# one process's record of the object references it holds (shoal._handle's ledger):
# its only holder is that process, and a sweep that reaps it gives them back
KIND_LEDGER = 4
FLAG_UNLINKED = 1

_HEADER = struct.Struct("<QIIQIIQQII")  # magic .. overflow, see the table above
_TABLE_LOCK_OFFSET = 64
_HOLDERS_OFFSET = 128
_KEEPERS_OFFSET = 3072
_HOLDER_CAPACITY = (_KEEPERS_OFFSET - _HOLDERS_OFFSET) // 8
_KEEPER_ENTRY_SIZE = 32
_KEEPER_CAPACITY = (HEADER_SIZE - _KEEPERS_OFFSET) // _KEEPER_ENTRY_SIZE
_KEEPER_OVERFLOW_OFFSET = 112
# a keeper is named by the 20 hex digits of its segment's name (see _new_name)
KEEPER_ID_SIZE = 20
_FLAGS_OFFSET = 28
_OVERFLOW_OFFSET = 52
_IN_FLIGHT_OFFSET = 56
_IN_FLIGHT_TIME_OFFSET = 104
_TABLE_LOCK_TIMEOUT = 30.0
# A holder-table entry with this bit is a reservation: the token below it (a process's
# own) stands in for the children it forked that may not have recorded themselves yet
# (see "Forking" above).  Tokens never have bits 62-63 (shoal_core.h); in a holder table
# nothing else uses them (the marks of waitlists and mutexes live in their own words).
_RESERVED = 1 << 63
_TOKEN_BITS = _RESERVED - 1
# A segment with no magic yet is being created; only after this long is its creator
# presumed dead mid-creation.
_UNFINISHED_GRACE_S = 60.0
_SHM_DIR = "/dev/shm"
# How long a pickled handle keeps a segment nobody holds: a pickle that was never
# unpickled (dropped, or its receiver died first) is presumed lost after this long,
# counted from the segment's latest pickle.  Generous on purpose: a Pool result can
# wait in a pipe while the parent is busy.  Also how often a process that keeps
# creating segments sweeps /dev/shm again.
IN_FLIGHT_TIMEOUT_S = 600.0
# exit priorities (multiprocessing.util.Finalize: higher runs first).  Segments go
# last, after the objects inside them (shoal._handle) and after multiprocessing's
# own queue feeders (-5), which may still be pickling handles to them.
SEGMENT_EXIT_PRIORITY = -100
# this process's liveness file goes after its segments: until they are let go it must
# not look dead to another PID namespace
LIVENESS_EXIT_PRIORITY = SEGMENT_EXIT_PRIORITY - 1
# the largest size mmap and posix_fallocate accept
_MAX_SIZE = sys.maxsize - HEADER_SIZE


def _new_name() -> str:
    # os.urandom is what secrets.token_hex reads; importing secrets would load hashlib
    # and OpenSSL (4 MB more in every process, copied at every fork: #11)
    return "/" + NAME_PREFIX + os.urandom(KEEPER_ID_SIZE // 2).hex()


def keeper_id(name: str) -> bytes:
    """The 20 ASCII bytes that name the segment ``name`` as a keeper of references."""
    kid = name[1 + len(NAME_PREFIX) :].encode("ascii")
    if len(kid) != KEEPER_ID_SIZE or not name.startswith("/" + NAME_PREFIX):
        raise ValueError(f"{name!r} is not the name of a shoal segment")
    return kid


def _keeper_exists(kid: bytes) -> bool:
    """Whether the container named ``kid`` still exists (in doubt: True)."""
    if len(kid) != KEEPER_ID_SIZE or kid.strip(b"0123456789abcdef"):
        return False  # names no shoal segment: a corrupt entry keeps nothing
    try:
        fd = _core.shm_open("/" + NAME_PREFIX + kid.decode("ascii"), os.O_RDONLY, 0o600)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    os.close(fd)
    return True


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


# Where it can (Linux), a new segment is built in an unnamed file of /dev/shm
# (O_TMPFILE) and linked under its name only once complete, so that a creator killed
# half way leaves nothing any process could see, let alone has to reap (#10: one killed
# between creating the file and writing its header left an empty file, which named no
# creator and was kept for _UNFINISHED_GRACE_S).  Elsewhere, or where the kernel refuses
# to create or to link such a file (found out once, at the first segment), the file is
# made under its name (O_CREAT | O_EXCL) and its header page, with the creator's token,
# is written at once.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_unnamed_files = bool(_O_TMPFILE) and sys.platform.startswith("linux")
# errors that mean this system does not do it, not that this segment failed
_NOT_HERE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EXDEV,
             errno.EPERM, errno.EACCES, errno.ENOSYS}  # fmt: skip


class _NamedFromNowOn(Exception):
    """This system cannot name an unnamed file: build the segment again, named."""


def _create_file(name: str, header: bytes, total: int) -> tuple[int, bool]:
    """Open a new file for the segment ``name``, its header page (all but the magic)
    written: (fd, unnamed).  An unnamed one gets its name from :func:`_publish`."""
    global _unnamed_files
    fd = None
    if _unnamed_files:
        try:
            fd = os.open(_SHM_DIR, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                raise _no_room_error(total, exc) from None
            if exc.errno not in _NOT_HERE:
                raise SharedMemoryError(exc.errno, f"cannot create segment {name}: {exc}") from exc
            _unnamed_files = False
    unnamed = fd is not None
    if fd is None:
        try:
            fd = _core.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise SharedMemoryError(exc.errno, f"cannot create segment {name}: {exc}") from exc
    try:
        # (before anything that takes a while: a named file has its creator's token
        # before its pages are reserved or its data written)
        os.pwrite(fd, header, 0)
    except BaseException as exc:
        os.close(fd)
        if not unnamed:
            _unlink_quietly(name)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _no_room_error(total, exc) from None
        raise
    return fd, unnamed


def _build_file(name: str, header: bytes, total: int) -> mmap.mmap:
    """Make the complete file of segment ``name`` (``total`` bytes, ``header`` first,
    the magic last) and return its mapping; nothing is left if it fails."""
    while True:
        fd, unnamed = _create_file(name, header, total)
        named = not unnamed
        try:
            _reserve(fd, total)
            if named:
                mapping = mmap.mmap(fd, total)
                _core.store64(mapping, 0, MAGIC)  # last: the segment is now complete
                return mapping
            os.pwrite(fd, _MAGIC_BYTES, 0)  # complete: it may have its name now
            _publish(fd, name)
            named = True
            # mapped by its name, as every other process maps it (an unnamed file's
            # mapping shows in /proc/<pid>/maps as "/dev/shm/#... (deleted)")
            by_name = _core.shm_open(name, os.O_RDWR, 0o600)
            try:
                return mmap.mmap(by_name, total)
            finally:
                os.close(by_name)
        except _NamedFromNowOn:
            continue
        except BaseException:
            if named:
                _unlink_quietly(name)
            raise
        finally:
            os.close(fd)


def _publish(fd: int, name: str) -> None:
    """Give the complete unnamed file open as ``fd`` the name ``name``.

    Raises:
        _NamedFromNowOn: this system cannot (the caller builds the segment again,
            named; every later one is named from the start).
    """
    global _unnamed_files
    try:
        _core.link_fd(fd, _SHM_DIR + name)
    except OSError as exc:
        if exc.errno in _NOT_HERE:
            _unnamed_files = False
            raise _NamedFromNowOn() from None
        raise SharedMemoryError(exc.errno, f"cannot create segment {name}: {exc}") from exc


class ExitHook:
    """A ``multiprocessing.util.Finalize`` exit callback that survives every kind of fork.

    ``util.Finalize`` runs at interpreter exit and at the end of multiprocessing
    children (where ``atexit`` does not), but a finalizer inherited through a fork
    is skipped in the child (it checks the pid), and multiprocessing empties the
    whole registry in the children it forks.  :meth:`arm` registers the callback
    once per process; the hook re-arms itself in a child forked by ``os.fork`` (from
    ``os.register_at_fork``, via :meth:`rearm_in_child`) and in a multiprocessing
    child after the registry was emptied (``util.register_after_fork``), provided
    it was armed in the parent.
    """

    def __init__(self, callback: Callable[[], None], exitpriority: int) -> None:
        self._callback = callback
        self._exitpriority = exitpriority
        self._finalizer: util.Finalize | None = None
        self._pid = 0
        self._armed = False
        # kept alive by the module that owns the hook, so the weak registry keeps it
        util.register_after_fork(self, ExitHook._after_multiprocessing_fork)

    def arm(self) -> None:
        """Make sure the callback runs when this process exits (idempotent)."""
        finalizer = self._finalizer
        if finalizer is not None and self._pid == os.getpid() and finalizer.still_active():
            return
        self._finalizer = util.Finalize(None, self._callback, exitpriority=self._exitpriority)
        self._pid = os.getpid()
        self._armed = True

    def rearm_in_child(self, needed: bool) -> None:
        """After a fork: arm again if the parent had armed it and ``needed``."""
        if self._armed and needed:
            self._finalizer = None
            self.arm()
        else:
            self._finalizer = None
            self._armed = False

    def _after_multiprocessing_fork(self) -> None:
        # runs after multiprocessing emptied the registry in its child
        if self._armed:
            self._finalizer = None
            self.arm()


# ---- shared sections: no finalizer runs while this thread holds a shared mutex ----------

_sections = threading.local()


class _SharedSection:
    """The context manager :func:`shared_section` returns (a class, not a generator:
    every reference a process takes or gives back enters one)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _sections.depth = getattr(_sections, "depth", 0) + 1

    def __exit__(self, *exc_info: Any) -> None:
        depth = _sections.depth - 1
        _sections.depth = depth
        if depth == 0:
            _run_deferred()


_SECTION = _SharedSection()


def shared_section() -> _SharedSection:
    """Mark code that holds a process-shared mutex; finalizers wait until it ends."""
    return _SECTION


def call_outside_sections(func: Callable[..., Any], *args: Any) -> None:
    """Call ``func(*args)`` now, or when this thread leaves its shared sections."""
    if getattr(_sections, "depth", 0):
        pending = getattr(_sections, "pending", None)
        if pending is None:
            pending = _sections.pending = []
        pending.append((func, args))
        return
    func(*args)


def _run_deferred() -> None:
    while True:
        pending = getattr(_sections, "pending", None)
        if not pending:
            return
        func, args = pending.pop(0)
        try:
            func(*args)
        except Exception as exc:  # a finalizer's failure is not the section owner's
            report_unraisable(exc)


class _Unraisable:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __del__(self) -> None:
        raise self.exc


def report_unraisable(exc: BaseException) -> None:
    """Report ``exc`` the way CPython reports an exception raised in a finalizer.

    ("Exception ignored in ...", through ``sys.unraisablehook``, which test runners
    watch.)  Used where a finalizer was deferred or batched and must not raise into
    unrelated code.
    """
    _Unraisable(exc)  # dropped at once: its __del__ raises, and CPython reports it


class _ProcessState:
    """Per-process bookkeeping: the attached segments, reset in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.attached: dict[str, Segment] = {}
        # when this process last swept /dev/shm (time.monotonic()), None: never
        self.swept_at: float | None = None
        # forks (see "Forking" above): numbered in order; each Segment remembers the
        # number of the last fork before it was attached
        self.fork_seq = 0
        # forks whose child (or children) may still be recording themselves, by number
        self.forks: dict[int, _Fork] = {}
        # forks under way: their pipe's write end is still open in this process
        self.in_progress: list[_Fork] = []
        # segments this process closed while a fork that inherited them was unsettled
        self.reserved: dict[str, _Reservation] = {}
        # segments its parent keeps for it (see "kept for its children" above): mapped,
        # usable, not held
        self.borrowed: dict[str, Segment] = {}


_state = _ProcessState()


def _detach_all() -> None:
    _settle_forks()
    with _state.lock:
        segments = list(_state.attached.values())
    for segment in segments:
        try:
            segment._detach()
        except Exception as exc:  # one stuck table must not keep the others attached
            report_unraisable(exc)
    # what is still reserved here is for children that have not recorded themselves yet:
    # it stays in their tables, and counts as dead once this process is gone


# removes this process from every segment it still holds, at exit (see ExitHook)
_exit_hook = ExitHook(_detach_all, SEGMENT_EXIT_PRIORITY)


def _ensure_exit_hook() -> None:
    _exit_hook.arm()


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
        # set once _detach starts: a finalizer run by garbage collection in the middle
        # of it must not start a second detach of the same segment
        self._detaching = False
        self._table_lock = _core.Mutex()
        self._table_lock._bind(mapping, _TABLE_LOCK_OFFSET, False, False)
        # the number of the last fork before this attachment: later forks inherited it
        self._attach_seq = _state.fork_seq
        # where this process's entry is in the holder table (-1: not known).  A forked
        # child inherits its parent's: where a reservation for it is looked for
        self._slot = -1
        # a forked child does not record itself (see "kept for its children" above)
        self.kept_for_children = False

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
            TypeError: ``size`` or ``kind`` is not an int.
            ValueError: ``size`` is negative or beyond what can be mapped, or ``kind``
                is not a positive 32-bit number.
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"segment size must be an int, not {type(size).__name__}")
        if size < 0:
            raise ValueError(f"segment size must be >= 0, got {size}")
        if size > _MAX_SIZE:
            raise ValueError(f"segment size {size:,} is larger than any mapping can be")
        if not isinstance(kind, int) or isinstance(kind, bool):
            raise TypeError(f"segment kind must be an int, not {type(kind).__name__}")
        if not 0 < kind < 2**32:
            raise ValueError(f"segment kind must be in 1 .. 2**32-1, got {kind}")
        _ensure_exit_hook()
        _settle_forks()
        now = time.monotonic()
        if _state.swept_at is None or now - _state.swept_at > IN_FLIGHT_TIMEOUT_S:
            # the first creation in a process sweeps, and a long-lived process sweeps
            # again now and then: segments kept only by lost pickles expire (#4)
            _state.swept_at = now
            reap()
        total = HEADER_SIZE + size
        name = _new_name()
        token = _core.self_token()
        header = bytearray(HEADER_SIZE)
        _HEADER.pack_into(
            header,
            0,
            0,  # the magic: stored last, below
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
        struct.pack_into("<Q", header, _HOLDERS_OFFSET, token)
        try:
            mapping = _build_file(name, header, total)
        except SharedMemoryError as exc:
            if not _make_room(exc):
                raise
            mapping = _build_file(name, header, total)  # (once more, with the room made)
        segment = cls(name, mapping, kind)
        segment._slot = 0
        with _state.lock:
            segment._attach_seq = _state.fork_seq
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
            _settle_forks()
            mapping = _open_mapping(name)
            kind = _check_header(name, mapping)
            segment = cls(name, mapping, kind)
            try:
                added = segment._add_holder(_core.self_token())
            except BaseException:
                segment._release_mapping()
                raise
            if not added:
                segment._release_mapping()
                raise SegmentNotFoundError(
                    errno.ENOENT,
                    f"shared-memory segment {name!r} was already released: every "
                    "process that held it closed it or died",
                )
            _state.attached[name] = segment
            return segment

    # ---- holder table --------------------------------------------------------------------

    # a u32 header field that changes; only read with the table lock held
    def _field(self, offset: int) -> int:
        return struct.unpack_from("<I", self.buffer, offset)[0]

    def _holders_view(self) -> memoryview:
        return self.buffer[_HOLDERS_OFFSET:_KEEPERS_OFFSET].cast("Q")

    def _table_locked(self) -> contextlib.AbstractContextManager[None]:
        return _table_locked(self._table_lock, self.name)

    def _add_holder(self, token: int, reserved_by: int = 0) -> bool:
        """Record ``token`` as a holder; False if the segment was already unlinked.

        A forked child passes its parent's token as ``reserved_by``: a reservation the
        parent left for its children (see "Forking" above) in place of its own entry
        becomes the child's (found where the parent's entry was: no search, as the
        child does this for every segment it inherits).

        Raises:
            SharedMemoryError: the table is full of live holders (EUSERS).  A holder
                that is not in the table could not be told dead once killed, and the
                segment would stay forever (#10: before, it was counted in the
                header's overflow field, which no sweep could ever count down).
        """
        with self._table_locked():
            if self._field(_FLAGS_OFFSET) & FLAG_UNLINKED:
                return False
            holders = self._holders_view()
            try:
                # (none there: the parent had not closed it, or a sibling forked at about
                # the same time took it; the parent's other reservations for such forks
                # then wait until it settles them)
                at = self._slot
                if (
                    reserved_by
                    and 0 <= at < len(holders)
                    and holders[at] == reserved_by | _RESERVED
                ):
                    holders[at] = token
                    return True
                for _ in range(2):
                    for i, holder in enumerate(holders):
                        if holder == 0:
                            holders[i] = token
                            self._slot = i
                            return True
                    # full: forget dead holders (and reservations of dead processes),
                    # then try once more
                    for i, holder in enumerate(holders):
                        if not _holder_alive(holder):
                            holders[i] = 0
            finally:
                holders.release()
        raise SharedMemoryError(
            errno.EUSERS,
            f"segment {self.name} is held by {_HOLDER_CAPACITY} live processes, the most "
            "it can record; close it in some, or share fewer objects that live in it",
        )

    def _remove_holder_and_maybe_unlink(self, token: int) -> bool:
        """Remove ``token``; unlink if no live holder is left.  True if unlinked."""
        return _leave_table(self.buffer, self._table_lock, self.name, token)

    def _leave_reserved(self, forks: set[int]) -> None:
        """Close for this process, leaving reservations for the children of the
        unsettled ``forks`` (see "Forking" above); settled by :func:`_settle_forks`."""
        token = _core.self_token()
        mark = token | _RESERVED
        with self._table_locked():
            holders = self._holders_view()
            try:
                entries = holders.tolist()
                # one a fork (the child takes it over).  Those of an earlier close are
                # for forks made before this attachment: ``forks`` are all newer
                need = len(forks)
                placed = 0
                # this process's own entry first, where its children look: it takes no
                # other slot
                mine = [i for i, holder in enumerate(entries) if holder == token]
                if self._slot in mine:
                    mine.remove(self._slot)
                    mine.insert(0, self._slot)
                for i in mine:
                    if placed < need:
                        holders[i] = mark
                        placed += 1
                    else:
                        holders[i] = 0
                for i, holder in enumerate(entries):
                    if placed >= need:
                        break
                    if holder == 0:
                        holders[i] = mark
                        placed += 1
                reserved = mark in holders.tolist()
            finally:
                holders.release()
        record = _state.reserved.get(self.name)
        if record is not None:
            record.forks |= forks
        elif reserved:
            assert self._mmap is not None
            _state.reserved[self.name] = _Reservation(self.name, self._mmap, forks)
        else:  # not in its own table, and no room for a reservation: a plain close
            self._remove_holder_and_maybe_unlink(token)

    def _held_elsewhere(self) -> bool:
        """Whether a live process other than this one holds the segment, or may: a
        reservation counts (its children may not have recorded themselves yet), and so
        does a child of this process's own unsettled forks since it attached the
        segment (it inherited it, and records itself only in its at-fork hook).

        Raises:
            ClosedError: this process closed the segment.
        """
        if self._mmap is None:
            raise ClosedError(f"segment {self.name} is closed in this process")
        _settle_forks()
        with _state.lock:
            if any(n > self._attach_seq and f.mine() for n, f in _state.forks.items()):
                return True
        me = _core.self_token()
        holders = self._holders_view()
        try:
            return any(h != me and _holder_alive(h) for h in filter(None, holders))
        finally:
            holders.release()

    def holders(self) -> list[int]:
        """Pids of the processes recorded as holding this segment (dead ones included).

        An entry a process left reserved for its forked children when it closed the
        segment before they recorded themselves is not a holder, and not listed.

        Raises:
            ClosedError: this process closed the segment.
        """
        if self._mmap is None:
            raise ClosedError(f"segment {self.name} is closed in this process")
        holders = self._holders_view()
        try:
            return [_core.token_pid(h) for h in holders if h and not h & _RESERVED]
        finally:
            holders.release()

    # ---- references in flight (shoal._handle; see the module docstring) -------------------

    @property
    def in_flight(self) -> int:
        """Handles to objects in this segment pickled and not yet unpickled, anywhere.

        Raises:
            ClosedError: this process closed the segment.
        """
        if self._mmap is None:
            raise ClosedError(f"segment {self.name} is closed in this process")
        return _core.load64(self.buffer, _IN_FLIGHT_OFFSET)

    def _begin_flight(self) -> None:
        """Count one more reference in flight (a handle is being pickled)."""
        buf = self.buffer
        # the time first: a count above zero always has a fresh time beside it.  No
        # lock: only a holder calls this, and no segment with a live holder is
        # unlinked or reaped, so nobody decides on the count meanwhile.
        _core.store64(buf, _IN_FLIGHT_TIME_OFFSET, time.time_ns())
        _core.fetch_add64(buf, _IN_FLIGHT_OFFSET, 1)

    def _end_flight(self) -> None:
        """Count one reference in flight less (it was adopted by an unpickling)."""
        buf = self.buffer
        count = _core.load64(buf, _IN_FLIGHT_OFFSET)
        while count:  # never below zero, whatever a crash left behind
            swapped, count = _core.cas64(buf, _IN_FLIGHT_OFFSET, count, count - 1)
            if swapped:
                return

    def _keeper_entries(self) -> Iterator[tuple[int, int, bytes]]:
        """(offset, count, keeper id) of each keeper entry; the table lock is held."""
        buf = self.buffer
        for i in range(_KEEPER_CAPACITY):
            at = _KEEPERS_OFFSET + i * _KEEPER_ENTRY_SIZE
            yield at, _core.load64(buf, at), bytes(buf[at + 8 : at + 8 + KEEPER_ID_SIZE])

    def _keep(self, kid: bytes) -> None:
        """Count one more reference kept by the container ``kid`` (see the module
        docstring); the caller then gives back the reference in flight it replaces."""
        buf = self.buffer
        with self._table_locked():
            entries = list(self._keeper_entries())
            for at, count, entry in entries:
                if count and entry == kid:
                    _core.store64(buf, at, count + 1)
                    return
            # an unused entry, else one whose container is gone (what it kept went
            # too): only a full table pays for looking the containers up
            free = next((at for at, count, _ in entries if not count), None)
            if free is None:
                free = next((at for at, _, e in entries if not _keeper_exists(e)), None)
            if free is None:
                overflow = _core.load64(buf, _KEEPER_OVERFLOW_OFFSET)
                _core.store64(buf, _KEEPER_OVERFLOW_OFFSET, overflow + 1)
                return
            buf[free + 8 : free + 8 + KEEPER_ID_SIZE] = kid
            _core.store64(buf, free, 1)

    def _unkeep(self, kid: bytes) -> bool:
        """Count one reference kept by ``kid`` less; False if it kept none here."""
        buf = self.buffer
        with self._table_locked():
            for at, count, entry in self._keeper_entries():
                if count and entry == kid:
                    _core.store64(buf, at, count - 1)
                    return True
            overflow = _core.load64(buf, _KEEPER_OVERFLOW_OFFSET)
            if overflow:
                _core.store64(buf, _KEEPER_OVERFLOW_OFFSET, overflow - 1)
                return True
            return False

    @property
    def kept(self) -> int:
        """References to objects in this segment kept by containers (queues, dicts),
        counting only containers that still exist.

        Raises:
            ClosedError: this process closed the segment.
        """
        if self._mmap is None:
            raise ClosedError(f"segment {self.name} is closed in this process")
        return _kept(self.buffer, self.name)

    def _retain(self) -> None:
        """Take one more local reference (matched by one :meth:`close`)."""
        with _state.lock:
            if self._mmap is None or self._detaching:
                raise ClosedError(f"segment {self.name} is closed in this process")
            self._local_refs += 1

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
            if self._mmap is None or self._detaching:
                return
            self._local_refs -= 1
            if self._local_refs > 0:
                return
            # detach with the lock still held: if it were dropped in between, another
            # thread's attach() could take the cached segment (count 0 -> 1) and be
            # handed a segment that this detach then closes under it
            self._detach()

    def _detach(self) -> None:
        with _state.lock:
            if self._mmap is None or self._detaching:
                return
            self._detaching = True
            if _state.attached.get(self.name) is self:
                del _state.attached[self.name]
            self._local_refs = 0
            try:
                _settle_forks()
                # a child forked since this attachment that has not recorded itself yet
                # would lose the segment with the name: leave the entry reserved for it
                forks = {n for n, f in _state.forks.items() if n > self._attach_seq and f.mine()}
                if forks:
                    self._leave_reserved(forks)
                else:
                    self._remove_holder_and_maybe_unlink(_core.self_token())
            finally:
                self._release_mapping()

    def _release_mapping(self) -> None:
        # The mapping is not closed explicitly: objects bound into it keep the mmap
        # alive and it is unmapped when the last of them goes, never under their feet.
        self._table_lock._unbind()
        try:
            self.buffer.release()
        except BufferError:
            # something still reads it through the buffer protocol (a numpy array, a
            # struct.iter_unpack): it keeps the memory mapped until it is done; the
            # segment is closed all the same (#2: before, close() raised here and left
            # the segment half closed)
            pass
        self._mmap = None


# MAP_POPULATE faults the whole mapping in with one call instead of page by page
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _is_own_file(st: os.stat_result) -> bool:
    """Whether ``st`` is a regular file of this user: the only kind shoal maps or judges
    (another user's file with a shoal name could be truncated under a mapping, or lie)."""
    return st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode)


def _open_named(name: Any, what: str, missing: str) -> int:
    """Open the segment ``name`` read-write, never through a link or a FIFO: its fd.

    Raises:
        LayoutError: ``name`` is not a name shoal makes (``what`` says whose).
        SegmentNotFoundError: there is no such segment (``missing`` says why).
        SharedMemoryError: the system refused.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise LayoutError(errno.EINVAL, f"{name!r} is not the name of a shoal {what}")
    try:
        return _core.shm_open(name, os.O_RDWR | _SAFE_OPEN, 0o600)
    except FileNotFoundError:
        raise SegmentNotFoundError(errno.ENOENT, missing) from None
    except OSError as exc:
        raise SharedMemoryError(exc.errno, f"cannot open segment {name!r}: {exc}") from exc


def _open_mapping(name: str, populate: bool = False) -> mmap.mmap:
    fd = _open_named(
        name,
        "segment",
        f"no shared-memory segment {name!r}: every process that held it closed it or died",
    )
    try:
        st = os.fstat(fd)
        if not _is_own_file(st):
            raise LayoutError(
                errno.EPERM, f"refusing {name!r}: it is not a shoal segment of this user"
            )
        size = st.st_size
        if size < HEADER_SIZE:
            raise LayoutError(
                errno.EINVAL,
                f"{name!r} is {size} bytes, smaller than a shoal header: "
                "not a shoal segment, or one whose creation failed",
            )
        if populate and _POPULATE:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _check_header(name: str, mapping: mmap.mmap) -> int:
    # the magic is stored last by the creator; read it atomically before the rest
    magic = _core.load64(mapping, 0)
    _, version, header_size, total, kind, *_ = _HEADER.unpack_from(mapping, 0)
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


@contextlib.contextmanager
def _table_locked(lock: _core.Mutex, name: str) -> Iterator[None]:
    """Hold the holder table's mutex ``lock`` of segment ``name`` (a shared section)."""
    with shared_section():
        if not lock.acquire(True, _TABLE_LOCK_TIMEOUT):
            raise SharedMemoryError(
                errno.EDEADLK,
                f"holder table of {name} stayed locked for "
                f"{_TABLE_LOCK_TIMEOUT:.0f} s; the segment looks corrupt",
            )
        try:
            yield
        finally:
            lock.release()


def _holder_alive(entry: int) -> bool:
    """Whether a holder-table entry counts: a live holder, or a reservation made by a
    live process (judged by the token under the mark)."""
    return entry != 0 and _core.token_alive(entry & _TOKEN_BITS)


def _leave_table(buf: Any, lock: _core.Mutex, name: str, entry: int, every: bool = False) -> bool:
    """Remove ``entry`` (a token; ``every`` one of them, for a reservation) from the
    holder table in ``buf``, and unlink segment ``name`` if nothing keeps it any more.
    True if unlinked."""
    with _table_locked(lock, name):
        holders = buf[_HOLDERS_OFFSET:_KEEPERS_OFFSET].cast("Q")
        try:
            for i, holder in enumerate(holders):
                if holder == entry:
                    holders[i] = 0
                    if not every:
                        break
            live = any(map(_holder_alive, filter(None, holders)))
        finally:
            holders.release()
        overflow = struct.unpack_from("<I", buf, _OVERFLOW_OFFSET)[0]
        if live or overflow or _references_pending(buf, name):
            return False
        flags = struct.unpack_from("<I", buf, _FLAGS_OFFSET)[0]
        struct.pack_into("<I", buf, _FLAGS_OFFSET, flags | FLAG_UNLINKED)
        try:
            _core.shm_unlink(name)
        except FileNotFoundError:
            pass
        return True


# ---- forks: a child's segments are its own from the fork on (#10) ----------------------------


def _same_file(fd: int, ident: tuple[int, int]) -> bool:
    """Whether ``fd`` is still the pipe it was (not closed by someone, and reused)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


class _Fork:
    """One fork of a process that held segments: the pipe that tells it, without any
    waiting, when every child the fork made has recorded itself in them (or died)."""

    __slots__ = ("ident", "pid", "read_fd", "seq", "token", "write_fd")

    def __init__(self, seq: int) -> None:
        self.token = _core.self_token()  # the forking process's: its reservations'
        # non-inheritable (close-on-exec): a program exec'd meanwhile never holds it
        if hasattr(os, "pipe2"):
            self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        else:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
        st = os.fstat(self.read_fd)
        self.ident = (st.st_dev, st.st_ino)
        self.seq = seq
        self.pid = os.getpid()  # whose fork: a child inherits its parent's records

    def mine(self) -> bool:
        return self.pid == os.getpid()

    def close_write_end(self) -> None:
        fd, self.write_fd = self.write_fd, -1
        if fd >= 0 and _same_file(fd, self.ident):
            os.close(fd)

    def close_read_end(self) -> None:
        fd, self.read_fd = self.read_fd, -1
        if fd >= 0 and _same_file(fd, self.ident):
            os.close(fd)

    def settled(self) -> bool:
        """True (and the pipe closed) once no process holds the write end any more:
        each child closes it once it recorded itself, or dies.  Never blocks."""
        if self.read_fd < 0 or not _same_file(self.read_fd, self.ident):
            self.read_fd = -1  # closed under this process: nothing to learn from it
            return True
        try:
            if os.read(self.read_fd, 1):
                return False  # nobody writes to it; whoever did is not a child
        except BlockingIOError:
            return False
        except OSError:
            pass
        fd, self.read_fd = self.read_fd, -1
        os.close(fd)
        return True


class _Reservation:
    """A segment this process closed while forks that inherited it were unsettled: its
    entry stays in the holder table, marked, until they all are."""

    __slots__ = ("forks", "mapping", "name", "pid")

    def __init__(self, name: str, mapping: mmap.mmap, forks: set[int]) -> None:
        self.name = name
        self.mapping = mapping  # (this process's mapping, kept to reach the table)
        self.forks = forks
        self.pid = os.getpid()

    def release(self) -> None:
        """Remove the reservation, and the segment if nothing else keeps it."""
        buf = memoryview(self.mapping)
        lock = _core.Mutex()
        lock._bind(self.mapping, _TABLE_LOCK_OFFSET, False, False)
        try:
            # what no child took over: those of children that died before they could
            _leave_table(buf, lock, self.name, _core.self_token() | _RESERVED, every=True)
        finally:
            lock._unbind()
            buf.release()


def _settle_forks() -> None:
    """Release what this process reserved for forks that have all settled.

    Cheap, never waits: a non-blocking read of each unsettled fork's pipe.  Called at
    every fork, segment creation, attach, close and sweep, and at exit.
    """
    if not _state.forks and not _state.reserved:
        return
    with _state.lock:
        for seq, fork in list(_state.forks.items()):
            if fork.mine() and fork.settled():
                del _state.forks[seq]
        for name, record in list(_state.reserved.items()):
            if record.pid == os.getpid() and record.forks.isdisjoint(_state.forks):
                del _state.reserved[name]
                try:
                    record.release()
                except Exception as exc:  # one stuck table must not keep the others
                    report_unraisable(exc)


def _after_fork_in_child() -> None:
    global _state
    parent = _state
    _state = _ProcessState()
    _state.swept_at = parent.swept_at if parent.swept_at is not None else time.monotonic()
    _state.fork_seq = parent.fork_seq
    # (a fork of this child's own, made by an earlier at-fork hook before this one ran)
    _state.forks = {n: f for n, f in parent.forks.items() if f.mine()}
    _state.reserved = {n: r for n, r in parent.reserved.items() if r.pid == os.getpid()}
    # the fork that made this process (its parent's; not one of a grandparent's whose
    # pipe this process inherited, nor one of its own): its reservations are ours
    ppid = os.getppid()
    forker = next((f for f in reversed(parent.in_progress) if f.pid == ppid), None)
    reserved_by = forker.token if forker is not None else 0
    token = 0  # (made at the first entry: a child that records none needs no token)
    _state.borrowed = {n: s for n, s in parent.borrowed.items() if s._mmap is not None}
    try:
        for name, segment in parent.attached.items():
            if segment._mmap is None:
                continue
            if segment.kept_for_children:
                _state.borrowed[name] = segment
                continue
            if segment.kind == KIND_LEDGER:
                # the parent's own record of what it holds: the child keeps its own
                # (shoal._handle), and holding the parent's would keep it from being
                # reaped, and its references from being given back, once it died
                segment._release_mapping()
                continue
            token = token or _core.self_token()
            try:
                added = segment._add_holder(token, reserved_by)
            except Exception as exc:  # one stuck table must not cost the child the others
                report_unraisable(exc)
                continue
            if added:
                _state.attached[name] = segment
    finally:
        # recorded (or failed to be): the fork settles for the parent once every child
        # it made closed its write end, whatever else the child does from now on
        for fork in parent.in_progress:
            fork.close_write_end()
            fork.close_read_end()
        for fork in parent.forks.values():
            if not fork.mine():
                fork.close_read_end()
    _exit_hook.rearm_in_child(bool(_state.attached or _state.reserved))


def _before_fork() -> None:
    _state.lock.acquire()
    try:
        _settle_forks()
        _state.fork_seq += 1
        if _state.attached:
            _state.in_progress.append(_Fork(_state.fork_seq))
    except Exception as exc:
        # (no pipe: EMFILE.)  The fork goes on untracked: a segment the parent closes
        # before the child recorded itself is unlinked under it, as before #10
        report_unraisable(exc)


def _after_fork_in_parent() -> None:
    # (also when fork() failed: the pipe is then at end of file at once)
    try:
        progress = _state.in_progress
        if progress and progress[-1].mine() and progress[-1].seq == _state.fork_seq:
            fork = progress.pop()
            fork.close_write_end()
            _state.forks[fork.seq] = fork
    finally:
        _state.lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


# Callables that close what a layer above keeps for reuse though nothing uses it (a
# closed pool's rings, kept for the next pool: shoal._pool._engine).
_spare_releasers: list[Callable[[], bool]] = []


def keeps_spares(release: Callable[[], bool]) -> None:
    """Register ``release``: it closes segments this process keeps only for reuse, and
    says whether there were any.  Leak checks call it first (:func:`release_spares`),
    so that what they see is what the program holds, not what a cache does; so does a
    segment's creation that found no room in ``/dev/shm``, before it gives up."""
    _spare_releasers.append(release)


def release_spares() -> bool:
    """Close every segment this process keeps only for reuse (see :func:`keeps_spares`);
    return whether there was any."""
    released = False
    for release in _spare_releasers:
        released = bool(release()) or released
    return released


def _make_room(exc: SharedMemoryError) -> bool:
    """For a segment that found no room: close what this process keeps only for reuse,
    if it keeps any and may close it now (not inside a shared section, whose mutex a
    close could need); return whether it did, so that the creation tries again."""
    if exc.errno not in (errno.ENOSPC, errno.ENOMEM) or getattr(_sections, "depth", 0):
        return False
    return release_spares()


def attached_names() -> set[str]:
    """Names of the segments this process holds now (for leak checks), its ledger's
    pages included.

    First closes what it keeps only for reuse (:func:`release_spares`), and releases
    what it reserved for forked children that have all recorded themselves since (or
    died), as every close and creation does.
    """
    release_spares()
    _settle_forks()
    with _state.lock:
        return set(_state.attached)


def _read_kind(path: str) -> int | None:
    """The kind in the header of the file at ``path`` (a test's or a report's look at
    ``/dev/shm``), None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            header = f.read(32)
    except OSError:
        return None
    return int.from_bytes(header[24:28], "little") if len(header) == 32 else None


def reap() -> list[str]:
    """Remove shoal segments whose holders all died; return their names.

    Sweeps ``/dev/shm`` where the platform has it (Linux); elsewhere it has nothing
    to list and returns ``[]``.  Dead processes' liveness files go too
    (:func:`reap_liveness`; not in the list).  Only this user's regular files with a shoal name are
    judged, from headers read with ``pread`` (nothing is mapped to decide); a holder
    table whose mutex is held is skipped until a later sweep, never waited on.
    """
    _settle_forks()
    reaped: list[str] = []
    # what a reaped container kept (#10), and the transit segments of a reaped queue,
    # are judged again: a few passes, until one removes nothing
    for i in range(_REAP_PASSES):
        swept = _sweep(liveness=i == 0)
        if not swept:
            break
        reaped += swept
    return reaped


_REAP_PASSES = 8


def _sweep(liveness: bool = False) -> list[str]:
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    if liveness:
        _reap_liveness(entries)
    return ["/" + e for e in entries if _NAME_PATTERN.fullmatch("/" + e) and _reap_one("/" + e)]


# ---- liveness files (shoal_core.h; see the module docstring) -------------------------------

LIVENESS_PREFIX = _core.LIVENESS_PREFIX
# what shoal_self_token makes: the token in 16 hex digits, .tmp while being made
_LIVENESS_PATTERN = re.compile(
    re.escape(LIVENESS_PREFIX) + r"([0-9a-f]{16})(" + re.escape(_core.LIVENESS_TEMP_SUFFIX) + ")?"
)


def _own_liveness_names() -> tuple[str, str]:
    """The names of this process's liveness file, with and without the bit: never
    opened here (its token is made first, so it is never being made meanwhile)."""
    token = _core.self_token()
    return (
        _core.liveness_name(token | _core.TOKEN_LIVENESS),
        _core.liveness_name(token & ~_core.TOKEN_LIVENESS),
    )


def _liveness_garbage(entry: str, match: re.Match[str]) -> bool:
    """Whether the liveness file ``entry`` (not this process's) belongs to a dead
    process: its lock is free, and for a temporary name, its maker is dead too (it may
    be between creating and locking it) or it is older than any making takes."""
    if _core.liveness_probe(entry) != _core.LIVENESS_FREE:
        return False  # held (alive), gone, or not this user's regular file
    if not match.group(2):
        return True
    token = int(match.group(1), 16) & ~_core.TOKEN_LIVENESS
    if not _core.token_alive(token):  # of this namespace: dead; of another: "alive"
        return True
    try:
        return time.time() - os.lstat(_SHM_DIR + "/" + entry).st_mtime > _UNFINISHED_GRACE_S
    except OSError:
        return False


def _liveness_entries(entries: list[str]) -> Iterator[tuple[str, re.Match[str] | None]]:
    """The liveness files among the ``/dev/shm`` names ``entries``, each with its
    name's match, or None for this process's own (or its temporary name)."""
    own = None
    for entry in entries:
        match = _LIVENESS_PATTERN.fullmatch(entry)
        if match is None:
            continue
        if own is None:
            own = _own_liveness_names()
        yield entry, None if entry.startswith(own) else match


def _reap_liveness(entries: list[str]) -> list[str]:
    removed: list[str] = []
    for entry, match in _liveness_entries(entries):
        if match is not None and _liveness_garbage(entry, match):
            try:
                os.unlink(_SHM_DIR + "/" + entry)
            except OSError:
                continue
            removed.append(entry)
    return removed


def reap_liveness() -> list[str]:
    """Remove the liveness files of processes that died (without removing their own);
    return their names.  :func:`reap` does this too; this is the part that touches no
    segment (the test suite's leak check, ``make check-shm``)."""
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    return _reap_liveness(entries)


def liveness_files() -> dict[str, str]:
    """The liveness files in ``/dev/shm`` and what each says: ``"own"`` (this
    process's), ``"live"`` (held), ``"dead"`` (free: reaped by the next sweep),
    ``"unknown"`` (another user's, or it cannot be told)."""
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return {}
    states = {_core.LIVENESS_HELD: "live", _core.LIVENESS_FREE: "dead",
              _core.LIVENESS_UNKNOWN: "unknown"}  # fmt: skip
    found: dict[str, str] = {}
    for entry, match in _liveness_entries(entries):
        state = "own" if match is None else states.get(_core.liveness_probe(entry))
        if state is not None:  # (None: it went meanwhile)
            found[entry] = state
    return found


def _remove_own_liveness() -> None:
    _core.liveness_remove()


# removes this process's liveness file at exit, in every process that imported shoal
# (ExitHook: multiprocessing children included); armed below, re-armed in a forked
# child, which makes a file of its own
_liveness_exit_hook = ExitHook(_remove_own_liveness, LIVENESS_EXIT_PRIORITY)
_liveness_exit_hook.arm()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _liveness_exit_hook.rearm_in_child(True))


# what _new_name makes: anything else in /dev/shm is not shoal's to judge
_NAME_PATTERN = re.compile(r"/shoal-[0-9a-f]{20}")
# open flags for a file that may be planted: no symlink, no controlling tty, no
# blocking open (a FIFO named like a segment)
_SAFE_OPEN = os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
# the fixed fields before the holder table, read in one pread
_PREFIX_SIZE = _HOLDERS_OFFSET


def _open_own(name: str) -> tuple[int, os.stat_result] | None:
    """Open segment ``name`` read-write if it is this user's regular file, else None.

    A file of another user (root can open it) is not even opened: ``lstat`` first,
    then ``fstat`` on what was opened in case it was swapped in between.
    """
    try:
        st = os.lstat(_SHM_DIR + name)
    except OSError:
        st = None  # no listing (not Linux): judge what shm_open gives
    if st is not None and not _is_own_file(st):
        return None
    try:
        fd = _core.shm_open(name, os.O_RDWR | _SAFE_OPEN, 0o600)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not _is_own_file(st):
        os.close(fd)
        return None
    return fd, st


def _pread_exact(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset``, or None if the file is shorter (it shrank)."""
    try:
        data = os.pread(fd, size, offset)
    except OSError:
        return None
    return data if len(data) == size else None


def _read_prefix(fd: int) -> bytearray | None:
    """The header's fixed fields; the magic read first (the creator stores it last)."""
    magic = _pread_exact(fd, 8, 0)
    rest = _pread_exact(fd, _PREFIX_SIZE - 8, 8)
    if magic is None or rest is None:
        return None
    return bytearray(magic + rest)


def _reap_one(name: str) -> bool:
    with _state.lock:
        if name in _state.attached:
            return False
    opened = _open_own(name)
    if opened is None:
        return False
    fd, st = opened
    try:
        return _judge(name, fd, st)
    finally:
        os.close(fd)


def _judge(name: str, fd: int, st: os.stat_result) -> bool:
    """Unlink this user's segment ``name`` (open as ``fd``) if it is garbage."""
    abandoned = time.time() - st.st_mtime > _UNFINISHED_GRACE_S
    prefix = _read_prefix(fd) if st.st_size >= HEADER_SIZE else None
    if prefix is None:
        if abandoned and st.st_size < HEADER_SIZE:
            _unlink_quietly(name)  # never sized: its creator died in shm_open's wake
            return True
        return False
    magic, version, header_size, total, kind, _, creator, *_ = _HEADER.unpack_from(prefix)
    if magic != MAGIC:
        if magic == 0 and (abandoned or (creator and not _core.token_alive(creator))):
            # unfinished, and its creator died (or long ago) before completing it
            _unlink_quietly(name)
            return True
        return False  # not shoal's, whatever its name
    if version != _core.LAYOUT_VERSION:
        return False  # another shoal's segment: its own sweeps judge it
    if header_size != HEADER_SIZE or total != st.st_size:
        return False  # corrupt: nothing here can be trusted to decide on
    if kind == KIND_TRANSIT:
        # in flight on a queue: it lives as long as the queue object does
        parent = _read_transit_parent(fd)
        if parent is None or not _parent_gone(*parent):
            return False
        _unlink_quietly(name)
        return True
    if not _reap_if_unheld(name, fd, prefix):
        return False
    if kind == KIND_LEDGER:
        _hand_dead_ledger_over(name, fd, st.st_size)
    return True


# set by shoal._handle, which owns the ledger's entries (set_ledger_reclaimer)
_ledger_reclaimer: Callable[[str, bytes], None] | None = None


def set_ledger_reclaimer(reclaim: Callable[[str, bytes], None]) -> None:
    """Have the sweep call ``reclaim(name, contents)`` with the bytes of every ledger
    it reaps (its process died): the references it records are given back there.
    ``shoal._handle`` sets it; the segment layer does not read entries."""
    global _ledger_reclaimer
    _ledger_reclaimer = reclaim


def _hand_dead_ledger_over(name: str, fd: int, size: int) -> None:
    """Hand the reaped ledger ``name`` (open as ``fd``) to the reclaimer, which gives
    back what it records.

    Its name is gone and its unlinked flag set, both under its table's mutex, so only
    this sweep reaches it.  Read with ``pread`` (a file that shrank is no SIGBUS); a
    sweep killed part way leaves the rest unreclaimed, never gives one back twice.
    """
    if _ledger_reclaimer is None:
        return
    contents = _pread_exact(fd, size, 0)
    if contents is None:
        return
    try:
        _ledger_reclaimer(name, contents)
    except Exception as exc:  # a corrupt ledger must not stop the sweep
        report_unraisable(exc)


def _kept(buf: Any, name: str | None = None) -> int:
    """References the keeper table in the header ``buf`` counts for containers that
    still exist (other than the segment ``name`` itself)."""
    own = keeper_id(name) if name else None
    total = _core.load64(buf, _KEEPER_OVERFLOW_OFFSET)
    for i in range(_KEEPER_CAPACITY):
        at = _KEEPERS_OFFSET + i * _KEEPER_ENTRY_SIZE
        count = _core.load64(buf, at)
        if count:
            kid = bytes(buf[at + 8 : at + 8 + KEEPER_ID_SIZE])
            if kid != own and _keeper_exists(kid):
                total += count
    return total


def _references_pending(buf: Any, name: str) -> bool:
    """Whether the header in ``buf`` (of segment ``name``) counts references that keep
    the segment without a live holder: in flight and not yet lost, or kept by a
    container that still exists."""
    if _core.load64(buf, _IN_FLIGHT_OFFSET):
        age_ns = time.time_ns() - _core.load64(buf, _IN_FLIGHT_TIME_OFFSET)
        if age_ns <= IN_FLIGHT_TIMEOUT_S * 1e9:
            return True
    return _kept(buf, name) > 0


def _held_by_a_live_process(name: str, fd: int, prefix: Any) -> bool | None:
    """From the header of segment ``name`` read with ``pread``: whether a live process
    holds it or a reference to it is pending (in flight, or kept by a container); None
    if the tables could not be read."""
    table = _pread_exact(fd, HEADER_SIZE - _HOLDERS_OFFSET, _HOLDERS_OFFSET)
    if table is None:
        return None
    holders = struct.unpack_from(f"<{_HOLDER_CAPACITY}Q", table)
    overflow = struct.unpack_from("<I", prefix, _OVERFLOW_OFFSET)[0]
    # (the overflow count is written by no shoal of this version any more, see
    # _add_holder; one of an older build still pins its segment)
    if overflow or any(map(_holder_alive, filter(None, holders))):
        return True
    return _references_pending(bytearray(prefix) + table, name)


def _reap_if_unheld(name: str, fd: int, prefix: Any) -> bool:
    """Unlink the segment if no live process holds it and no reference to it is in
    flight; True if it did.

    Decided from ``pread`` first: a segment somebody holds is never mapped.  Only one
    that looks unheld is mapped (its header page, checked to exist) for the final
    decision under the holder table's mutex, which is tried, never waited for: a table
    locked by a live process is skipped until a later sweep.
    """
    if _held_by_a_live_process(name, fd, prefix) is not False:
        return False
    try:
        mapping = mmap.mmap(fd, HEADER_SIZE)
    except (OSError, ValueError):
        return False
    lock = _core.Mutex()
    lock._bind(mapping, _TABLE_LOCK_OFFSET, False, False)
    try:
        with shared_section():
            if not lock.acquire(False):
                return False
            try:
                if os.fstat(fd).st_size < HEADER_SIZE:
                    return False  # shrank under the mapping: reading it would SIGBUS
                if struct.unpack_from("<I", mapping, _FLAGS_OFFSET)[0] & FLAG_UNLINKED:
                    # another sweep, which opened it too, reaped it first: only one may
                    # act on a reaped segment (a ledger's references are given back once)
                    return False
                holders = struct.unpack_from(f"<{_HOLDER_CAPACITY}Q", mapping, _HOLDERS_OFFSET)
                overflow = struct.unpack_from("<I", mapping, _OVERFLOW_OFFSET)[0]
                if overflow or any(map(_holder_alive, filter(None, holders))):
                    return False
                if _references_pending(mapping, name):
                    return False  # a pickle may still be unpickled (#4, #10)
                struct.pack_into("<I", mapping, _FLAGS_OFFSET, FLAG_UNLINKED)
                _unlink_quietly(name)
                return True
            finally:
                lock.release()
    finally:
        lock._unbind()
        with contextlib.suppress(BufferError):
            mapping.close()


def _unlink_quietly(name: str) -> None:
    try:
        _core.shm_unlink(name)
    except OSError:
        pass


# ---- transit segments: one message, one reader (shoal._serialize) ------------------------

# Where a transit segment's header records its parent (in place of a holder table):
#   128  64  the parent segment's name (ASCII, NUL-padded)
#   192  8   the parent object's header offset in it (0: the whole segment is the parent)
#   200  8   the parent object's serial (shoal._handle)
_PARENT_NAME_BYTES = 64
_PARENT_OBJECT = struct.Struct("<QQ")
_PARENT_OBJECT_OFFSET = _HOLDERS_OFFSET + _PARENT_NAME_BYTES
# an object's header (shoal._handle): u64 count (references in the low half), u32 serial
_OBJECT_HEADER = struct.Struct("<QI")
_OBJECT_REFS = 0xFFFFFFFF


def write_transit(parent: str | tuple[str, int, int], chunks: list[Any], size: int) -> str:
    """Create a segment holding one message for the object ``parent``.

    ``parent`` is a queue's handle ``(segment name, header offset, serial)``, or just
    a segment's name when the segment as a whole is the parent.  ``chunks``
    (bytes-like, in order) fill the ``size`` bytes after the header.  They are
    written with ``pwritev``, after the header page: the kernel allocates the pages as
    it copies, so there is no zero-filling and no page fault on this side, and a full
    ``/dev/shm`` fails here with ENOSPC instead of a SIGBUS later.  The magic number is
    written last: a writer killed half way (or before the data's first page) leaves a
    segment without it, whose dead creator token tells the reaper it is garbage.

    The segment has no holders: the sender lets go at once, the one receiver maps it
    and removes its name (:func:`open_transit`).  Until then it lives as long as its
    parent object does; the reaper removes one whose parent object is gone (freed, its
    segment unlinked or held by nobody alive) -- which is also what becomes of one
    whose record was lost with a killed producer or consumer, once its queue goes.
    """
    if isinstance(parent, tuple):
        parent_name, parent_offset, parent_serial = parent
    else:
        parent_name, parent_offset, parent_serial = parent, 0, 0
    encoded = parent_name.encode("ascii")
    if len(encoded) > _PARENT_NAME_BYTES:
        raise ValueError(f"parent segment name too long: {parent_name!r}")
    name = _new_name()
    total = HEADER_SIZE + size
    header = bytearray(HEADER_SIZE)
    _HEADER.pack_into(
        header,
        0,
        0,  # the magic: written last, below
        _core.LAYOUT_VERSION,
        HEADER_SIZE,
        total,
        KIND_TRANSIT,
        0,
        _core.self_token(),
        time.time_ns(),
        0,
        0,
    )
    header[_HOLDERS_OFFSET : _HOLDERS_OFFSET + len(encoded)] = encoded
    _PARENT_OBJECT.pack_into(header, _PARENT_OBJECT_OFFSET, parent_offset, parent_serial)
    fd, unnamed = _create_file(name, header, total)
    try:
        _write_all(fd, chunks, total, HEADER_SIZE)
        os.pwrite(fd, _MAGIC_BYTES, 0)
        if unnamed:
            _publish(fd, name)
    except _NamedFromNowOn:
        return write_transit(parent, chunks, size)  # (once a process, named now)
    except OSError as exc:
        if not unnamed:
            _unlink_quietly(name)
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _no_room_error(total, exc) from None
        raise
    except BaseException:
        if not unnamed:
            _unlink_quietly(name)
        raise
    finally:
        os.close(fd)
    return name


_MAGIC_BYTES = MAGIC.to_bytes(8, "little")


def _write_all(fd: int, chunks: list[Any], total: int, offset: int = 0) -> None:
    """Write ``chunks`` from ``offset`` on with ``pwritev``: the file is then ``total``
    bytes (else OSError)."""
    views = [memoryview(c).cast("B") for c in chunks]
    try:
        while views:
            batch = views[:512]  # within IOV_MAX
            written = os.pwritev(fd, batch, offset)
            offset += written
            while views and written >= views[0].nbytes:
                written -= views.pop(0).nbytes
            if views and written:
                views[0] = views[0][written:]
    finally:
        for view in views:
            view.release()
    if offset != total:
        raise OSError(errno.EIO, f"wrote {offset} of {total} bytes")


def _open_transit_fd(name: Any) -> tuple[int, int]:
    """Open and validate the transit segment ``name``: (fd, size).

    Everything is checked before anything is mapped or removed: the name's form, that
    the file is this user's regular file, and the header (magic, version, sizes, kind
    transit, a parent this process holds: whoever receives a queue's record holds
    the queue).

    Raises:
        SegmentNotFoundError: it is gone (already received, or its queue died).
        LayoutError: the name or the segment is not a transit segment this process
            may receive.
    """
    fd = _open_named(
        name,
        "message segment",
        f"no message segment {name!r}: it was already received, or its queue is gone",
    )
    try:
        problem, size = _transit_problem(fd)
    except BaseException:
        os.close(fd)
        raise
    if problem:
        os.close(fd)
        raise LayoutError(errno.EINVAL, f"refusing message segment {name!r}: {problem}")
    return fd, size


# the fixed fields and the parent, read in one pread on receipt: the record came after
# the sender wrote them all (through the ring), so no ordering of the magic is needed
_TRANSIT_HEAD_SIZE = _PARENT_OBJECT_OFFSET + _PARENT_OBJECT.size


def _transit_problem(fd: int) -> tuple[str | None, int]:
    """What is wrong with the transit segment open as ``fd`` (None: nothing), its size."""
    st = os.fstat(fd)
    if not _is_own_file(st):
        return "it is not a file of this user", 0
    head = _pread_exact(fd, _TRANSIT_HEAD_SIZE, 0) if st.st_size >= HEADER_SIZE else None
    if head is None:
        return f"it is {st.st_size} bytes, smaller than a shoal header", 0
    magic, version, header_size, total, kind, *_ = _HEADER.unpack_from(head)
    if magic != MAGIC:
        return f"bad magic number {magic:#018x}: not a shoal segment", 0
    if version != _core.LAYOUT_VERSION:
        return f"layout version {version}, this shoal reads {_core.LAYOUT_VERSION}", 0
    if header_size != HEADER_SIZE or total != st.st_size:
        return f"header says {header_size}/{total} bytes, the file is {st.st_size}: corrupt", 0
    if kind != KIND_TRANSIT:
        return f"it is not a message segment (kind {kind})", 0
    parent = head[_HOLDERS_OFFSET:_PARENT_OBJECT_OFFSET].rstrip(b"\0").decode("ascii", "replace")
    with _state.lock:
        held = parent in _state.attached or parent in _state.borrowed
    if not held:
        return f"it travels on {parent!r}, which this process does not hold", 0
    return None, st.st_size


def open_transit(name: str) -> mmap.mmap:
    """Map the transit segment ``name`` and remove its name: the mapping is all that is
    left, and the memory goes back to the system when the mapping does.

    Raises:
        SegmentNotFoundError: it is gone (already received, or its queue died).
        LayoutError: it is not a transit segment of this shoal (nothing is removed).
    """
    fd, size = _open_transit_fd(name)
    try:
        if _POPULATE:
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        else:
            mapping = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    _unlink_quietly(name)
    return mapping


def discard_transit(name: str) -> None:
    """Remove a transit segment that will never be received.

    Only a valid transit segment of a queue this process holds is removed: a corrupt
    record must not remove whatever segment (or file) it happens to name.
    """
    try:
        fd, _ = _open_transit_fd(name)
    except OSError:
        return
    os.close(fd)
    _unlink_quietly(name)


def _read_transit_parent(fd: int) -> tuple[str, int, int] | None:
    raw = _pread_exact(fd, _PARENT_NAME_BYTES + _PARENT_OBJECT.size, _HOLDERS_OFFSET)
    if raw is None:
        return None
    name = raw[:_PARENT_NAME_BYTES].rstrip(b"\0").decode("ascii", "replace")
    offset, serial = _PARENT_OBJECT.unpack_from(raw, _PARENT_NAME_BYTES)
    return name, offset, serial


def _parent_gone(name: str, offset: int, serial: int) -> bool:
    """Whether a transit segment's parent object is gone for good (in doubt: False).

    Gone: its segment no longer exists, is marked unlinked, or no live process holds
    it and no reference to it is in flight; or the object at ``offset`` in it was
    freed (count of references 0) or replaced (another serial).
    """
    if not _NAME_PATTERN.fullmatch(name):
        return False  # not a name shoal made: keep what cannot be judged
    with _state.lock:
        if name in _state.attached and not offset:
            return False
    try:
        fd = _core.shm_open(name, os.O_RDONLY | _SAFE_OPEN, 0o600)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not _is_own_file(st):
            return False
        prefix = _read_prefix(fd) if st.st_size >= HEADER_SIZE else None
        if prefix is None or _core.load64(prefix, 0) != MAGIC:
            return False
        if struct.unpack_from("<I", prefix, _FLAGS_OFFSET)[0] & FLAG_UNLINKED:
            return True
        if offset:
            if offset < HEADER_SIZE or offset + _OBJECT_HEADER.size > st.st_size:
                return False
            raw = _pread_exact(fd, _OBJECT_HEADER.size, offset)
            if raw is None:
                return False
            count, found_serial = _OBJECT_HEADER.unpack(raw)
            if found_serial != serial or not count & _OBJECT_REFS:
                return True  # the queue was freed (and its block perhaps reused)
        return _held_by_a_live_process(name, fd, prefix) is False
    finally:
        os.close(fd)


# ---- what a sweep would decide, without acting (``python -m shoal doctor``) ------------------

SEGMENT_LIVE, SEGMENT_LEFTOVER, SEGMENT_UNKNOWN = "live", "leftover", "unknown"
_KIND_NAMES = {KIND_DATA: "data", KIND_ARENA: "arena", KIND_TRANSIT: "transit",
               KIND_LEDGER: "ledger"}  # fmt: skip


class SegmentReport(NamedTuple):
    """One file named like a shoal segment in ``/dev/shm``, as :func:`segment_report`
    judges it."""

    name: str
    state: str  # SEGMENT_LIVE, SEGMENT_LEFTOVER or SEGMENT_UNKNOWN
    reason: str  # why, in a few words
    size: int  # bytes (0 if it could not be read)
    kind: str  # "data", "arena", "transit", "ledger", or "" if unknown
    creator_pid: int  # 0 if unknown


def segment_report() -> list[SegmentReport]:
    """Every file named like a shoal segment in ``/dev/shm`` (liveness files aside),
    judged as :func:`reap` would judge it, changing nothing.

    * live: a live process holds it (this one included), a reference to it is in
      flight or kept by a container that exists, or it is being made;
    * leftover: every holder died and nothing refers to it (or its creator died
      while making it): the next sweep, ``doctor --reap``, removes it;
    * unknown: shoal cannot tell and never touches it: another user's file, one
      that is not shoal's layout (or another version's), or a holder table that
      cannot be read.

    A holder in another PID namespace counts as alive (it cannot be seen there).
    Sorted by state, then name; ``[]`` where there is no ``/dev/shm`` to list.
    """
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    order = {SEGMENT_LEFTOVER: 0, SEGMENT_UNKNOWN: 1, SEGMENT_LIVE: 2}
    found = []
    for entry in entries:
        if entry.startswith(NAME_PREFIX) and not entry.startswith(LIVENESS_PREFIX):
            report = _report_one("/" + entry)
            if report is not None:  # (None: gone meanwhile)
                found.append(report)
    return sorted(found, key=lambda r: (order[r.state], r.name))


def _report_one(name: str) -> SegmentReport | None:
    try:
        st = os.lstat(_SHM_DIR + name)
    except OSError:
        return None
    if not _NAME_PATTERN.fullmatch(name):
        return SegmentReport(name, SEGMENT_UNKNOWN, "not a name shoal makes", st.st_size, "", 0)
    if not _is_own_file(st):
        why = "another user's" if st.st_uid != os.geteuid() else "not a regular file"
        return SegmentReport(name, SEGMENT_UNKNOWN, why, st.st_size, "", 0)
    with _state.lock:
        mine = name in _state.attached
    opened = _open_own(name)
    if opened is None:
        return (
            None
            if not os.path.lexists(_SHM_DIR + name)
            else SegmentReport(name, SEGMENT_UNKNOWN, "cannot be opened", st.st_size, "", 0)
        )
    fd, st = opened
    try:
        state, reason, kind, creator = _assess(name, fd, st)
    finally:
        os.close(fd)
    if mine:
        state, reason = SEGMENT_LIVE, "held by this process"
    pid = (creator >> 32) % (1 << 22) if creator else 0
    return SegmentReport(name, state, reason, st.st_size, kind, pid)


def _assess(name: str, fd: int, st: os.stat_result) -> tuple[str, str, str, int]:
    """(state, reason, kind, creator token) of this user's segment ``name``, open as
    ``fd``: :func:`_judge`'s decision, without its actions."""
    abandoned = time.time() - st.st_mtime > _UNFINISHED_GRACE_S
    prefix = _read_prefix(fd) if st.st_size >= HEADER_SIZE else None
    if prefix is None:
        if abandoned and st.st_size < HEADER_SIZE:
            return SEGMENT_LEFTOVER, "never sized: its creator died making it", "", 0
        return SEGMENT_LIVE, "being made", "", 0
    magic, version, header_size, total, kind, _, creator, *_ = _HEADER.unpack_from(prefix)
    kind_name = _KIND_NAMES.get(kind, "")
    if magic != MAGIC:
        if magic == 0 and (abandoned or (creator and not _core.token_alive(creator))):
            return SEGMENT_LEFTOVER, "unfinished: its creator died making it", "", creator
        if magic == 0:
            return SEGMENT_LIVE, "being made", "", creator
        return SEGMENT_UNKNOWN, "not a shoal segment (bad magic)", "", 0
    if version != _core.LAYOUT_VERSION:
        return SEGMENT_UNKNOWN, f"layout version {version}: another shoal's", kind_name, creator
    if header_size != HEADER_SIZE or total != st.st_size:
        return SEGMENT_UNKNOWN, "corrupt header", kind_name, creator
    if kind == KIND_TRANSIT:
        parent = _read_transit_parent(fd)
        if parent is not None and _parent_gone(*parent):
            return SEGMENT_LEFTOVER, "its queue is gone", kind_name, creator
        return SEGMENT_LIVE, "in flight on a live queue", kind_name, creator
    held = _held_by_a_live_process(name, fd, prefix)
    if held is None:
        return SEGMENT_UNKNOWN, "holder table unreadable", kind_name, creator
    if held:
        return SEGMENT_LIVE, "a holder is alive (or a reference pending)", kind_name, creator
    return SEGMENT_LEFTOVER, "every holder died", kind_name, creator
