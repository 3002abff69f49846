"""Where the repository's folders are, for tests at any depth of the tree."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "presets"
