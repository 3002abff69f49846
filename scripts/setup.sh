#!/usr/bin/env bash
# Makes .venv and installs streamvj with its dev extras: README's first command on Linux and macOS.
# The work (which torch build, which extras, and why) is scripts/install.py, which Windows runs
# directly; arguments pass through (e.g. --dry-run). STREAMVJ_TORCH overrides the torch step.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/install.py --dev "$@"
