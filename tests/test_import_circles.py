"""The core and the built-in plugins import in one direction: no circles, type-only imports counted
(`python ../shared/tools/import_circles.py easyrlhf_core`, the project's shared checker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT.parent / "shared" / "tools" / "import_circles.py"


@pytest.mark.skipif(not CHECKER.is_file(), reason="the shared import-circle checker is not beside this checkout")
@pytest.mark.parametrize("package", ["easyrlhf_core", "plugins/easyrlhf_plugins"])
def test_no_import_circles(package):
    result = subprocess.run(
        [sys.executable, str(CHECKER), package], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "circles: 0", result.stdout
