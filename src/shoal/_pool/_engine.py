"""The engine: the workers, the two rings and the parent's monitor and result threads.

One ``_Engine`` serves both ``Pool`` and ``Executor`` (``_api``)::

    caller threads ---- put_many ----> task ring (shoal Queue) ---- _get_claim ----> workers
          ^                                                                            |
          |            result thread <---- result ring (shoal Queue) <---- put --------+
          |                  ^
          +-- AsyncResult    +-- monitor thread: waits on the workers' sentinels, pushes a
              Future             "worker died" record, starts a replacement, kills tasks
                                 that ran past their timeout

No feeder thread: ``apply_async`` pickles in the caller and puts the task straight
into shared memory, so an argument that cannot be pickled raises there and then.
Tasks whose arguments are plain scalars skip pickle entirely (the queue's C codec),
and a function is pickled once and cached on both sides.

What happens when a worker dies is here: the monitor thread (``_monitor``) wakes on its
pidfd or sentinel, ``_worker_ended`` reads its slot (``_protocol``) to find the task it
had taken, pushes a "worker died" record on the result ring and starts a replacement;
the result thread (``_handle_results``) fails just that task (``_worker_died``) with a
``WorkerDiedError`` or, past its deadline, a ``TaskTimeoutError``.  Also here: the
monitor's ``_Doorbell``, submitting (pickling in the caller, the overflow
that waits for room in the ring), the cancel marks' parent side, cancelling a running
task (``stop_running``: the monitor's ``_stop_task`` kills its worker, as for a
timeout, through the stop word of ``_protocol``), closing, joining and terminating.

Starting a worker
-----------------
A worker's ``Process`` arguments are the two rings, the slots, the size of the table
of cancel marks (0 for a Pool), its slot, the parent's token, the initializer's
record (``(initializer, initargs)`` pickled by shoal, so lambdas go) and
``maxtasksperchild``.  Initargs that record
cannot carry (``multiprocessing``'s Queue, Lock, Value: they may only be inherited)
go as a ``Process`` argument of their own, with the record holding ``None`` in their
place: inherited under fork, pickled by ``start()`` under spawn and forkserver, as
in the standard library (#11).  A spawn or forkserver child imports the main module
before it gets these; one that starts a pool during that import (a script with no
``__main__`` guard) exits with ``_BOOTSTRAP_EXIT`` before its pid is in its slot,
and the pool fails instead of replacing it for ever.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from multiprocessing.pool import RemoteTraceback
from typing import Any

from .. import (
    _core,
    _dict,  # noqa: F401  (a sweep here must know every class in shared memory)
)
from .._errors import (
    BrokenPoolError,
    ClosedError,
    SerializationError,
    ShoalError,
    TaskTimeoutError,
    WorkerDiedError,
)
from .._handle import keep_for_children, sent_references
from .._memory import keeps_spares, reap, report_unraisable
from .._process import process_cpu_count
from .._queues import Queue, batch_getter, claimer, encode, pack_for, put_fast, records_taken
from .._serialize import dumps, loads
from .._sharedctypes import RawArray, words
from ._base import _check_uncollected_mode, _report_uncollected
from ._jobs import _CANCELLED_STATES, AsyncResult, _call_back, _FutureJob, _Job
from ._protocol import (
    _BAD_TASK,
    _BOOTSTRAP_EXIT,
    _CALL_KW,
    _CLAIM,
    _CLAIMED,
    _DEADLINE,
    _DIED,
    _FUNC_CACHE_SIZE,
    _GUARDED,
    _MAIN_REIMPORTED,
    _MARK_WORDS,
    _MARKER,
    _OK,
    _OK_PICKLED,
    _ORDINAL_MASK,
    _PID,
    _RESULT_RING_BYTES,
    _SETUP_FAILED,
    _SETUP_RAISED,
    _SKIPPED,
    _SLOT_WORDS,
    _STOP,
    _STOP_ASKED,
    _TASK_RING_BYTES,
    _WAKE,
)
from ._startup import _forkserver_status, _main_guard_message, _refuse_while_bootstrapping
from ._worker import _unpicklable, _worker_main

# workers in a row that fail before they start (and none ever did) before the pool
# gives up on them (see _Engine._failed_before_start); at least one per slot
_START_FAILURES = 3
# how long cancel() waits for a word of the table that a mark of an earlier record
# still holds (popped a moment after that record was taken) before it gives up
_MARK_WAIT_S = 1.0
_RESULT_BATCH = 512
# how often the monitor looks at the deadlines, once any task has a timeout
_CHECK_TIMEOUTS_S = 0.02


# Forks of shoal's own engines, one at a time: a child forked while another is being
# started inherits that one's sentinel pipe and keeps it open (see _open_pidfd).
_START_LOCK = threading.Lock()

# The shared memory of the last pool of this process that ended cleanly (its two rings
# and its slots), kept for the next one (#11): making and closing it was ~0.75 ms
# (the rings' pages are allocated up front, so that a full /dev/shm fails the pool's
# creation, not a worker later), 6% of a whole `with Executor(2) as e:
# e.submit(f, 1).result()`.  Kept only when every worker of that pool exited by itself
# (none killed or dead: nobody else maps or holds it), and emptied first; a leak check
# closes it (shoal._memory.release_spares), as does a segment's creation that found
# /dev/shm full, a forked child forgets it (its parent's, borrowed), the process's exit
# hooks close it.
_spare_lock = threading.Lock()
_spare: list[tuple[Queue, Queue, RawArray]] = []  # one at most


def _take_spare(slot_words: int) -> tuple[Queue, Queue, RawArray]:
    """The kept rings and slots (the slots zeroed), else new ones; slots of another
    size are replaced."""
    with _spare_lock:
        kept = _spare.pop() if _spare else None
    if kept is None:
        tasks, results = Queue(capacity=_TASK_RING_BYTES), Queue(capacity=_RESULT_RING_BYTES)
        for ring in (tasks, results):
            keep_for_children(ring)
        slots = None
    else:
        tasks, results, slots = kept
        if len(slots) == slot_words:
            buf, base = words(slots)
            buf[base : base + slot_words * 8] = bytes(slot_words * 8)
        else:
            slots.close()
            slots = None
    if slots is None:
        slots = RawArray("q", slot_words)
        keep_for_children(slots)
    return tasks, results, slots


def _close_spare() -> bool:
    with _spare_lock:
        kept = [obj for objs in _spare for obj in objs]
        _spare.clear()
    for obj in kept:
        obj.close()
    return bool(kept)


def _forget_spare() -> None:
    _spare.clear()  # (a child's: borrowed from its parent, closing releases nothing)


def _keep_spare(tasks: Queue, results: Queue, slots: RawArray) -> bool:
    """Keep a released pool's rings and slots for the next pool, if the rings are empty
    (what a clean end leaves: the exit records no worker took, the result thread's
    wake-ups) and nothing is kept yet."""
    for ring in (tasks, results):
        take = batch_getter(ring)
        while True:
            try:
                left = take(1024, False)
            except queue.Empty:
                break
            except Exception:  # (a record that does not decode: not for reuse)
                return False
            if ring is tasks and any(record is not None for record in left):
                return False
    with _spare_lock:
        if _spare:
            return False
        _spare.append((tasks, results, slots))
        return True


keeps_spares(_close_spare)
os.register_at_fork(after_in_child=_forget_spare)


def _signal(pid: int, sig: int) -> bool:
    """Send ``sig`` to worker ``pid``; False if it is gone.  Any step of stopping a
    timed-out worker may find it gone: killed by someone else, or ended by the SIGKILL
    and at once reaped by its parent (the forkserver, not this process), before the
    SIGCONT that follows it.  That ended the monitor thread with ProcessLookupError,
    and with it the pool's watch on its workers (#11)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it ended), or None where there is none.

    A process's sentinel is a pipe whose write end the worker holds, and any process
    forked at that moment (by another thread of the parent) inherits it, so the
    sentinel stays silent while that one lives.  A pidfd says only whether that very
    process ended.  Elsewhere, and if it cannot be had (a forkserver child already
    reaped), the sentinel serves.
    """
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError:
            pass
    return None


def _argument_error(
    job: Any, records: list[tuple], error: SerializationError
) -> SerializationError:
    """The error naming the call and the argument, not the task record carrying them."""
    values: list[Any] = []
    for record in records:
        if record[1] == _CALL_KW:
            values += [*record[3], *record[4].values()]
        else:
            values += record[3:]
    culprit = _unpicklable(tuple(values), error)
    return type(culprit)(  # a SerializationTypeError stays a TypeError (#11)
        f"cannot send {job._description} to a worker: {culprit}",
        type_name=culprit.type_name,
    )


# ---- the engine -------------------------------------------------------------------------


_RUN, _CLOSE, _TERMINATE = "running", "closed", "terminated"


class _Doorbell:
    """What wakes the monitor thread out of its wait on the workers' death handles (a
    close, a terminate, timeouts turned on): a pipe whose read end waits beside them in
    ``multiprocessing.connection.wait`` (loky's ``_ThreadWakeup``).

    ``ring()`` from any thread, any number of times, and it never blocks (the write
    end does not: once the pipe is full the monitor has a wake-up to find anyway);
    ``clear()`` by the monitor once it woke; ``close()`` once the engine is released,
    after which ringing does nothing.
    """

    def __init__(self) -> None:
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._writer, False)

    def fileno(self) -> int:
        """The read end, for ``wait()``; ValueError once closed."""
        if self._reader < 0:
            raise ValueError("the doorbell is closed")
        return self._reader

    def ring(self) -> None:
        """Wake the waiter (a no-op once closed, or with the pipe full)."""
        try:
            os.write(self._writer, b"x")
        except OSError:
            pass

    def clear(self) -> None:
        """Take the rings that woke the waiter, so that its next wait waits."""
        try:
            os.read(self._reader, 4096)
        except OSError:
            pass

    def close(self) -> None:
        """Close both ends (twice is fine)."""
        for fd in (self._reader, self._writer):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reader = self._writer = -1


class _Engine:
    """Workers, the two rings and the parent's two threads, shared by Pool and Executor."""

    def __init__(
        self,
        processes: int | None,
        initializer: Callable[..., object] | None,
        initargs: Iterable[Any],
        maxtasksperchild: int | None,
        context: Any,
        task_timeout: float | None,
        uncollected_errors: str,
        name: str,
        cancellable: bool = False,
    ) -> None:
        _refuse_while_bootstrapping()
        if processes is None:
            processes = process_cpu_count()
        if not isinstance(processes, int) or isinstance(processes, bool):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int)
            or isinstance(maxtasksperchild, bool)
            or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self.task_timeout = _check_timeout(task_timeout)
        self.processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._initargs_at_start = False  # see _setup_record
        self._ever_started = False  # see _failed_before_start
        self._start_failures = 0
        self._maxtasks = maxtasksperchild
        self._context = context if context is not None else multiprocessing.get_context()
        self._uncollected_mode = _check_uncollected_mode(uncollected_errors)
        self._name = name
        self.state = _RUN

        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        # re-entered when a task failed while pushing feeds an imap's next chunk
        self._push_lock = threading.RLock()
        self._inflight: dict[int, tuple[_Job, int, float]] = {}  # ordinal -> job, index, timeout
        self._overflow: collections.deque[tuple[_Job, int, tuple]] = collections.deque()
        self._outstanding = 0  # tasks submitted, not finished
        self._finished = 0  # tasks finished, not yet counted out of _outstanding
        self._uncollected: list[AsyncResult] = []
        self._function_records: dict[int, tuple[weakref.ref, bytes]] = {}
        self._timed_out: dict[int, tuple[int, float]] = {}  # slot -> (ordinal, timeout)
        self._timeouts_used = self.task_timeout > 0
        self._stops: list[int] = []  # running tasks cancelled: for the monitor to stop
        self._broken: BaseException | None = None
        self._released = False  # the rings and slots are closed
        self._join_lock = threading.Lock()  # one join at a time (see _join_executors)
        self._pid = os.getpid()  # (a forked child inherits this object, not the pool)
        self._terminated = False  # terminate() was called (not close())

        # the workers forked reach these through the fork only, and the pool closes
        # them (or keeps them for the next pool) once its workers are gone: they record
        # nothing, nor give anything back.  Calls cancelled in the ring have a table of
        # marks after the slots (a Pool's too, since #14)
        self._mark_words = _MARK_WORDS
        self._tasks, self._results, self._slots = _take_spare(
            processes * _SLOT_WORDS + 1 + self._mark_words
        )
        self._pushed = records_taken(self._tasks)  # (the next ordinal: 0 if new)
        # every worker that ended so far exited by itself, status 0 (_waited): only
        # then are the rings and slots kept (see _release)
        self._clean_end = True
        # a worker ended otherwise since the last sweep: what it left is reaped
        # (_reap_dead)
        self._left_files = False
        self._marked_at = words(self._slots)[1] + processes * _SLOT_WORDS * 8
        # the class of a task's exception's __cause__, as the standard library's
        # (``cancellable``: an Executor's)
        self._traceback_class = _RemoteTraceback if cancellable else RemoteTraceback
        self._workers: list[Any] = [None] * processes
        self._sent: list[Any] = [None] * processes  # see _start_worker
        self._pidfds: list[int | None] = [None] * processes  # see _open_pidfd
        self._doorbell = _Doorbell()
        self._token = _core.self_token()
        self._started = 0
        try:
            for slot in range(processes):
                self._start_worker(slot)
        except BaseException:
            self._kill_workers()
            self._release()
            raise
        self._result_thread = threading.Thread(
            target=self._handle_results, name=f"{name}-results", daemon=True
        )
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"{name}-monitor", daemon=True
        )
        self._result_thread.start()
        self._monitor_thread.start()

    # ---- workers ----------------------------------------------------------------------

    def _slot_word(self, slot: int, word: int) -> int:
        buf, base = words(self._slots)
        return _core.load64(buf, base + (slot * _SLOT_WORDS + word) * 8)

    def _running_slot(self, ordinal: int) -> int | None:
        """The slot of the worker that holds task ``ordinal`` now, if one does."""
        claim = _CLAIMED | ordinal
        for slot in range(self.processes):
            if self._slot_word(slot, _CLAIM) == claim:
                return slot
        return None

    def _start_worker(self, slot: int) -> None:
        base = slot * _SLOT_WORDS
        for word in range(_SLOT_WORDS):
            self._slots[base + word] = 0
        self._started += 1
        method = self._context.get_start_method()
        # spawn and forkserver pickle the arguments in start(): the handles in them
        # take references in flight, which a worker killed before it unpickles them
        # would leave behind for ten minutes.  Kept here, they are settled when the
        # worker ends: given back if it never got as far as storing its pid.
        with sent_references() as sent:
            setup, initargs = self._setup_record()
            process = self._context.Process(
                target=_worker_main,
                args=(
                    self._tasks,
                    self._results,
                    self._slots,
                    self._mark_words,
                    slot,
                    self._token,
                    setup,
                    self._maxtasks,
                    initargs,
                ),
                name=f"{method.capitalize()}{self._name}Worker-{self._started}",
                daemon=True,
            )
            with _START_LOCK:
                try:
                    process.start()
                except (OSError, EOFError):
                    # 3.14's forkserver imports the main module itself before it
                    # serves (its preload): one that left at once, refusing a pool
                    # started by that import, fails the pool with the one error
                    if method == "forkserver" and _forkserver_status() == _BOOTSTRAP_EXIT:
                        raise BrokenPoolError(_main_guard_message(method)) from None
                    raise
            self._sent[slot] = sent.keep()
        self._pidfds[slot] = _open_pidfd(process.pid)
        self._workers[slot] = process

    def _setup_record(self) -> tuple[bytes | None, tuple | None]:
        """What a worker gets to run the initializer: (its record, initargs that go as
        the Process's own arguments, or None where they are in the record).

        The record is pickled by shoal (lambdas and closures go, as tasks do).  Initargs
        it cannot carry -- a ``multiprocessing.Queue``, ``Lock`` or ``Value``, which may
        only be inherited -- go with the process start instead, as in the standard
        library (#11): inherited under fork, pickled by ``start()`` under spawn and
        forkserver, where multiprocessing allows them.  Decided once per pool."""
        if self._initializer is None:
            return None, None
        if not self._initargs_at_start:
            try:
                return encode(self._tasks, (self._initializer, self._initargs), kept=False), None
            except SerializationError:
                self._initargs_at_start = True
        return encode(self._tasks, (self._initializer, None), kept=False), self._initargs

    def _failed_before_start(self, slot: int, exitcode: int | None) -> bool:
        """Whether workers keep failing before they start: ``_START_FAILURES`` of them
        (at least one a slot) in a row exited with status 1 before storing their pid,
        and none ever stored it.  Under spawn and forkserver that is the main script
        raising as each worker imports it (unguarded code, a ``set_start_method()``
        without ``force=True``...); replacing them would go on for ever."""
        if self._ever_started or self._context.get_start_method() == "fork":
            return False
        if self._slot_word(slot, _PID) or any(
            self._slot_word(other, _PID) for other in range(self.processes)
        ):
            self._ever_started = True
            return False
        if exitcode != 1:
            return False
        self._start_failures += 1
        return self._start_failures >= max(_START_FAILURES, self.processes)

    def _death_handles(self) -> dict[int, int]:
        """What becomes readable when each live worker ends: handle -> slot."""
        return {
            process.sentinel if self._pidfds[slot] is None else self._pidfds[slot]: slot
            for slot, process in enumerate(self._workers)
            if process is not None
        }

    def _close_pidfd(self, slot: int) -> None:
        pidfd, self._pidfds[slot] = self._pidfds[slot], None
        if pidfd is not None:
            os.close(pidfd)

    def _settle_start(self, slot: int) -> None:
        """Settle the references in flight of the ended worker's arguments."""
        sent = self._sent[slot]
        self._sent[slot] = None
        if sent is None:
            return
        if self._slot_word(slot, _PID):
            sent.release()  # it unpickled them
        else:
            sent.cancel()

    def _monitor(self) -> None:
        """Notice dead workers at once (their sentinels), replace them, enforce timeouts."""
        while True:
            with self._cond:
                state, busy = self.state, self._outstanding > 0
            if state == _TERMINATE:
                return
            live = self._death_handles()
            if not live and state != _RUN and not busy:
                return
            timeout = _CHECK_TIMEOUTS_S if self._timeouts_used else None
            ready = multiprocessing.connection.wait([*live, self._doorbell], timeout)
            for handle in ready:
                if handle is self._doorbell:
                    self._doorbell.clear()
                else:
                    self._worker_ended(live[handle])
            if self._stops:
                self._stop_cancelled()
            if self._timeouts_used:
                self._enforce_timeouts()

    def _waited(self, process: Any) -> None:
        """Wait for the worker ``process``, which ended or was killed, and note how.

        One that did not exit by itself with status 0 ran no exit hooks (SIGKILL, a
        segfault, ``os._exit``): its ledger, which records the references it held
        (``shoal._handle``), and its liveness file are left for a sweep, and its rings
        are not for reuse (see _release).
        """
        process.join()
        if process.exitcode != 0:
            self._clean_end = False
            self._left_files = True

    def _reap_dead(self) -> None:
        """Reap what the workers waited for since the last call left (see _waited): the
        references their ledgers record are given back now, not at some later sweep
        (the next program's first segment, ``doctor --reap``).  Called once a worker is
        found dead, and as the pool is released (the workers a terminate killed, those
        found dead after it).  They were waited for: no longer alive to anyone."""
        if not self._left_files:
            return
        self._left_files = False
        try:
            reap()
        except Exception as exc:
            report_unraisable(exc)

    def _worker_ended(self, slot: int) -> None:
        process = self._workers[slot]
        self._waited(process)
        self._close_pidfd(slot)
        claim = self._slot_word(slot, _CLAIM)
        ordinal = -1
        # it took the record, not just claimed it (the claim is written first)
        if claim & _CLAIMED and self.was_taken(claim & _ORDINAL_MASK):
            ordinal = claim & _ORDINAL_MASK
        self._workers[slot] = None
        self._settle_start(slot)
        with self._cond:
            if self.state == _TERMINATE:
                return
            replace = self.state == _RUN or self._outstanding > 0
            replace = replace and not self._slot_word(slot, _SETUP_RAISED)
            # it never got its arguments: re-importing a main module without a
            # __main__ guard, it tried to start a pool itself.  Each replacement would
            # do the same, for ever (what the standard library's pool does)
            reimported = process.exitcode == _BOOTSTRAP_EXIT and not self._slot_word(slot, _PID)
            failed_start = not reimported and self._failed_before_start(slot, process.exitcode)
            replace = replace and not reimported and not failed_start
        if reimported or failed_start:
            self._results.put((_MARKER, _MAIN_REIMPORTED, bool(failed_start)))
        # behind anything the worker sent before it died (the same ring, later)
        self._results.put((_MARKER, _DIED, slot, process.pid, process.exitcode, ordinal))
        if replace:
            try:
                self._start_worker(slot)
            except Exception as exc:  # out of processes or memory: keep the others going
                _call_back(_raise, exc)
        self._reap_dead()

    def _enforce_timeouts(self) -> None:
        now = time.monotonic_ns()
        for slot, process in enumerate(self._workers):
            if process is None or slot in self._timed_out:
                continue
            deadline = self._slot_word(slot, _DEADLINE)
            if not deadline or deadline > now:
                continue
            claim = self._slot_word(slot, _CLAIM)
            if not claim & _CLAIMED:
                continue
            ordinal = claim & _ORDINAL_MASK
            entry = self._inflight.get(ordinal)
            # (recorded first: a worker that kills itself reports a timeout)
            self._timed_out[slot] = (ordinal, entry[2] if entry else 0.0)
            if not self._stop_task(slot, ordinal, deadline):
                del self._timed_out[slot]

    def _stop_cancelled(self) -> None:
        """Stop the running tasks that ``stop_running`` cancelled."""
        with self._cond:
            stops, self._stops = self._stops, []
        for ordinal in stops:
            slot = self._running_slot(ordinal)
            if slot is not None:  # (else it ended meanwhile: its result is dropped)
                self._stop_task(slot, ordinal)

    def _stop_task(self, slot: int, ordinal: int, deadline: int | None = None) -> bool:
        """Kill the worker of ``slot`` if it still runs task ``ordinal`` (and, for a
        timeout, that task's item still has ``deadline``), unless it is inside
        ``uninterruptible()``: then it kills itself as the block ends.  True if it is
        killed or will be; False if it had finished that task (or item).  The monitor
        thread's alone (see "Stopping a running task" in ``_protocol``)."""
        buf, base = words(self._slots)
        at = base + (slot * _SLOT_WORDS + _STOP) * 8
        asked = _STOP_ASKED | ordinal
        while True:  # ask, keeping the worker's _GUARDED bit
            word = _core.load64(buf, at)
            if _core.cas64(buf, at, word, (word & _GUARDED) | asked)[0]:
                break
        if word & _GUARDED:
            return True  # deferred: it kills itself as its uninterruptible() block ends
        process = self._workers[slot]
        claim = _CLAIMED | ordinal
        killed = False
        # stop it, then look again: it may have finished that task (or item) meanwhile;
        # once it sees the ask it waits for this verdict instead of taking another task
        if (
            process is not None
            and self._slot_word(slot, _CLAIM) == claim
            and _signal(process.pid, signal.SIGSTOP)
        ):
            if self._slot_word(slot, _CLAIM) == claim and (
                deadline is None or self._slot_word(slot, _DEADLINE) == deadline
            ):
                killed = _signal(process.pid, signal.SIGKILL)
            _signal(process.pid, signal.SIGCONT)
        if not killed:  # take the ask back, unless something else replaced it
            word = _core.load64(buf, at)
            while word & ~_GUARDED == asked:
                ok, word = _core.cas64(buf, at, word, word & _GUARDED)
                if ok:
                    break
        return killed

    def worker_pids(self, started_only: bool = False) -> list[int]:
        """The pids of the worker processes now, in slot order (internal: what
        ``shoal.testing``'s fault helpers read).  ``started_only``: only those that
        have started, their pid in their slot (their arguments unpickled).  A worker
        killed but not yet found dead by the monitor is still listed; none once the
        pool is released."""
        if self._released:
            return []
        return [
            process.pid
            for slot, process in enumerate(list(self._workers))
            if process is not None
            and (not started_only or self._slot_word(slot, _PID) == process.pid)
        ]

    def _kill_workers(self) -> None:
        for process in self._workers:
            if process is not None and process.exitcode is None:
                process.kill()
        for process in self._workers:
            if process is not None:
                # killed: it ends (waitpid, not the sentinel; see _open_pidfd)
                self._waited(process)

    # ---- submitting -------------------------------------------------------------------

    def function_record(self, function: Callable[..., Any]) -> bytes:
        """The pickle of ``function``, cached: most tasks reuse one function."""
        if not callable(function):
            raise TypeError(f"{type(function).__name__!r} object is not callable")
        cached = self._function_records.get(id(function))
        if cached is not None and cached[0]() is function:
            return cached[1]
        by_value = _needs_by_value(function)
        with sent_references() as sent:
            data, buffers = dumps(function, by_value)
            reusable = len(sent) == 0 and buffers is None
        if buffers is not None:
            data = pack_for(self._tasks, data, buffers)
        if reusable:  # a pickle holding shoal handles may be unpickled only once
            try:
                # weakly: a call done must not keep its callable (a bound method's
                # object, say) alive, as ProcessPoolExecutor's does not
                ref = weakref.ref(function)
            except TypeError:
                return data  # not cached (a weakref-less callable is rare)
            if len(self._function_records) >= _FUNC_CACHE_SIZE:
                self._function_records.clear()
            self._function_records[id(function)] = (ref, data)
        return data

    def was_taken(self, ordinal: int) -> bool:
        """Whether the task ring's record ``ordinal`` has left it (wrapping at 2**32)."""
        return 0 < (records_taken(self._tasks) - ordinal) & _ORDINAL_MASK < (1 << 31)

    def _mark_at(self, ordinal: int) -> int:
        return self._marked_at + 8 + (ordinal % self._mark_words) * 8

    def mark_cancelled(self, ordinal: int) -> bool:
        """Tell the worker that takes task ``ordinal`` to skip it (counted before it is
        set: a worker that finds the count zero took its task before the mark).  False
        if a worker took the task while its word of the table was still held by the
        mark of an earlier record, or that word stayed held (see "Cancelled calls"):
        nothing is marked."""
        buf, at = words(self._slots)[0], self._mark_at(ordinal)
        _core.fetch_add64(buf, self._marked_at, 1)
        deadline = None
        while not _core.cas64(buf, at, 0, _CLAIMED | ordinal)[0]:
            if deadline is None:
                deadline = time.monotonic() + _MARK_WAIT_S
            if self.was_taken(ordinal) or time.monotonic() > deadline:
                _core.fetch_add64(buf, self._marked_at, -1)
                return False
            time.sleep(0.0005)
        return True

    def take_back(self, ordinal: int) -> bool | None:
        """Cancel task ``ordinal`` if no worker took it: True if marked (the worker that
        takes it skips it: it never runs), False if a worker has it (it runs, or ran),
        None if it waits in the ring with no word for its mark (it will run)."""
        if not self.mark_cancelled(ordinal):
            return False if self.was_taken(ordinal) else None
        # a worker that took it before the mark was there runs it
        return not (self.was_taken(ordinal) and self.unmark_cancelled(ordinal))

    def stop_running(self, ordinal: int) -> bool:
        """Cancel task ``ordinal``, which a worker took: its outcome is dropped, and the
        monitor kills the worker if it still runs it (``_stop_task``).  False if the
        task ended already (its outcome is delivered, or on its way)."""
        if self._running_slot(ordinal) is None or not self.drop(ordinal):
            return False
        with self._cond:
            self._stops.append(ordinal)
        self._doorbell.ring()
        return True

    def drop(self, ordinal: int) -> bool:
        """Forget task ``ordinal`` (cancelled): whatever comes back for it is ignored.
        False if its outcome is being delivered already."""
        if self._inflight.pop(ordinal, None) is None:
            return False
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()  # (join() waits for the count)
        return True

    def cancel_job(self, job: _Job) -> bool:
        """Cancel what is left of a Pool result's tasks (``AsyncResult.cancel()``):
        those waiting in the parent are never sent, those in the ring are marked (the
        worker that takes one skips it), those running are stopped.  True if any was:
        the job can no longer succeed."""
        if self._released:
            return False
        job._cancelled = True  # _push_overflow drops its tasks still in the parent
        with self._push_lock:  # (its ordinals are assigned under it)
            ordinals = list(job._ordinals or ())
        cancelled = False
        for ordinal in ordinals:
            if ordinal is None:  # still in the parent
                cancelled = True
                continue
            entry = self._inflight.get(ordinal)
            if entry is None or entry[0] is not job:
                continue  # finished
            taken_back = self.take_back(ordinal)
            if taken_back:
                cancelled = self.drop(ordinal) or cancelled
            elif taken_back is False:
                cancelled = self.stop_running(ordinal) or cancelled
        return cancelled

    def unmark_cancelled(self, ordinal: int) -> bool:
        """Take the mark back; False if it is gone (the worker that took the task
        popped it: it skips the task)."""
        buf = words(self._slots)[0]
        if not self._mark_words or not _core.load64(buf, self._marked_at):
            return False
        if not _core.cas64(buf, self._mark_at(ordinal), _CLAIMED | ordinal, 0)[0]:
            return False
        _core.fetch_add64(buf, self._marked_at, -1)
        return True

    def _forget_mark(self, job: _Job, ordinal: int) -> None:
        """Drop the mark of a cancelled call that no worker will pop (taken back, or its
        worker failed or died before it looked), so that workers stop looking.  Only
        once its future is cancelled: a cancel() still deciding pops its own."""
        if self._mark_words and type(job) is _FutureJob and job._future.cancelled():
            self.unmark_cancelled(ordinal)

    def use_timeouts(self) -> None:
        """From now on the monitor looks at the workers' deadlines."""
        if not self._timeouts_used:
            self._timeouts_used = True
            self._poke()

    def check_running(self, closed_ok: bool = False) -> None:
        """Raise unless tasks may be submitted (``closed_ok``: also after close())."""
        if self._broken is not None:
            raise self._broken
        if self.state == _TERMINATE or (self.state == _CLOSE and not closed_ok):
            how = "terminated" if self._terminated else "closed"
            raise ClosedError(f"Pool not running (it was {how})")

    def _submit(self, job: _Job, indexes: list[int], records: list[tuple]) -> None:
        """Put the tasks on the ring (pickled here: errors raise in the caller)."""
        entries = list(zip(itertools.repeat(job), indexes, records))
        with self._push_lock:
            # checked again under the lock that _fail_outstanding takes: a task put
            # after the pool broke or was terminated would wait for ever.  (Closed is
            # fine: an imap started before close() goes on reading its input.)
            self.check_running(closed_ok=True)
            with self._cond:
                self._outstanding += len(entries)
            if self._overflow:  # behind those already waiting: the ring keeps order
                self._overflow.extend(entries)
                return
            try:
                rest = self._push(entries)
            except BaseException as error:
                with self._cond:
                    self._outstanding -= len(entries)
                if isinstance(error, SerializationError):
                    raise _argument_error(job, records, error) from error
                raise
            if rest:
                self._overflow.extend(rest)
                # the result thread pushes these as results make room; the tasks that
                # filled the ring may all have finished already, and the result thread
                # gone back to waiting: wake it so that it looks at the overflow
                try:
                    put_fast(self._results, (_MARKER, _WAKE), False)
                except queue.Full:
                    pass  # results to handle: it will look anyway

    def _push(self, entries: list[tuple[_Job, int, tuple]]) -> list[tuple[_Job, int, tuple]]:
        """Put what fits on the ring now; return the rest.  The caller holds _push_lock."""
        first = self._pushed  # ordinals are assigned in ring order
        for k, (job, index, record) in enumerate(entries):
            self._inflight[(first + k) & _ORDINAL_MASK] = (job, index, record[2])
            if job._ordinals is not None:  # (what cancel() looks for)
                job._ordinals[index] = (first + k) & _ORDINAL_MASK
        try:
            put = self._tasks.put_many([entry[2] for entry in entries], block=False)
        except queue.Full as full:
            put = full.items_put  # type: ignore[attr-defined]
        except BaseException:  # nothing was put
            put = 0
            raise
        finally:
            for k in range(put, len(entries)):
                del self._inflight[(first + k) & _ORDINAL_MASK]
                job, index = entries[k][0], entries[k][1]
                if job._ordinals is not None:  # not on the ring: that ordinal goes to another
                    job._ordinals[index] = None
            self._pushed = first + put
        return entries[put:]

    def _push_overflow(self) -> None:
        failed: list[tuple[_Job, int, tuple]] = []
        cancelled: list[tuple[_Job, int, tuple]] = []
        with self._push_lock:
            batch = []
            while self._overflow and len(batch) < 1024:
                entry = self._overflow.popleft()
                job = entry[0]
                # cancelled while it waited here (decided under this lock): never
                # pushed.  (Its state read bare: cancel() holds the future's lock
                # when it takes this one, so taking that one here could deadlock.)
                if job._cancelled or (
                    type(job) is _FutureJob and job._future._state in _CANCELLED_STATES
                ):
                    cancelled.append(entry)
                else:
                    batch.append(entry)
            try:
                self._overflow.extendleft(reversed(self._push(batch)))
            except BaseException as exc:  # a record that pickled once fails now
                failed, error = batch, exc
        # failed outside the lock: failing feeds an imap, which takes its own lock
        for job, index, _ in failed:
            self._finish(job, index, False, error)
        for job, index, _ in cancelled:  # (counted out; the future stays cancelled)
            if type(job) is _FutureJob:
                self._finish(job, index, False, concurrent.futures.CancelledError())
        settled = sum(type(job) is not _FutureJob for job, _, _ in cancelled)
        if settled:  # a Pool result's: its cancel() settles it, they are only counted out
            with self._cond:
                self._outstanding -= settled
                self._cond.notify_all()

    def _deliver_local(self, job: _Job, index: int, exc: BaseException) -> None:
        """Fail a task that never reached a worker (its input raised, say)."""
        with self._cond:
            self._outstanding += 1
        self._finish(job, index, False, exc)

    # ---- results ----------------------------------------------------------------------

    def _handle_results(self) -> None:
        get_batch = batch_getter(self._results)
        while True:
            try:
                records = get_batch(_RESULT_BATCH)
            except ClosedError:
                return
            except BaseException as exc:  # cannot happen (results are pickled twice),
                records = getattr(exc, "items", [])  # but the thread must never die
                _call_back(_raise, exc)
            for record in records:
                try:
                    if self._handle_result(record):
                        return
                except BaseException as exc:  # a bug must not hang every caller
                    _call_back(_raise, exc)
            self._notify_batch()
            if self._overflow:
                self._push_overflow()

    def _handle_result(self, record: tuple) -> bool:
        """Act on one record of the result ring; True when the thread should end."""
        ordinal, status = record[0], record[1]
        if ordinal == _MARKER:
            if status == _SETUP_FAILED:
                self._setup_failed(_remote_error(record[2], record[3], self._traceback_class))
            elif status == _MAIN_REIMPORTED:
                self._main_reimported(record[2])
            elif status == _WAKE:
                return self._finished_all()
            else:
                self._worker_died(*record[2:])
            return False
        entry = self._inflight.pop(ordinal, None)
        if entry is None:
            # taken back by cancel_queued, cancelled, or failed by terminate; a mark that
            # no worker popped (its arguments did not unpickle) goes too
            self.unmark_cancelled(ordinal)
            return False
        job, index, _ = entry
        if status == _OK:
            self._finish(job, index, True, record[2:], False)
        elif status == _SKIPPED:  # cancelled (a race with cancel(): it says so)
            self._finish(job, index, False, concurrent.futures.CancelledError(), False)
        elif status == _OK_PICKLED:
            try:
                values = loads(record[2])
            except BaseException as exc:
                # what unpickling raised is the task's outcome, SystemExit included:
                # escaping here, it left the task pending for ever
                self._finish(job, index, False, self._unreadable(job, index, exc), False)
            else:
                self._finish(job, index, True, values, False)
        else:
            self._forget_mark(job, ordinal)  # (its arguments failed before the look)
            error = _remote_error(record[2], record[3], self._traceback_class)
            if status == _BAD_TASK and type(job) is _FutureJob:
                # as ProcessPoolExecutor reports it (its worker dies of it); only
                # this call fails here
                broken = BrokenProcessPool(
                    f"the arguments of {job._describe(index)} could not be unpickled "
                    f"in the worker: {type(error).__name__}: {error}; only this call failed"
                )
                broken.__cause__ = error
                error = broken
            self._finish(job, index, False, error, False)
        return False

    def _unreadable(self, job: _Job, index: int, exc: BaseException) -> BaseException:
        """The outcome of a result that failed to unpickle here.

        A Pool task gets what unpickling raised.  An Executor call gets a
        ``BrokenProcessPool``, as ``ProcessPoolExecutor`` reports it, caused by what
        unpickling raised; ``ProcessPoolExecutor`` also breaks the whole pool and fails
        every pending call, where here only this call fails (docs/compatibility.md).
        """
        if type(job) is not _FutureJob:
            return exc
        error = BrokenProcessPool(
            f"the result of {job._describe(index)} could not be unpickled in the parent: "
            f"{type(exc).__name__}: {exc}; only this call failed"
        )
        error.__cause__ = exc
        return error

    def _finish(self, job: _Job, index: int, ok: bool, value: Any, notify: bool = True) -> None:
        try:
            if ok:
                job._deliver(index, value)
            else:
                job._fail(index, value)
        finally:
            if notify:
                with self._cond:
                    self._outstanding -= 1
                self._notify()
            else:  # the result thread's batch: counted out by its _notify_batch
                self._finished += 1

    def _notify_batch(self) -> None:
        with self._cond:
            self._outstanding -= self._finished
            self._finished = 0
            if self._waiters:
                self._cond.notify_all()

    def _notify(self) -> None:
        """Wake whoever waits for a result or for the pool to drain."""
        with self._cond:
            if self._waiters:
                self._cond.notify_all()

    def _worker_died(self, slot: int, pid: int, exitcode: int, ordinal: int) -> None:
        timed_out = self._timed_out.pop(slot, None)
        if ordinal < 0:
            return
        entry = self._inflight.pop(ordinal, None)
        if entry is None:
            # its result made it out before it died, or it was cancelled (with a mark
            # it died before popping, maybe)
            self.unmark_cancelled(ordinal)
            return
        job, index, _ = entry
        self._forget_mark(job, ordinal)  # it may have died before it looked
        description = job._describe(index)
        if timed_out is not None and timed_out[0] == ordinal:
            limit = timed_out[1]
            exc: BaseException = TaskTimeoutError(
                f"{description} ran longer than its timeout of {limit:g} s: worker {pid} "
                "was killed and replaced",
                timeout=limit,
                pid=pid,
                task=description,
            )
        else:
            exc = WorkerDiedError(
                f"worker {pid} {_how_it_ended(exitcode)} while running {description}; "
                "the pool replaced it",
                pid=pid,
                exitcode=exitcode,
                task=description,
            )
        self._finish(job, index, False, exc)

    def _setup_failed(self, exc: BaseException) -> None:
        if self._broken is not None:
            return
        broken = BrokenPoolError(
            f"the pool's initializer raised {type(exc).__name__}: {exc}; the pool "
            "cannot start workers and is broken"
        )
        broken.__cause__ = exc
        self._broken = broken
        self._fail_outstanding(broken)

    def _main_reimported(self, failed: bool) -> None:
        if self._broken is not None:
            return
        method = self._context.get_start_method()
        main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
        if failed:
            self._broken = BrokenPoolError(
                f"the pool's workers cannot start: {self._start_failures} in a row exited "
                "with status 1 before they started, and none ever did.  Under the "
                f"{method!r} start method each worker first imports {main}; that "
                "import most likely raised (see the tracebacks above), as code outside "
                "an 'if __name__ == \"__main__\":' block does there.  Put everything but "
                "imports and definitions under 'if __name__ == \"__main__\":'."
            )
            self._fail_outstanding(self._broken)
            return
        self._broken = BrokenPoolError(_main_guard_message(method))
        self._fail_outstanding(self._broken)

    def _finished_all(self) -> bool:
        with self._cond:
            return self.state == _TERMINATE or (self.state == _CLOSE and self._outstanding == 0)

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        if predicate():
            return True
        with self._cond:
            self._waiters += 1
            try:
                return self._cond.wait_for(predicate, timeout)
            finally:
                self._waiters -= 1

    # ---- ending -----------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            if self.state == _RUN:
                self.state = _CLOSE
        self._poke()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every task, then for the workers to exit."""
        if self.state == _RUN:
            raise ValueError("join() before close() or terminate()")
        done = self._wait_for(lambda: self._outstanding == 0 or self.state == _TERMINATE, timeout)
        if not done:
            return False
        with self._join_lock:
            if self._released:
                return True
            if self.state == _CLOSE:
                self._stop_workers()
            self._shut_threads()
            try:
                self._report_uncollected()
            finally:
                self._release()
        return True

    def _stop_workers(self) -> None:
        with self._cond:
            self.state = _TERMINATE  # no replacements from here on
        # one "exit" record a slot, sent first: the workers exit while the monitor
        # stops, instead of after (#11).  No more workers than slots are ever alive (a
        # replacement the monitor may still be starting takes the record of the worker
        # it replaces), so each one takes a record; what is left goes with the ring
        try:
            self._tasks.put_many([None] * self.processes, timeout=5)
        except Exception:
            pass
        # the monitor may be starting a replacement it decided on before: let it finish
        # and stop, or the list below would miss that worker
        self._poke()
        self._monitor_thread.join(10)
        handles = list(self._death_handles())
        deadline = time.monotonic() + 5  # then they are killed
        while handles and time.monotonic() < deadline:
            ended = multiprocessing.connection.wait(handles, deadline - time.monotonic())
            handles = [h for h in handles if h not in ended]
        self._kill_workers()

    def terminate(self) -> None:
        self._terminated = True
        with self._cond:
            was = self.state
            self.state = _TERMINATE
        if was == _TERMINATE and self._released:
            return
        # the monitor first (it may be starting a replacement): killing workers while
        # a forkserver starts another one delayed the forkserver's exit reports by
        # seconds; once the monitor is gone nobody starts anything
        self._shut_threads()
        self._kill_workers()
        try:
            self._report_uncollected()
        finally:
            self._fail_outstanding(ClosedError("the pool was terminated before this task finished"))
            self._release()

    def _fail_outstanding(self, exc: BaseException) -> None:
        with self._push_lock:
            entries = [(job, index) for job, index, _ in self._inflight.values()]
            entries += [(job, index) for job, index, _ in self._overflow]
            self._inflight.clear()
            self._overflow.clear()
        for job, index in entries:
            if isinstance(job, AsyncResult):
                job._collected = True  # the pool's doing, not the task's: not reported
            self._finish(job, index, False, exc)

    def cancel_queued(self) -> list[_Job]:
        """Take back the tasks no worker has started; return their jobs."""
        jobs = []
        scratch = bytearray(8)
        marked: list[tuple[_Job, int]] = []
        claim = claimer(self._tasks)
        with self._push_lock:
            jobs += [job for job, _, _ in self._overflow]
            taken = len(self._overflow)
            self._overflow.clear()
            while True:
                try:
                    claim(scratch, 0, False)
                except queue.Empty:
                    break
                except Exception:
                    pass
                ordinal = int.from_bytes(scratch, "little") & _ORDINAL_MASK
                entry = self._inflight.pop(ordinal, None)
                if entry is not None:
                    jobs.append(entry[0])
                    marked.append((entry[0], ordinal))
                    taken += 1
        with self._cond:
            self._outstanding -= taken
            self._cond.notify_all()
        for job, ordinal in marked:  # (outside the push lock: cancel() takes it second)
            self._forget_mark(job, ordinal)  # no worker will look for it
        return jobs

    def _poke(self) -> None:
        self._doorbell.ring()
        try:
            if not self._results.closed:
                self._results.put((_MARKER, _WAKE))
        except Exception:
            pass

    def _shut_threads(self) -> None:
        self._poke()
        for thread in (self._monitor_thread, self._result_thread):
            if thread is not threading.current_thread():
                thread.join(10)

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for slot in range(self.processes):
            self._settle_start(slot)
            self._close_pidfd(slot)
        self._doorbell.close()
        clean = self._clean_end and not self._terminated and self._pid == os.getpid()
        if not (clean and _keep_spare(self._tasks, self._results, self._slots)):
            for obj in (self._tasks, self._results, self._slots):
                obj.close()
        # what killed workers left (those of a terminate, any the monitor found dead
        # after one, where it no longer reaps): gone before join() or terminate() returns
        self._reap_dead()

    def _report_uncollected(self) -> None:
        failed = [(r._description, r._value) for r in self._uncollected if not r._collected]
        self._uncollected = []
        _report_uncollected(failed, self._uncollected_mode)


def _needs_by_value(function: Any) -> bool:
    """Whether ``function`` must travel by value: one of ``__main__`` that the workers'
    ``__main__`` will not have (a notebook cell, the REPL, ``exec``).  One defined in
    the main script goes by name, as with the standard library: the workers import
    the script too, and the function then shares its module's globals (what an
    ``initializer`` sets up), which a copy by value would not."""
    if getattr(function, "__module__", None) != "__main__":
        return False
    code = getattr(function, "__code__", None)
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if code is None or script is None:
        return True
    return _realpath(code.co_filename) != _realpath(script)


@functools.lru_cache(maxsize=64)
def _realpath(path: str) -> str:
    """``os.path.realpath``, once per path: it costs a few system calls, and every pool
    or executor asks it of its first function (#11).  (Scripts are not moved while
    they run.)"""
    return os.path.realpath(path)


def _remote_error(
    record: bytes, text: str, traceback_class: type[Exception] = RemoteTraceback
) -> BaseException:
    """The task's exception, its ``__cause__`` the worker's traceback as the standard
    library gives it: ``multiprocessing.pool.RemoteTraceback`` for a Pool,
    ``concurrent.futures.process._RemoteTraceback`` for an Executor, both holding the
    formatted traceback between triple quotes (their ``tb``, and their ``str``)."""
    try:
        exc = loads(record)
    except BaseException as error:  # (SystemExit too: the task must still fail)
        exc = ShoalError(f"a task failed and its exception could not be unpickled: {error}")
    if not isinstance(exc, BaseException):
        exc = ShoalError(f"a task failed with {exc!r}")
    exc.__cause__ = traceback_class(f'\n"""\n{text}"""')
    return exc


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _raise(exc: BaseException) -> None:
    raise exc


def _check_timeout(timeout: float | None) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return float(timeout)
