"""The plugin's tests run from a checkout without installing it: its source directory goes on the path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
