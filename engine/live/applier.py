"""Applies one frame's live-parameter snapshot to a pipeline, touching only what changed.

Runs on the render thread (the only thread that touches the model). The groups and what
each one sets are the pipeline's (`LIVE_GROUPS`, `StreamPipeline.apply_live`); this module
decides which groups changed since the last frame. A rejected value is logged once with
its reason and the previous value stays in effect.
"""

from __future__ import annotations

import logging

from engine.config.schema import LiveParams
from engine.core.pipeline import LIVE_GROUPS, StreamPipeline
from engine.errors import StreamVJError

log = logging.getLogger("streamvj.live")


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
        for group, fields in LIVE_GROUPS.items():
            key = tuple(repr(getattr(live, name)) for name in fields)
            if self._applied.get(group) == key:
                continue
            try:
                self.pipeline.apply_live(group, live)
            except StreamVJError as exc:
                message = f"live {group} change not applied: {exc}"
                if message not in self._reported:
                    self._reported.add(message)
                    log.warning(message)
            # Remember even a rejected value, so it is not retried (and re-logged) every frame.
            self._applied[group] = key
            applied.append(group)
        return applied
