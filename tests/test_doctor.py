"""``python -m shoal doctor`` and ``python -m shoal --help`` (issue #11).

* doctor names each segment in ``/dev/shm`` as live (a holder alive), leftover (every
  holder dead: ``--reap`` removes it) or cannot tell (another user's file, one not of
  shoal's layout), and ``--reap`` removes exactly the leftovers; the planting runs in
  a private ``/dev/shm`` (tests/isolation.py);
* ``--help`` of the command and of each subcommand is plain text: no reST markup
  (double backquotes, ``:func:`` roles), and doctor's says what it reports.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from isolation import HOSTILE_USER, check_isolated

TIMEOUT = 60.0
REST_MARKUP = re.compile(r"``|:(func|class|meth|mod|attr):`|\.\. \w+::")


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("args", [["--help"], ["doctor", "--help"], ["demo", "--help"]])
def test_help_is_plain_text(args: list[str]):
    out = run_cli(*args)
    assert out.startswith("usage: python -m shoal")
    assert not REST_MARKUP.search(out), f"reST markup in {' '.join(args)}:\n{out}"


def test_help_says_what_each_command_does():
    top = run_cli("--help")
    assert "demo" in top and "doctor" in top and "leftover" in top
    doctor = run_cli("doctor", "--help")
    for word in ("live", "leftover", "--reap", "another user's"):
        assert word in doctor, f"doctor --help does not mention {word!r}:\n{doctor}"


# the script run in a private /dev/shm: it plants one segment of each state, runs the
# doctor, reaps, runs it again, and prints what it saw as JSON
_PLANT = f"""
import json, os, pwd, secrets, subprocess, sys
from shoal import lowlevel

def doctor(*args):
    done = subprocess.run([sys.executable, "-m", "shoal", "doctor", *args],
                          capture_output=True, text=True, timeout={TIMEOUT})
    assert done.returncode == 0, done.stderr
    return done.stdout

# live: held by this process, alive while the doctor looks
live = lowlevel.Segment.create(64)
# leftover: made by a child that died without letting go (os._exit skips every hook)
leftover = subprocess.run(
    [sys.executable, "-c",
     "import os, sys; from shoal import lowlevel; "
     "s = lowlevel.Segment.create(64); print(s.name, flush=True); os._exit(0)"],
    capture_output=True, text=True, timeout={TIMEOUT}).stdout.strip()
# cannot tell: not shoal's layout, and another user's file
garbage = "/shoal-" + secrets.token_hex(10)
with open("/dev/shm" + garbage, "wb") as f:
    f.write(secrets.token_bytes(8192))
foreign = "/shoal-" + secrets.token_hex(10)
with open("/dev/shm" + foreign, "wb") as f:
    f.write(bytes(8192))
nobody = pwd.getpwnam({HOSTILE_USER[0]!r})
os.chown("/dev/shm" + foreign, nobody.pw_uid, nobody.pw_gid)

before = doctor()
reaped = doctor("--reap")
after = doctor()
left = sorted("/" + n for n in os.listdir("/dev/shm") if n.startswith("shoal-")
              and not n.startswith("shoal-live-"))
print(json.dumps(dict(live=live.name, leftover=leftover, garbage=garbage,
                      foreign=foreign, before=before, reaped=reaped, after=after,
                      left=left)))
live.close()
"""


def section(report: str, heading: str) -> str:
    """The lines listed under the doctor's heading that starts with ``heading``."""
    lines = report.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s+\d+ {heading}", line):
            out = []
            for item in lines[i + 1 :]:
                if not item.startswith("    "):
                    break
                out.append(item)
            return "\n".join(out)
    return ""


def test_doctor_names_live_leftover_and_unknown_segments_and_reaps_only_leftovers():
    import json

    out = json.loads(check_isolated(_PLANT).strip().splitlines()[-1])
    before = out["before"]
    assert out["leftover"].startswith("/shoal-"), out
    # the summary: this process's segment (and its ledger), the dead child's segment
    # (and its ledger), the two unknown files
    assert re.search(r"shoal segments:  \d+ in /dev/shm: \d+ live, \d+ leftover, 2 unknown",
                     before), before  # fmt: skip
    live, leftover = section(before, "live"), section(before, "leftover")
    unknown = section(before, "cannot tell")
    assert out["live"] in live and out["live"] not in leftover, before
    assert out["leftover"] in leftover and out["leftover"] not in live, before
    assert "every holder died" in leftover
    assert out["garbage"] in unknown and "not a shoal segment" in unknown, before
    assert out["foreign"] in unknown and "another user's" in unknown, before
    assert "made by pid" in leftover and "data" in leftover
    # --reap removes exactly the leftovers
    assert out["leftover"] in out["reaped"].split("reaped:")[1]
    assert out["leftover"] not in out["left"]
    for name in ("live", "garbage", "foreign"):
        assert out[name] in out["left"], f"--reap removed the {name} segment"
    assert re.search(r", 0 leftover, 2 unknown", out["after"]), out["after"]
