"""The standard-library tests that do not apply to shoal, each with its reason.

Keys are ``fnmatch`` patterns over ``SUITE/METHOD:Class.test``: ``mp`` is
``test._test_multiprocessing`` (classes ``WithProcessesTestX``/``WithManagerTestX``),
``cf`` is ``test_concurrent_futures`` (classes ``ProcessPool{Fork,Spawn,Forkserver}…``).

``EXCLUDED``: not run.  A test belongs here only if it inspects the standard library's
private attributes, names ``multiprocessing`` (or ``concurrent.futures``'
``ProcessPoolExecutor``) directly instead of the objects the suite binds, or tests
something that docs/compatibility.md documents as different; everything else must pass.

``PENDING``: run, but a failure does not fail the run: the fix is on another branch of
issue #11, named in the reason.  A pending test that passes is reported, so that its
entry is removed once the branch is merged.
"""

from __future__ import annotations

PRIVATE = "inspects the standard library's private attributes"
NAMES_STDLIB = "names the standard library's"

EXCLUDED: dict[str, str] = {
    # ---- test._test_multiprocessing ----------------------------------------------------
    "mp/*:WithProcessesTestCondition.test_notify": f"{PRIVATE} (cond._sleeping_count)",
    "mp/*:WithProcessesTestCondition.test_notify_all": f"{PRIVATE} (cond._sleeping_count)",
    "mp/*:WithProcessesTestCondition.test_notify_n": f"{PRIVATE} (cond._sleeping_count)",
    "mp/*:WithProcessesTestPool.test_make_pool": f"{PRIVATE} (pool._pool)",
    "mp/*:WithProcessesTestPool.test_resource_warning": (
        f"{PRIVATE}: sets pool._state = multiprocessing.pool.RUN"
    ),
    "mp/*:WithProcessesTestQueue.test_queue_feeder_donot_stop_onexc": (
        "compatibility.md, Queues: no feeder thread, put() of an object that does not "
        "pickle raises SerializationError in the caller (the test expects the feeder "
        "thread to print it and carry on)"
    ),
    "mp/*:WithManagerTestContainers.test_dict_iter": (
        "compatibility.md, SharedDict: iteration goes over a snapshot and never raises "
        "RuntimeError for a change made meanwhile (any process may write at any time); "
        "the test's last check expects that RuntimeError"
    ),
    "mp/*:WithProcessesTestValue.test_getobj_getlock": (
        "compatibility.md, Value/Array: lock='navalue' raises TypeError (the standard "
        "library's AttributeError comes from calling .acquire on it), and RawValue's "
        "wrapper has get_obj()"
    ),
    "mp/*:WithProcessesTestArray.test_getobj_getlock_obj": (
        "compatibility.md, Value/Array: lock='notalock' raises TypeError, and "
        "RawArray's wrapper has get_obj()"
    ),
    "mp/*:WithManagerTestEvent.test_repr": (
        "compatibility.md, Manager: m.Event() is shoal's Event, not an EventProxy "
        "(the test matches \"<EventProxy object, typeid 'Event' at ...\")"
    ),
    "mp/*:WithManagerTestPool.test_make_pool": (
        "compatibility.md, Manager: no server process, so m.Pool(0) raises the pool's "
        "ValueError where a proxy re-raises it as the server's RemoteError"
    ),
    # ---- test_concurrent_futures ---------------------------------------------------------
    "cf/*:*ProcessPoolShutdownTest.test_processes_terminate": f"{PRIVATE} (executor._processes)",
    "cf/*:*ProcessPoolShutdownTest.test_context_manager_shutdown": (
        f"{NAMES_STDLIB} futures.ProcessPoolExecutor and reads e._processes"
    ),
    "cf/*:*ProcessPoolShutdownTest.test_del_shutdown": (
        f"{NAMES_STDLIB} futures.ProcessPoolExecutor and reads its _processes, "
        "_call_queue, _executor_manager_thread"
    ),
    "cf/*:*ProcessPoolShutdownTest.test_shutdown_no_wait": (
        f"{NAMES_STDLIB} futures.ProcessPoolExecutor and reads its _processes, "
        "_call_queue, _executor_manager_thread"
    ),
    "cf/*:*ExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        f"{PRIVATE} (executor._executor_manager_thread)"
    ),
    "cf/*:*FailingInitializerTest.test_initializer": f"{PRIVATE} (executor._broken)",
    "cf/*:*ProcessPoolExecutorTest.test_killed_child": f"{PRIVATE} (executor._processes)",
    "cf/*:*ProcessPoolExecutorTest.test_saturation": (
        f"{PRIVATE} (executor._max_workers, executor._processes)"
    ),
    "cf/*:*ProcessPoolExecutorTest.test_idle_process_reuse_one": (
        f"{PRIVATE} (executor._max_workers, executor._processes)"
    ),
    "cf/*:*ProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        f"{PRIVATE} (executor._max_workers, executor._processes)"
    ),
    "cf/*:*ProcessPoolExecutorTest.test_max_tasks_per_child": (
        f"{PRIVATE} (executor._processes); and compatibility.md, Executor: "
        "max_tasks_per_child works under fork (ProcessPoolExecutor raises ValueError)"
    ),
    "cf/*:*ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        f"{PRIVATE} (executor._mp_context)"
    ),
    "cf/*:*ProcessPoolShutdownTest.test_cancel_futures": (
        "compatibility.md, Executor: shutdown(cancel_futures=True) cancels every call "
        "no worker has taken; ProcessPoolExecutor's keeps the max_workers + 1 it has "
        "already moved to its call queue, which the test counts on (when no worker has "
        "taken a call yet, under spawn or a loaded forkserver, shoal cancels all 50)"
    ),
    # these run a script that imports the class named executor_type.__name__ from
    # concurrent.futures itself, and test.test_concurrent_futures (tests/
    # test_executor_compat.py checks shoal's Executor at interpreter exit instead)
    "cf/*:*ProcessPoolShutdownTest.test_interpreter_shutdown": (
        f"its script {NAMES_STDLIB} concurrent.futures.<executor_type.__name__>"
    ),
    "cf/*:*ProcessPoolShutdownTest.test_submit_after_interpreter_shutdown": (
        f"its script {NAMES_STDLIB} concurrent.futures.<executor_type.__name__>"
    ),
    "cf/*:*ProcessPoolShutdownTest.test_hang_gh83386": (
        f"its script {NAMES_STDLIB} concurrent.futures.<executor_type.__name__>"
    ),
}

PENDING: dict[str, str] = {}

# entries for tests that older interpreters' suites do not have yet: (major, minor) of
# the first whose suite has them (the staleness check skips them before that)
SINCE: dict[str, tuple[int, int]] = {
    "mp/*:WithManagerTestEvent.test_repr": (3, 11),
    # (max_tasks_per_child is new in 3.11; so is the test of gh-83386's hang)
    "cf/*:*ProcessPoolExecutorTest.test_max_tasks_per_child": (3, 11),
    "cf/*:*ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (3, 11),
    "cf/*:*ProcessPoolShutdownTest.test_hang_gh83386": (3, 11),
}
