"""The chaos suite's quick run (``python -m chaos --quick``), one test a scenario.

``make chaos`` runs every scenario for 30 s; here each runs for a few seconds, in its
private ``/dev/shm``, and must hold: nothing acknowledged lost (beyond the bounded
window of a consumer killed between taking items and recording them), duplicated or
corrupt, no hang, no crash, no segment left (see ``chaos/``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from isolation import require_isolation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chaos.__main__ import discover  # noqa: E402

SECONDS = 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", sorted(discover()))
def test_scenario_holds(scenario: str, tmp_path: Path) -> None:
    require_isolation()
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "--seconds", str(SECONDS), "--only", scenario,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    figures = json.loads(out.read_text())[scenario]
    assert not any(figures[k] for k in figures["holds"]), figures
