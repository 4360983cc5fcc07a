"""Run the standard library's test suites against shoal and print a score: ``make test-stdlib``.

    python -m stdlib_suites [--suite mp|cf] [--method fork|spawn|forkserver]
                            [--timeout SECONDS] [-k SUBSTRING] [--jobs N] [-v]

Each (suite, start method) runs in a child interpreter of its own (a start method is
process-wide), one test at a time.  A watchdog in the child (``faulthandler``) ends it
when one test, or the class fixtures between two tests, takes longer than
``--timeout``: that test is counted as failed ("timeout", with the child's stacks in
the log) and a new child goes on with the tests after it, so no test can hang the run.
Tests listed in ``exclusions.py`` are not run and are counted apart; tests the suite
itself skips (a start method or platform they do not apply to) are not applicable.

Score: passed / applicable (= run and not skipped), per suite, start method and, for
the multiprocessing suite, flavour (processes, manager).  Exit status 1 if anything
applicable did not pass.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

from stdlib_suites.exclusions import EXCLUDED, PENDING

SUITES = {"mp": "stdlib_suites.mp_suite", "cf": "stdlib_suites.cf_suite"}
METHODS = ("fork", "spawn", "forkserver")
ROOT = Path(__file__).resolve().parent.parent


def listed(table: dict[str, str], suite: str, method: str, test_id: str) -> str | None:
    """The reason ``table`` (exclusions.EXCLUDED or PENDING) gives for a test, if any."""
    key = f"{suite}/{method}:{test_id}"
    for pattern, reason in table.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def short(test_id: str) -> str:
    """``stdlib_suites.mp_suite.WithProcessesTestQueue.test_fork`` → its last two parts."""
    parts = test_id.split(".")
    return ".".join(parts[-2:])


# ---- the child: one suite under one start method ----------------------------------------


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            out.extend(_flatten(t))
        else:
            out.append(t)
    return out


class _Result(unittest.TestResult):
    def __init__(self, out: Any, timeout: float) -> None:
        super().__init__()
        self.out = out
        self.timeout = timeout

    def _emit(self, **rec: Any) -> None:
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()

    def _arm(self) -> None:
        import faulthandler

        faulthandler.dump_traceback_later(self.timeout, exit=True)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._emit(event="start", id=short(test.id()))
        print(f"\n=== {short(test.id())}", file=sys.stderr, flush=True)
        self._arm()

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        # still armed between tests: class fixtures are watched too
        self._arm()

    def _done(self, test: Any, outcome: str, err: Any = None) -> None:
        detail = self._exc_info_to_string(err, test) if err is not None else ""
        if isinstance(test, unittest.TestCase):
            self._emit(event="done", id=short(test.id()), outcome=outcome, detail=detail[-4000:])
        else:  # an error in setUpClass/setUpModule: the tests it kept from running fail
            self._emit(event="fixture", id=str(test), outcome=outcome, detail=detail[-4000:])
        if detail:
            print(detail, file=sys.stderr, flush=True)

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._emit(event="done", id=short(test.id()), outcome="pass")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._done(test, "fail", err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._done(test, "error", err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        if isinstance(test, unittest.TestCase):
            self._emit(event="done", id=short(test.id()), outcome="skip", detail=reason)
        else:
            self._emit(event="fixture", id=str(test), outcome="skip", detail=reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._emit(event="done", id=short(test.id()), outcome="pass")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._emit(event="done", id=short(test.id()), outcome="fail", detail="unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._done(test, "fail", err)


def child(suite: str, method: str, results: str, timeout: float, only: str | None) -> None:
    os.environ["SHOAL_STDLIB_METHOD"] = method
    # a shell's background job starts with SIGINT ignored; the tests send it themselves
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import importlib

    module = importlib.import_module(SUITES[suite])
    tests = _flatten(unittest.defaultTestLoader.loadTestsFromModule(module))
    wanted = set(Path(only).read_text().split()) if only else None
    run = [t for t in tests if wanted is None or short(t.id()) in wanted]
    with open(results, "a") as out:
        result = _Result(out, timeout)
        result._emit(event="plan", ids=[short(t.id()) for t in run])
        result._arm()
        unittest.TestSuite(run).run(result)
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        result._emit(event="end")


# ---- the parent --------------------------------------------------------------------------


def list_tests(suite: str, method: str) -> list[str]:
    env = dict(os.environ, SHOAL_STDLIB_METHOD=method)
    code = (
        "import importlib, unittest, stdlib_suites.__main__ as m;"
        f"mod = importlib.import_module({SUITES[suite]!r});"
        "print('\\n'.join(m.short(t.id()) for t in "
        "m._flatten(unittest.defaultTestLoader.loadTestsFromModule(mod))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"cannot load the {suite} suite:\n{out.stderr}")
    return out.stdout.split()


def run_job(suite: str, method: str, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """Run one suite under one start method; return {test: (outcome, detail)}."""
    ids = [t for t in list_tests(suite, method) if not args.k or any(k in t for k in args.k)]
    outcomes: dict[str, tuple[str, str]] = {}
    todo = []
    for t in ids:
        reason = listed(EXCLUDED, suite, method, t)
        if reason:
            outcomes[t] = ("excluded", reason)
        else:
            todo.append(t)
    log = logdir / f"{suite}-{method}.log"
    results = logdir / f"{suite}-{method}.jsonl"
    results.write_text("")
    started = time.monotonic()
    with open(log, "w") as logf:
        while todo:
            only = logdir / f"{suite}-{method}.only"
            only.write_text("\n".join(todo))
            cmd = [sys.executable, "-m", "stdlib_suites", "--child", suite, method,
                   str(results), str(args.timeout), str(only)]  # fmt: skip
            env = dict(os.environ, SHOAL_STDLIB_METHOD=method, PYTHONFAULTHANDLER="1")
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=logf, stderr=logf, start_new_session=True
            )
            rc = proc.wait()
            # what a test left running (its workers, a manager) goes with its child
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            current = None
            ended = False
            for line in results.read_text().splitlines():
                rec = json.loads(line)
                if rec["event"] == "start":
                    current = rec["id"]
                elif rec["event"] == "done":
                    # a test that failed and then errored in tearDown keeps the first
                    if rec["id"] not in outcomes or outcomes[rec["id"]][0] == "pass":
                        outcomes[rec["id"]] = (rec["outcome"], rec.get("detail", ""))
                elif rec["event"] == "fixture" and rec["outcome"] == "skip":
                    for t in todo:
                        cls = t.split(".")[0]
                        if f".{cls})" in rec["id"] and t not in outcomes:
                            outcomes[t] = ("skip", rec.get("detail", ""))
                elif rec["event"] == "fixture":
                    for t in todo:
                        cls = t.split(".")[0]
                        if (f".{cls})" in rec["id"] or "Module" in rec["id"]) and t not in outcomes:
                            outcomes[t] = ("error", f"{rec['id']}: {rec.get('detail', '')}")
                elif rec["event"] == "end":
                    ended = True
            if not ended:
                if current is not None and current not in outcomes:
                    outcomes[current] = ("timeout", f"no result within {args.timeout}s (rc {rc})")
                elif current is not None:
                    # the watchdog fired after the test: in class fixtures
                    outcomes[current] = (
                        "timeout",
                        f"hung in the fixtures after the test (rc {rc})",
                    )
                logf.write(f"\n### child ended (rc {rc}) in {current}; restarting\n")
                logf.flush()
            before = len(todo)
            todo = [t for t in todo if t not in outcomes]
            if ended or len(todo) == before:
                for t in todo:
                    outcomes[t] = ("error", f"not run (child rc {rc})")
                todo = []
    for t, (outcome, detail) in outcomes.items():
        if outcome not in ("pass", "skip", "excluded"):
            reason = listed(PENDING, suite, method, t)
            if reason:
                outcomes[t] = ("pending", f"{reason}\n{detail}")
    return {"suite": suite, "method": method, "outcomes": outcomes,
            "wall": time.monotonic() - started, "log": str(log)}  # fmt: skip


def flavour(suite: str, test: str) -> str:
    if suite == "mp":
        return "manager" if test.startswith("WithManager") else "processes"
    return "process pool"


def report(jobs: list[dict[str, Any]], verbose: bool) -> bool:
    """Print the failures and the score table; True if nothing applicable failed
    (pending tests aside)."""
    ok = True
    rows = []
    for job in jobs:
        suite, method = job["suite"], job["method"]
        groups: dict[str, dict[str, int]] = {}
        for test, (outcome, _) in job["outcomes"].items():
            g = groups.setdefault(flavour(suite, test), {})
            g[outcome] = g.get(outcome, 0) + 1
        for fl, g in sorted(groups.items()):
            passed = g.get("pass", 0)
            pending = g.get("pending", 0)
            bad = sum(v for k, v in g.items() if k not in ("pass", "skip", "excluded", "pending"))
            rows.append((suite, method, fl, passed, passed + bad + pending, pending,
                         g.get("excluded", 0), g.get("skip", 0), job["wall"]))  # fmt: skip
            ok = ok and bad == 0
        failed = [(t, o, d) for t, (o, d) in sorted(job["outcomes"].items())
                  if o not in ("pass", "skip", "excluded")]  # fmt: skip
        if failed:
            print(f"\n{suite} under {method}: {len(failed)} not passed (log: {job['log']})")
            for t, o, d in failed:
                print(f"  {o:8} {t}")
                if verbose and d:
                    print("    " + "\n    ".join(d.strip().splitlines()[-12:]))
        done = [t for t, (o, _) in sorted(job["outcomes"].items())
                if o == "pass" and listed(PENDING, suite, method, t)]  # fmt: skip
        for t in done:
            print(f"  {suite} under {method}: {t} passes: remove it from exclusions.PENDING")
    print(
        "\nsuite  method      flavour       passed/applicable  (pending)  excluded  skipped   wall"
    )
    names = {"mp": "test._test_multiprocessing", "cf": "test_concurrent_futures"}
    for suite, method, fl, passed, applicable, pending, excl, skip, wall in rows:
        pct = 100.0 * passed / applicable if applicable else 100.0
        print(f"{suite:6} {method:11} {fl:13} {passed:4}/{applicable:<4} ({pct:5.1f}%)  "
              f"{pending:5}    {excl:8}  {skip:7}  {wall:5.0f}s   {names[suite]}")  # fmt: skip
    return ok


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        suite, method, results, timeout, only = argv[1:6]
        child(suite, method, results, float(timeout), only)
        return 0
    parser = argparse.ArgumentParser(prog="python -m stdlib_suites", description=__doc__)
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--method", action="append", choices=METHODS)
    parser.add_argument("--timeout", type=float, default=120.0, help="per test (default 120)")
    parser.add_argument("-k", action="append", help="run only tests whose id contains this")
    parser.add_argument("--jobs", type=int, default=2, help="(suite, method) pairs at a time")
    parser.add_argument("--logs", help="directory for the logs (default: a new temporary one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show failures' tracebacks")
    args = parser.parse_args(argv)
    logdir = Path(args.logs or tempfile.mkdtemp(prefix="shoal-stdlib-"))
    logdir.mkdir(parents=True, exist_ok=True)
    pairs = [(s, m) for s in (args.suite or SUITES) for m in (args.method or METHODS)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        jobs = list(pool.map(lambda p: run_job(p[0], p[1], args, logdir), pairs))
    (logdir / "summary.json").write_text(json.dumps(jobs, indent=1))
    ok = report(jobs, args.verbose)
    print(f"\nlogs and summary.json in {logdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
