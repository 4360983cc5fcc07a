"""The standard-library tests that do not apply to shoal, each with its reason.

Keys are ``fnmatch`` patterns over ``SUITE[METHOD]:Class.test``: ``mp`` is
``test._test_multiprocessing`` (classes ``WithProcessesTestX``/``WithManagerTestX``),
``cf`` is ``test_concurrent_futures`` (classes ``ProcessPool{Fork,Spawn,Forkserver}…``).
A test belongs here only if it inspects the standard library's private attributes,
names ``multiprocessing`` (or ``concurrent.futures.ProcessPoolExecutor``) directly
instead of the objects the suite binds, or tests something that
docs/compatibility.md documents as different; everything else must pass.
"""

from __future__ import annotations

EXCLUDED: dict[str, str] = {}
