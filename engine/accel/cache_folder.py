"""Where streamvj keeps what it builds once and reuses (TensorRT engines, torch.compile's caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(env_var: str, name: str) -> Path:
    """The rule every streamvj cache follows: $<env_var>, else $XDG_CACHE_HOME/streamvj/<name>,
    else ~/.cache/streamvj/<name>."""
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "streamvj" / name
