"""Stores and finished runs made before a change to the orchestration code stay valid: every shipped recipe,
run small, gives the store keys and stage fingerprints recorded from the code before the task layer
(tests/data/stage_fingerprints_stable.json, written by scripts/stage_fingerprints.py --stable-weights on
that code). Weights are digested by file names and sizes there (CPU training is not bit-reproducible), so
what is compared is how each key is built from the recipe, the data and the settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_shipped_recipes_keep_their_store_keys_and_stage_fingerprints(tmp_path):
    recorded = ROOT / "tests" / "data" / "stage_fingerprints_stable.json"
    script = ROOT / "scripts" / "stage_fingerprints.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "now.json"), "--stable-weights",
                           "--compare", str(recorded)],
                          capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "same store keys and stage fingerprints" in proc.stdout
