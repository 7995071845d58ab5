"""docs/api.md is generated from the docstrings (scripts/api_docs.py); a docstring changed
without regenerating it fails here, with the command that fixes it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_is_current():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_docs.py"), "--check"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (
        "docs/api.md is stale: run `PYTHONPATH=python python scripts/api_docs.py`\n"
        + r.stdout + r.stderr)
