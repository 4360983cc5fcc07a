"""What runs in the child: a pool worker's whole life.

Everything a worker process runs, and only that: ``_worker_main`` (the ``Process``
target the engine starts) claims a task from the task ring (``_queues.claimer``,
which writes the slot's claim word first), runs it, sends its result or error on the
result ring, clears the claim; it skips calls whose cancel mark it pops, exits after
``maxtasksperchild`` tasks or on the pool's "exit" record, and exits with its parent
(``_exit_with_parent``).  ``worker_state()`` is the dict a worker's initializer fills;
``uninterruptible()`` is the block during which the pool does not kill the worker to
stop its task (the stop word, ``_protocol``'s "Stopping a running task").
The test hooks (``SHOAL_TEST_POOL_HOOK``) kill a worker at one point of the protocol.

What the parent does when a worker dies is in ``_engine`` (``_Engine._worker_ended``);
the words and records both sides share are in ``_protocol``.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import multiprocessing
import multiprocessing.util
import os
import signal
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

from .. import _core
from .._errors import (
    ClosedError,
    SerializationError,
    ShoalError,
    ShutDown,
)
from .._handle import sent_references
from .._queues import Queue, claimer, encode, put_fast, records_taken
from .._record import TAG_TRANSIT
from .._serialize import discard, dumps, loads
from .._sharedctypes import RawArray, words
from ._protocol import (
    _BAD_TASK,
    _CALL,
    _CLAIM,
    _CLAIMED,
    _DEADLINE,
    _ERROR,
    _FAST_VALUES,
    _FUNC_CACHE_SIZE,
    _GUARDED,
    _MAP,
    _MARKER,
    _OK,
    _OK_PICKLED,
    _ORDINAL_MASK,
    _PID,
    _SETUP_FAILED,
    _SETUP_RAISED,
    _SKIPPED,
    _SLOT_WORDS,
    _STARMAP,
    _STOP,
    _STOP_ASKED,
)

# a worker looks for its parent this often, and exits if it is gone
_PARENT_CHECK_S = 1.0
# how often a worker looks whether the parent decided to kill it or took its ask back
# (the parent decides in microseconds: see "Stopping a running task")
_VERDICT_POLL_S = 0.0002
# Test-only, read once as a worker starts: "POINT:TOKEN" makes the worker that removes
# the file TOKEN SIGKILL itself at POINT of the protocol above (see _test_hooks);
# unset, the worker's loop calls the plain functions.
_TEST_HOOK_ENV = "SHOAL_TEST_POOL_HOOK"

__all__ = ["uninterruptible", "worker_state"]

_worker_state: dict[str, Any] = {}
# in a pool worker: (slots' buffer, the claim word's offset, the stop word's offset)
_stop_words: tuple[Any, int, int] | None = None
_guard_depth = 0  # uninterruptible() blocks entered and not left, in every thread
_guard_lock = _thread.allocate_lock()


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as the current worker process.

    Set it up once per worker in the pool's ``initializer`` (a database connection, a
    loaded model...) and read it in every task the worker runs.  Each worker starts
    with an empty one (also under ``fork``); outside a pool worker it is just this
    process's own dict.
    """
    return _worker_state


class uninterruptible(contextlib.ContextDecorator):
    """A block of a pool task that cancelling the task does not cut short.

    ``with shoal.uninterruptible(): ...`` (or as a decorator): while it runs, a
    ``cancel()`` of the task, or its timeout, waits; the worker is killed as the block
    ends (its task fails with ``TaskCancelledError`` or ``TaskTimeoutError``, as it
    would have).  Use it around what must not be left half-done (two writes that go
    together, a file renamed into place); keep it short, since a task that never
    leaves it is never stopped.  Blocks nest, and a block in any thread of the task
    counts.  Outside a pool worker (or on the Ray backend) it does nothing.
    ``Pool.terminate()`` and a death from elsewhere (the OOM killer) do not wait.
    """

    def __enter__(self) -> None:
        global _guard_depth
        with _guard_lock:
            _guard_depth += 1
            if _guard_depth == 1 and _stop_words is not None:
                _set_guard(True)

    def __exit__(self, *exc_info: object) -> None:
        global _guard_depth
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0 and _stop_words is not None:
                _set_guard(False)


def _set_guard(on: bool) -> None:
    """Set or clear the stop word's _GUARDED bit.  An ask to stop this task found as
    the block starts is being decided (the parent saw no block): wait for the verdict,
    which kills this worker or takes the ask back; one found as it ends was deferred
    by the block: die now."""
    assert _stop_words is not None
    buf, claim_at, stop_at = _stop_words
    while True:
        word = _core.load64(buf, stop_at)
        if _asked(buf, claim_at, word):
            if not on:
                _die()
            time.sleep(_VERDICT_POLL_S)
            continue
        new = word | _GUARDED if on else word & ~_GUARDED
        if _core.cas64(buf, stop_at, word, new)[0]:
            return


def _await_verdict(buf: Any, claim_at: int, stop_at: int) -> None:
    """Before the worker lets go of its task: if the parent is deciding to stop it,
    wait for the verdict (it kills this worker, or takes the ask back: the task had
    ended), so that a kill meant for this task never hits the next one."""
    word = _core.load64(buf, stop_at)
    while _asked(buf, claim_at, word):
        if word & _GUARDED:  # deferred by a block another thread of the task still runs
            _die()
        time.sleep(_VERDICT_POLL_S)
        word = _core.load64(buf, stop_at)


def _asked(buf: Any, claim_at: int, word: int) -> bool:
    """Whether the stop word ``word`` asks to stop the task this worker holds."""
    if not word & _STOP_ASKED:
        return False
    claim = _core.load64(buf, claim_at)
    return bool(claim & _CLAIMED) and (claim ^ word) & _ORDINAL_MASK == 0


def _die() -> None:
    """What the parent would do: SIGKILL (the pool replaces this worker)."""
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # (it is on its way)
        time.sleep(1)


def _forget_stop_words() -> None:
    global _stop_words, _guard_depth, _guard_lock
    _stop_words, _guard_depth, _guard_lock = None, 0, _thread.allocate_lock()


# ---- the worker -------------------------------------------------------------------------


def _worker_main(
    tasks: Queue,
    results: Queue,
    slots: RawArray,
    marks: int,
    slot: int,
    parent_token: int,
    setup: bytes | None,
    maxtasks: int | None,
    start_initargs: tuple | None = None,
) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what
    # happens to the pool, workers carry on until told
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state.clear()
    # the bare thread, not threading.Thread: its start() waits until the new thread
    # has run, a round trip through the scheduler that delayed a worker's first task
    # by up to 20 ms on a busy machine (#11).  Nothing ever joins this thread: it
    # ends with the process (as a daemon thread does).
    _thread.start_new_thread(_exit_with_parent, (parent_token,))
    buf, base = words(slots)
    claim_at, deadline_at, pid_at, raised_at, stop_at = (
        base + (slot * _SLOT_WORDS + word) * 8
        for word in (_CLAIM, _DEADLINE, _PID, _SETUP_RAISED, _STOP)
    )
    global _stop_words
    _stop_words = (buf, claim_at, stop_at)
    # a process a task forks is no worker: its uninterruptible() must not touch the slot
    os.register_at_fork(after_in_child=_forget_stop_words)
    # the count of cancel marks, then the table of marks (``marks`` words, 0: none)
    marked_at = base + (len(slots) - 1 - marks) * 8
    table_at = marked_at + 8
    if setup is not None:
        try:
            initializer, initargs = loads(setup)
            if initargs is None:  # they came with the process start (_setup_record)
                initargs = start_initargs
            _core.store64(buf, pid_at, os.getpid())  # all arguments unpickled
            initializer(*initargs)
        except BaseException as exc:
            # every replacement would fail the same way: the pool stops instead
            _core.store64(buf, raised_at, 1)
            _send_error(results, _MARKER, exc, _SETUP_FAILED)
            raise SystemExit(1) from None
    _core.store64(buf, pid_at, os.getpid())
    get_claim, send_values, send_error = claimer(tasks), _send_values, _send_error
    hook = os.environ.get(_TEST_HOOK_ENV)
    if hook:
        get_claim, send_values, send_error = _test_hooks(hook, tasks, get_claim)
    functions: dict[bytes, Any] = {}
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            task = get_claim(buf, claim_at)
        except BaseException as exc:
            # the record was taken but could not be unpickled (SystemExit from a
            # __reduce__ included): fail that task
            claim = _core.load64(buf, claim_at)
            if not claim & _CLAIMED:
                raise
            send_error(results, claim & _ORDINAL_MASK, exc, _BAD_TASK)
            _await_verdict(buf, claim_at, stop_at)
            _core.store64(buf, claim_at, 0)
            done += 1
            continue
        if task is None:  # the pool is closing
            _core.store64(buf, claim_at, 0)
            return
        claim = _core.load64(buf, claim_at)
        ordinal = claim & _ORDINAL_MASK
        if (
            marks
            and _core.load64(buf, marked_at)
            and _core.cas64(buf, table_at + (ordinal % marks) * 8, _CLAIMED | ordinal, 0)[0]
        ):
            _core.fetch_add64(buf, marked_at, -1)
            results.put((ordinal, _SKIPPED))  # its future was cancelled
            task = None
            _core.store64(buf, claim_at, 0)
            continue
        try:
            function = functions.get(task[0])
            if function is None:
                function = loads(task[0])
                if _cacheable(function):
                    if len(functions) >= _FUNC_CACHE_SIZE:
                        functions.clear()
                    functions[task[0]] = function
            values = _run(function, task, buf, deadline_at)
        except BaseException as exc:
            send_error(results, ordinal, exc)
        else:
            send_values(results, ordinal, values)
            del values
        # let go of the call's arguments and result now, not when the next task comes
        # (an open file, shared memory, a big array), as ProcessPoolExecutor's worker
        task = function = None
        # a task the parent is stopping (cancelled as it ended): the kill comes while
        # this claim is held, not in the next task (see "Stopping a running task")
        _await_verdict(buf, claim_at, stop_at)
        _core.store64(buf, claim_at, 0)
        done += 1


def _cacheable(function: Any) -> bool:
    """Whether a worker may keep ``function`` for the next calls: a function or a
    class, not an object holding a call's data (a bound method's object, a
    ``functools.partial``'s arguments), which goes when its call ended."""
    if isinstance(function, type):
        return True
    if not isinstance(function, (types.FunctionType, types.BuiltinFunctionType)):
        return False
    owner = getattr(function, "__self__", None)
    return owner is None or isinstance(owner, types.ModuleType)


def _test_hooks(spec: str, tasks: Queue, get_claim: Callable[..., Any]) -> tuple:
    """The worker's get_claim, send_values and send_error with a death at one point:

    * "claimed": its claim written, the record still in the ring.  (Stored here as
      ``_get_claim`` stores it, once a record is there; exact where this worker is the
      only consumer: a pool of one.)
    * "sending": a result (or error) computed, about to go on the result ring.
    * "sent": the result on the ring, the slot not yet cleared.

    Only the worker that removes the file named after the colon dies, once.
    """
    point, _, token = spec.partition(":")
    if point not in ("claimed", "sending", "sent") or not token:
        raise ValueError(f"{_TEST_HOOK_ENV}={spec!r}: want claimed|sending|sent:FILE")

    def won() -> bool:
        try:
            os.unlink(token)
        except FileNotFoundError:
            return False
        return True

    def fire() -> None:
        if won():
            os.kill(os.getpid(), signal.SIGKILL)

    def claim_then_die(buf: Any, at: int, *args: Any) -> Any:
        if won():
            deadline = time.monotonic() + 10
            while not tasks.qsize() and time.monotonic() < deadline:
                time.sleep(0.001)
            _core.store64(buf, at, _CLAIMED | records_taken(tasks))
            os.kill(os.getpid(), signal.SIGKILL)
        return get_claim(buf, at, *args)

    def around(send: Callable[..., None]) -> Callable[..., None]:
        def hooked(*args: Any) -> None:
            if point == "sending":
                fire()
            send(*args)
            if point == "sent":
                fire()

        return hooked

    if point == "claimed":
        return claim_then_die, _send_values, _send_error
    return get_claim, around(_send_values), around(_send_error)


def _exit_with_parent(parent_token: int) -> None:
    # an orphaned worker would run on (and hold its segments) with nobody to report to,
    # busy or idle: it goes as soon as it sees the parent gone
    while _core.token_alive(parent_token):
        time.sleep(_PARENT_CHECK_S)
    try:
        # shoal's exit hooks: let go of the shared memory, so that the last worker
        # out unlinks it instead of leaving it to the next reaper
        multiprocessing.util._run_finalizers()
    finally:
        os._exit(1)


def _run(function: Callable[..., Any], task: tuple[Any, ...], buf: Any, deadline_at: int) -> tuple:
    kind, timeout = task[1], task[2]
    items: Iterator[Any] = itertools.islice(task, 3, None)
    if timeout:  # the monitor kills the worker once the deadline passes
        limit_ns = int(timeout * 1e9)
        if kind in (_MAP, _STARMAP):  # per item
            items = _deadline_each(items, buf, deadline_at, limit_ns)
        else:
            _core.store64(buf, deadline_at, time.monotonic_ns() + limit_ns)
    try:
        if kind == _CALL:
            return (function(*task[3:]),)
        if kind == _MAP:
            return tuple(map(function, items))
        if kind == _STARMAP:
            return tuple(itertools.starmap(function, items))
        return (function(*task[3], **task[4]),)
    finally:
        if timeout:
            _core.store64(buf, deadline_at, 0)


def _deadline_each(items: Iterator[Any], buf: Any, at: int, limit_ns: int) -> Iterator[Any]:
    for item in items:
        _core.store64(buf, at, time.monotonic_ns() + limit_ns)
        yield item


def _send_values(results: Queue, ordinal: int, values: tuple) -> None:
    # a few scalars go as they are (the queue's C codec); a chunk's results are pickled
    if len(values) <= _FAST_VALUES and put_fast(results, (ordinal, _OK, *values)):
        return
    try:
        record = encode(results, values)
    except SerializationError as error:
        _send_error(results, ordinal, _unpicklable(values, error))
        return
    except BaseException as error:
        # no room in /dev/shm for a big result, say, or a __reduce__ that raised
        # SystemExit: it is that task's error, as with ProcessPoolExecutor, and the
        # worker carries on (escaping, it killed the worker: a WorkerDiedError)
        _send_error(results, ordinal, error)
        return
    results.put((ordinal, _OK_PICKLED, record))


def _unpicklable(values: tuple, error: SerializationError) -> SerializationError:
    """The error naming the value that cannot be pickled, not the tuple carrying it."""
    for value in values:
        with sent_references() as sent:
            try:
                dumps(value)
            except SerializationError as culprit:
                return culprit
            sent.cancel()  # a trial: this pickle goes nowhere
    return error


def _send_error(results: Queue, ordinal: int, exc: BaseException, status: int = _ERROR) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        record = encode(results, exc)
        if record[0] != TAG_TRANSIT:  # (that would use the transit segment up)
            loads(record)  # an exception that does not unpickle would be lost on the way
    except BaseException:  # (a __reduce__ may raise SystemExit)
        record = None
    try:
        if record is None:
            record = encode(results, ShoalError(f"{type(exc).__qualname__}: {exc}"))
        results.put((ordinal, status, record, text))
    except (ClosedError, ShutDown):
        raise
    except Exception as error:
        # too big to send whole with /dev/shm full, say: a short error in its place
        # (escaping, it killed the worker)
        if record is not None:
            discard(record)
        message, why = str(exc), str(error)
        short = ShoalError(
            f"{type(exc).__qualname__}: {message[:200]}{'...' * (len(message) > 200)} "
            f"(too big to send whole: {type(error).__name__}: {why[:300]})"
        )
        results.put((ordinal, status, encode(results, short), text[-4000:]))
