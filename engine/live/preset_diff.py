"""What a preset switch needs: live values only, a pipeline rebuild, or (for bridges) a restart.

Load-time fields are compared as the engine resolves them, not as they are spelled: an
engine started with `--device cpu` switching to a preset with `device: auto` on a machine
without a GPU gets the same device, dtype and backend, so it needs no rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.accel.backend import resolve_device, resolve_dtype, select_backend
from engine.config.preset_files import diff_load_time
from engine.config.schema import LoadSettings, Preset
from engine.errors import StreamVJError

# Load-time fields the render pipeline does not depend on: they need a restart, not a rebuild.
BRIDGE_FIELDS = ("load.source", "load.sinks", "load.target_fps")
RESOLVED_FIELDS = ("load.device", "load.dtype", "load.acceleration")


@dataclass(frozen=True)
class SwitchPlan:
    rebuild: list[str]  # fields that need another pipeline ("load.model", "steps", ...)
    restart_only: list[str]  # bridge fields: kept as they are until a restart

    @property
    def live_only(self) -> bool:
        return not self.rebuild


def resolved(load: LoadSettings) -> dict[str, Any]:
    """device, dtype and backend as this machine resolves them ("auto" is not a value)."""
    device = resolve_device(load.device)
    return {
        "load.device": device,
        "load.dtype": resolve_dtype(load.dtype, device),
        "load.acceleration": select_backend(load.acceleration, device)[0],
    }


def plan_switch(old: Preset, new: Preset) -> SwitchPlan:
    changes = diff_load_time(old, new)
    if any(c in RESOLVED_FIELDS for c in changes):
        try:
            before, after = resolved(old.load), resolved(new.load)
        except StreamVJError:
            pass  # e.g. a CUDA device on a machine without one: the build will say so
        else:
            same = {f for f in RESOLVED_FIELDS if before[f] == after[f]}
            changes = [c for c in changes if c not in same]
    return SwitchPlan(
        rebuild=[c for c in changes if c not in BRIDGE_FIELDS],
        restart_only=[c for c in changes if c in BRIDGE_FIELDS],
    )
