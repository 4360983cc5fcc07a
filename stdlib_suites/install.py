"""Install the standard-library test files this interpreter lacks, as a fresh machine would.

    python -m stdlib_suites.install DIRECTORY

Builds of CPython without its test package's ``test_concurrent_futures`` (this
project's pyenv 3.11 is one) get the file of the same minor release from Debian's
``libpython3.X-testsuite`` package: ``apt-get download`` (no root needed, nothing
installed system-wide) and ``dpkg -x`` into a temporary directory, from which the
file is copied into DIRECTORY.  The package's version is printed beside the
interpreter's: the minor versions must match (a patch release apart is fine, the
tests of one minor release do not change their expectations).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NEEDED = ("test_concurrent_futures",)


def main(target: str) -> int:
    where = Path(target)
    missing = [
        name
        for name in NEEDED
        if importlib.util.find_spec(f"test.{name}") is None
        and not (where / f"{name}.py").exists()
        and not (where / name).is_dir()
    ]
    if not missing:
        return 0
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    package = f"libpython{minor}-testsuite"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        print(
            f"{', '.join(missing)} missing from this Python and no apt-get to fetch "
            f"{package}: copy Lib/test/{missing[0]}* of CPython {sys.version.split()[0]} "
            f"into {where}",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="shoal-testsuite-") as tmp:
        Path(tmp).chmod(0o755)  # apt-get downloads as its own user where it can
        download = ["apt-get", "download", "-q", package]
        if subprocess.run(download, cwd=tmp).returncode != 0 and os.geteuid() == 0:
            # a fresh machine (CI's) may have no package lists yet: fetch them once
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(download, cwd=tmp, check=True)
        elif not list(Path(tmp).glob(f"{package}_*.deb")):
            raise SystemExit(f"apt-get could not download {package}")
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        version = deb.name.split("_")[1]
        print(f"{package} {version} for Python {sys.version.split()[0]}")
        if not version.startswith(minor + "."):
            print(f"{package} is {version}, not {minor}.x", file=sys.stderr)
            return 1
        subprocess.run(["dpkg", "-x", str(deb), "x"], cwd=tmp, check=True)
        tests = Path(tmp, "x", "usr", "lib", f"python{minor}", "test")
        where.mkdir(parents=True, exist_ok=True)
        for name in missing:
            if (tests / name).is_dir():  # 3.12+: a package
                shutil.copytree(tests / name, where / name, dirs_exist_ok=True)
            else:
                shutil.copy2(tests / f"{name}.py", where / f"{name}.py")
            print(f"installed {name} into {where}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
