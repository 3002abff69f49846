"""Applies one frame's live-parameter snapshot to a pipeline, touching only what changed.

Runs on the render thread (the only thread that touches the model). A rejected value is
logged once with its reason and the previous value stays in effect.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.config.schema import LiveParams
from engine.core.pipeline import StreamPipeline
from engine.errors import StreamVJError

log = logging.getLogger("streamvj.live")

# Fields that the pipeline applies together, and how.
_GROUPS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "negative_prompt", "prompt_blend", "prompt_interp"),
    "seed": ("seed", "seed_blend"),
    "guidance": ("guidance_scale", "delta"),
    "t_index": ("t_index_list",),
    "similarity": ("similarity_enabled", "similarity_threshold", "similarity_max_skip"),
    "fx": ("fx_feedback", "fx_blend", "fx_brightness", "fx_contrast", "fx_saturation", "fx_hue"),
}


def _apply_group(pipe: StreamPipeline, group: str, v: dict[str, Any]) -> None:
    if group == "prompt":
        blend = [(text, float(w)) for text, w in v["prompt_blend"]] or [(v["prompt"], 1.0)]
        pipe.set_prompt_blend(blend, v["prompt_interp"], negative_prompt=v["negative_prompt"])
    elif group == "seed":
        pipe.set_seed_blend([(int(s), float(w)) for s, w in v["seed_blend"]] or [(int(v["seed"]), 1.0)])
    elif group == "guidance":
        pipe.set_guidance(float(v["guidance_scale"]), float(v["delta"]))
    elif group == "t_index":
        pipe.set_t_index_list([int(i) for i in v["t_index_list"]])
    elif group == "fx":
        pipe.fx.update(v)
    elif group == "similarity":
        pipe.set_similarity(bool(v["similarity_enabled"]), float(v["similarity_threshold"]),
                            int(v["similarity_max_skip"]))


class LiveApplier:
    def __init__(self, pipeline: StreamPipeline):
        self.pipeline = pipeline
        self._applied: dict[str, tuple] = {}
        self._reported: set[str] = set()

    def rebind(self, pipeline: StreamPipeline) -> None:
        """A new pipeline went on air: everything is applied afresh on the next snapshot."""
        self.pipeline = pipeline
        self._applied.clear()

    def apply(self, live: LiveParams) -> list[str]:
        """Push changed groups into the pipeline; returns the groups applied (for tests/stats)."""
        applied = []
        for group, fields in _GROUPS.items():
            values = {name: getattr(live, name) for name in fields}
            key = tuple(repr(values[name]) for name in fields)
            if self._applied.get(group) == key:
                continue
            try:
                _apply_group(self.pipeline, group, values)
            except StreamVJError as exc:
                message = f"live {group} change not applied: {exc}"
                if message not in self._reported:
                    self._reported.add(message)
                    log.warning(message)
            # Remember even a rejected value, so it is not retried (and re-logged) every frame.
            self._applied[group] = key
            applied.append(group)
        return applied
