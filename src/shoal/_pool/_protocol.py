"""The parent<->worker contract: task and result records, the slot words, the cancel marks,
the stop word.

What both sides must agree on, and nothing else: the worker (``_worker``) writes and
reads these words and records, the engine (``_engine``) reads and writes the other
half.  Change one here and both sides follow.

Records (tuples on the two shoal Queues; a few scalars go through the queue's C codec,
anything else pickled)::

    task   (function pickle, kind, timeout s or 0.0, *payload)
             kind: _CALL (*args) | _CALL_KW (args, kwargs) | _MAP | _STARMAP (*items)
             None: "exit" (one a worker, when the pool closes)
    result (ordinal, status, *values)
             status: _OK (*values) | _OK_PICKLED (pickle of the values) |
                     _ERROR / _BAD_TASK (exception pickle, traceback text) | _SKIPPED
           (_MARKER, what, ...): the engine's own records, on the same ring
             what: _DIED (slot, pid, exitcode, ordinal or -1) | _WAKE |
                   _SETUP_FAILED (exception pickle, text) | _MAIN_REIMPORTED (failed)

Slots (one ``RawArray("q")``, 64-bit words, shared by the parent and every worker)::

    word  slot * _SLOT_WORDS + _CLAIM        _CLAIMED | ordinal while a task is held, 0
          slot * _SLOT_WORDS + _DEADLINE     monotonic ns the task must end by, 0: none
          slot * _SLOT_WORDS + _PID          the worker's pid once it has its arguments
          slot * _SLOT_WORDS + _SETUP_RAISED 1 if its initializer raised
          slot * _SLOT_WORDS + _STOP         the stop word: _STOP_ASKED | ordinal while the
                                             parent stops that task, | _GUARDED while the
                                             worker is inside uninterruptible()
    then  processes * _SLOT_WORDS            how many cancel marks are set
    then  _MARK_WORDS words: the table of marks,
          word ``ordinal % _MARK_WORDS`` holding ``_CLAIMED | ordinal`` for a
          cancelled call still in the ring

Ordinals count the task ring's records from 0 and wrap at 2**32 (``_ORDINAL_MASK``).

Knowing which task a dead worker had
------------------------------------
Records leave the task ring in the order they were put, and the parent is the only
producer, so the n-th record ever taken is the n-th task ever put: its *ordinal*.  A
worker takes a task with ``_get_claim``, which stores the ordinal in the worker's
slot (shared memory) *before* the record leaves the ring; after the result is sent
the slot is cleared.  When a worker dies, its slot and the ring's count of records
taken say exactly whether it had a task and which: only that task fails.  The
"worker died" record travels on the result ring behind anything the worker sent
before dying, so a result that made it out is never reported as lost.

Cancelled calls
---------------
A call cancelled while its record is still in the task ring is marked: the
word ``ordinal % _MARK_WORDS`` of a table after the workers' slots holds
``_CLAIMED | ordinal`` (set by compare-and-swap from 0, popped by compare-and-swap
back to 0: each mark exact, whatever else the table holds), and a word before the
table counts the marks, so that a worker looks only while there are any.  The table
has a word for every record the ring can hold at once (``_MARK_WORDS``: a record
takes at least 16 bytes), so the records in the ring, consecutive ordinals, never
share a word; a word still taken by a mark of an earlier record (taken, its mark
not yet popped: a moment) makes ``cancel()`` wait for it.  (Before #11 the marks
were keys of a SharedDict: a segment more for every Executor and every worker to
make, map and let go of, for the rare call that is cancelled.)

``cancel()`` counts and marks first, then looks whether the record was taken; a
worker takes the record first, then pops the mark.  Whoever pops the mark decides,
exactly once: the worker skips the call (it never runs, and the future is
cancelled); ``cancel()`` popping it back means a worker took the record before it
could see the mark, so the call runs and the future is running.  A call cancelled
while it waits in the parent for room in the ring is never pushed.

Stopping a running task (#14)
-----------------------------
A task cancelled while a worker runs it, or past its timeout, is stopped by killing
that worker (a thread or an exception cannot interrupt C code); the monitor then
replaces it as for any death.  The stop word of the worker's slot makes the kill
wait for the end of an ``uninterruptible()`` block, and makes sure it hits no other
task:

* the parent (the monitor thread, the only one that asks) sets ``_STOP_ASKED |
  ordinal`` by compare-and-swap, keeping the ``_GUARDED`` bit.  If that bit was set
  it does no more: the worker is inside ``uninterruptible()``.  Otherwise it stops the
  worker (SIGSTOP), kills it (SIGKILL) if its claim still names that ordinal, and lets
  it go on (SIGCONT); if the claim moved on, it takes the ask back.
* the worker sets and clears ``_GUARDED`` by compare-and-swap as the outermost
  ``uninterruptible()`` block starts and ends, and at both points, and after sending
  each result (before clearing its claim), looks for an ask naming the task it holds.
  As a block ends, such an ask was deferred by it: the worker kills itself
  (SIGKILL).  As a block starts or a task ends, the parent is deciding: the worker
  waits for the verdict (killed, or the ask taken back).  So a kill decided while the
  block starts happens before its body runs, one deferred by the block happens as it
  ends, and a worker whose task is being stopped never takes another task to be
  killed in.

An ask naming another ordinal (a task that finished before the parent looked) is
stale: the worker ignores it and the parent takes it back.
"""

from __future__ import annotations

from .._record import FAST_TUPLE_MAX

# task record: (function pickle, kind, timeout seconds or 0.0, *payload)
_CALL, _CALL_KW, _MAP, _STARMAP = range(4)
# result record: (ordinal, status, *values); ordinal _MARKER for the monitor's records
_OK, _OK_PICKLED, _ERROR, _SKIPPED, _BAD_TASK = range(5)  # _BAD_TASK: did not unpickle
_MARKER = -1
_DIED, _WAKE, _SETUP_FAILED, _MAIN_REIMPORTED = range(4)
# the exit status of a process that tried to start a pool while it was still importing
# the main module, as spawn and forkserver children do (see _refuse_while_bootstrapping)
_BOOTSTRAP_EXIT = 87

# a worker's slot, one 64-bit word each: what it claimed (CLAIMED | ordinal), its
# task's deadline (monotonic ns, 0: none), its pid once it unpickled its arguments,
# 1 if its initializer raised, its stop word (see "Stopping a running task").  After the
# last slot, one word: how many cancel marks are set, then the table of marks (see
# "Cancelled calls" above).
_CLAIM, _DEADLINE, _PID, _SETUP_RAISED, _STOP = range(5)
_SLOT_WORDS = 5
_CLAIMED = 1 << 63
_STOP_ASKED = 1 << 63  # (the stop word) the parent stops the task of the low 32 bits
_GUARDED = 1 << 62  # (the stop word) the worker is inside uninterruptible()
_ORDINAL_MASK = 0xFFFFFFFF

_TASK_RING_BYTES = 256 << 10
# a word for every record the task ring can hold at once (each takes 16 bytes or more:
# an 8-byte header and a payload padded to 8), a power of two dividing 2**32 (ordinals
# wrap there)
_MARK_WORDS = _TASK_RING_BYTES // 16
_RESULT_RING_BYTES = 256 << 10
# both sides cache this many function pickles (the worker by record, the parent by id)
_FUNC_CACHE_SIZE = 64
_FAST_VALUES = FAST_TUPLE_MAX - 2  # (the fast codec's tuples: two of the items are ours)
