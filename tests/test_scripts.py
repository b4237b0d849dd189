"""The set-up script as a newcomer runs it: a failed install step stops it with pip's message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_env_stops_at_a_failed_install(tmp_path):
    """A torch version that does not exist: the script exits non-zero at that step, says which step failed and
    shows pip's own error, instead of filtering it away and going on."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup_env.sh", tmp_path / "scripts" / "setup_env.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '0'\n")
    r = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHON": sys.executable, "GENREC_TORCH_VERSION": "0.0.0.0.1"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "error: setup step failed (exit 1):" in r.stderr and "torch==0.0.0.0.1" in r.stderr
    assert "ERROR:" in r.stderr  # pip's own message
    assert "genrec env ready" not in r.stdout
