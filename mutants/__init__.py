"""The mutation check: ``python -m mutants`` (``make mutants``).

Each mutant is one deliberate, hand-written bug in a place where shoal's design is
subtle — the pool's claim/slot bookkeeping, the ring's publish step, the reaper's
liveness check, the lock's dead-owner path, the references in flight and those kept
by containers.  The check copies the working tree, applies one mutant, rebuilds the
extension in the copy where the mutant is in C, and runs the tests that should catch
it: the suite must fail on every mutant ("killed").  A mutant that survives names a
blind spot of the suite.  See ``mutants/catalogue.py``.
"""
