"""The type checks of ``make lint`` can fail: a checker that passes everything proves
nothing (#11).

``make lint`` runs mypy --strict (and basedpyright) over the user-style snippets in
``tests/typing/`` and ``mypy.stubtest`` over ``shoal._core``.  These tests feed the
same tools a snippet that misuses the API, and a stub that lies about the compiled
module, and expect each to be rejected, at the line and with the message that
names the mistake.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with shoal's lint extra")

import shoal

TIMEOUT = 240

# each "# E: text" line must draw an error containing text, and no other line one
WRONG = textwrap.dedent(
    """\
    from typing_extensions import assert_type

    import shoal


    def square(x: int) -> int:
        return x * x


    def main() -> None:
        with shoal.Pool(1) as pool:
            assert_type(pool.map(square, [1]), list[str])  # E: "list[int]", not "list[str]"
            pool.map(square, ["a"])  # E: Argument 1 to "map" of "_PoolBase" has incompatible type
        q: shoal.Queue[int] = shoal.Queue()
        q.put("x")  # E: has incompatible type "str"; expected "int"
        with shoal.Executor(1) as ex:
            ex.submit(square, "a")  # E: has incompatible type "str"; expected "int"
        d = shoal.SharedDict({"a": 1})
        d["b"] = "x"  # E: (expression has type "str", target has type "int")
        shoal.no_such_name  # E: has no attribute "no_such_name"
        assert_type(shoal.SharedArray, object)  # E: not "object"
    """
)


def run_mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=path.parent,
    )


def test_mypy_rejects_misuse_of_the_typed_api(tmp_path: Path) -> None:
    snippet = tmp_path / "wrong.py"
    snippet.write_text(WRONG)
    result = run_mypy(snippet, tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    errors: dict[int, str] = {}
    for m in re.finditer(r"^wrong\.py:(\d+): error: (.*)$", result.stdout, re.M):
        errors[int(m.group(1))] = errors.get(int(m.group(1)), "") + m.group(2)
    expected = {
        n: line.split("# E: ", 1)[1]
        for n, line in enumerate(WRONG.splitlines(), 1)
        if "# E: " in line
    }
    for n, text in expected.items():
        assert text in errors.get(n, ""), f"line {n}: expected {text!r}\n{result.stdout}"
    assert set(errors) == set(expected), result.stdout


def test_stubtest_rejects_a_stub_that_lies(tmp_path: Path) -> None:
    """The stub check reads ``_core.pyi``: a copy of it that names a function the
    module lacks, and lacks one the module has, fails on both.

    (The C functions carry no ``__text_signature__``, so stubtest can check names,
    classes and members, not parameter lists.)
    """
    stub = (Path(shoal.__file__).parent / "_core.pyi").read_text()
    wrong = re.sub(r"^def wake32\(.*\n", "", stub, count=1, flags=re.M)
    assert wrong != stub, "wake32 is no longer in the stub: pick another function"
    wrong += "def load128(buffer: Buffer, offset: int, /) -> int: ...\n"
    package = tmp_path / "stubs" / "shoal"
    package.mkdir(parents=True)
    (package / "__init__.pyi").write_text("")
    (package / "_core.pyi").write_text(wrong)
    # (stubtest reads mypy_path from a config file, not from MYPYPATH)
    (tmp_path / "mypy.ini").write_text(f"[mypy]\nmypy_path = {tmp_path / 'stubs'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "shoal._core", "--mypy-config-file", "mypy.ini"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: shoal._core.load128 is not present at runtime" in result.stdout, result.stdout
    assert "error: shoal._core.wake32 is not present in stub" in result.stdout, result.stdout
