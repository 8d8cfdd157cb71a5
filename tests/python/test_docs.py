"""The docs' tables of measured figures are generated from Tier 2's result
files (`scripts/results.py`): a table that differs from what its result
files make fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_tables_match_the_result_files():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "results.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
