"""The mutants: each replaces one exact snippet, which must occur as often as it says."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # the bug, in words
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments that must fail with the mutant
    occurrences: int = 1  # how often ``old`` occurs: every one is replaced

    @property
    def native(self) -> bool:
        return self.path.endswith((".c", ".h"))


MUTANTS = (
    Mutant(
        "pool-claim-trusted-without-taking",
        "the monitor fails the task a dead worker had claimed without checking that the "
        "record really left the ring (the claim is written first)",
        "src/shoal/_pool/_engine.py",
        "if claim & _CLAIMED and self.was_taken(claim & _ORDINAL_MASK):",
        "if claim & _CLAIMED:",
        ("tests/test_pool_protocol.py",),
    ),
    Mutant(
        "pool-slot-cleared-before-result",
        "the worker clears its claim before it sends the result: a death in between "
        "loses the task (nobody fails it, nobody finishes it)",
        "src/shoal/_pool/_worker.py",
        "        else:\n            send_values(results, ordinal, values)\n"
        "        _core.store64(buf, claim_at, 0)\n",
        "        else:\n            _core.store64(buf, claim_at, 0)\n"
        "            send_values(results, ordinal, values)\n",
        ("tests/test_pool_protocol.py",),
    ),
    Mutant(
        "ring-publish-forgets-padding",
        "the ring's publish step moves the tail past the record but not past the padding "
        "that wrapped it: consumers read a pad as a record",
        "native/src/ring.c",
        "st64(&r->tail, PACK(ITEMS(tail) + 1, POS(tail) + pad + need));",
        "st64(&r->tail, PACK(ITEMS(tail) + 1, POS(tail) + need));",
        ("tests/test_ring_model.py", "tests/test_queue_api.py"),
    ),
    Mutant(
        "lock-steals-from-live-owner",
        "the dead-owner path takes the lock from a holder that is alive",
        "native/src/sync.c",
        "if (seen == 0 || shoal_token_alive(holder))",
        "if (seen == 0 || !shoal_token_alive(holder))",
        ("tests/test_sync_process.py", "tests/test_sync_api.py"),
    ),
    Mutant(
        "lock-dead-owner-unreported",
        "a lock inherited from a dead owner does not say so (owner_died stays false)",
        "native/src/sync.c",
        "    st32(&m->owner_died, 1);\n    if (thread) {",
        "    if (thread) {",
        ("tests/test_sync_process.py", "tests/test_sync_api.py"),
    ),
    Mutant(
        "reaper-ignores-live-holders",
        "the reaper removes segments whose holders are alive",
        "src/shoal/_memory.py",
        "if overflow or any(_holder_alive(h) for h in holders):",
        "if overflow:",
        ("tests/test_memory.py", "tests/test_reaper.py", "tests/test_handles.py"),
        occurrences=2,  # the decision from pread, and the final one under the mutex
    ),
    Mutant(
        "fork-close-reserves-nothing",
        "a parent closing a segment before the child it just forked has recorded itself "
        "leaves the table at once: the name goes, and the child cannot pass it on",
        "src/shoal/_memory.py",
        "                if forks:\n                    self._leave_reserved(forks)\n",
        "                if False:\n                    self._leave_reserved(forks)\n",
        ("tests/test_memory.py",),
    ),
    Mutant(
        "pickle-keeps-no-segment",
        "a pickled handle does not count in its segment: the segment goes when its "
        "last holder exits though the pickle is still to be unpickled",
        "src/shoal/_handle.py",
        "        segment._begin_flight()\n        _core.fetch_add64(",
        "        _core.fetch_add64(",
        (
            "tests/test_handles.py",
            "tests/test_kept_references.py",
            "tests/test_queue_references.py",
        ),
    ),
    Mutant(
        "adoption-never-unkeeps",
        "an unpickling that adopts a container's reference takes it off the count in "
        "flight instead of the container's entry: kept references never go",
        "src/shoal/_handle.py",
        "    if keeper is None or not segment._unkeep(keeper):",
        "    if True:",
        ("tests/test_kept_references.py", "tests/test_queue_references.py"),
    ),
    Mutant(
        "kept-references-expire",
        "references kept by containers count only as long as those in flight (the "
        "ten-minute expiry of #4)",
        "src/shoal/_memory.py",
        "    return _kept(buf, name) > 0\n",
        "    return False\n",
        ("tests/test_kept_references.py",),
    ),
    Mutant(
        "ledger-gives-back-without-checking",
        "the sweep takes a dead process's references off an object without checking "
        "that it is still the object the ledger named, or that the count has them",
        "src/shoal/_handle.py",
        "        if _serial_at(buf, offset) != serial or word & _REFS < count:\n",
        "        if False:\n",
        ("tests/test_ledger.py",),
    ),
    Mutant(
        "ledger-never-reclaimed",
        "a dead process's ledger is reaped without giving its references back",
        "src/shoal/_memory.py",
        "        _hand_dead_ledger_over(name, fd, st.st_size)\n",
        "        pass\n",
        ("tests/test_ledger.py",),
    ),
    Mutant(
        "liveness-file-held-means-dead",
        "a foreign namespace's owner whose liveness file is locked is judged dead",
        "native/src/identity.c",
        "result = fl.l_type == F_UNLCK ? SHOAL_LIVENESS_FREE : SHOAL_LIVENESS_HELD;",
        "result = SHOAL_LIVENESS_FREE;",
        ("tests/test_namespaces.py", "tests/test_liveness.py"),
    ),
)
