"""Where each ControlNet's map comes from, and which ControlNets run (the pipeline's control side).

A map is a preprocessor (canny, depth, passthrough) applied to the input frame or to the latest
frame of the ControlNet's own source. ControlNets on the same input through the same
preprocessor share one map per step. Which ControlNets run is a host-side choice (live
`controlnet_<k>_enabled`), so each subset is its own compiled step / CUDA graph, all made in
the pipeline's warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.config.schema import CONTROL_FROM_INPUT, ControlNetSpec, LiveParams
from engine.core.controlnet import ControlBatch
from engine.core.fit import fit_into
from engine.core.pixels import as_frame_batch
from engine.core.preprocess import make_preprocessor
from engine.core.preprocess.canny import Canny
from engine.errors import ConfigError
from engine.models.controlnet import ControlNetParts


class ControlMaps:
    """The maps of `specs` (load.controlnets) for frames of (F, H, W); `loaded` in the same order."""

    def __init__(self, specs: Sequence[ControlNetSpec], loaded: Sequence[ControlNetParts], live: LiveParams, *,
                 frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype):
        if len(loaded) != len(specs):
            raise ConfigError(f"the preset names {len(specs)} ControlNet(s) but {len(loaded)} were loaded")
        self.frames, self.height, self.width = frames, height, width
        self.device, self.dtype = device, dtype
        self.canny = Canny(live.canny_low, live.canny_high, device=device, dtype=dtype)
        self._preprocess = [make_preprocessor(s.preprocessor, device=device, dtype=dtype, canny=self.canny,
                                              depth=c.depth, depth_resolution=s.depth_resolution)
                            for s, c in zip(specs, loaded)]
        # A ControlNet with a source of its own reads its latest map from here (set_frame).
        self.own_u8 = [None if s.source == CONTROL_FROM_INPUT else
                       torch.zeros(frames, height, width, 4, dtype=torch.uint8, device=device) for s in specs]
        self._staging: list[torch.Tensor | None] = [None] * len(specs)
        # Own sources never share a map (each has its buffer); same input + same preprocessor do.
        self._keys = [(k if s.source != CONTROL_FROM_INPUT else -1, s.preprocessor, s.depth_model,
                       s.depth_resolution) for k, s in enumerate(specs)]
        self.count = len(specs)
        self.on: tuple[int, ...] = tuple(range(len(specs)))  # which run: set live (controlnet_<k>_enabled)
        self.switched_on: set[int] = set()  # since the last frame (their carried maps are stale)

    def maps(self, control: tuple[int, ...], img_pm1: torch.Tensor | None) -> dict[int, torch.Tensor]:
        """The newest frame's map for each ControlNet in `control`, shared where sources match."""
        maps: dict[int, torch.Tensor] = {}
        made: dict[tuple, torch.Tensor] = {}
        for k in control:
            key = self._keys[k]
            if key not in made:
                made[key] = self.map_of(k, img_pm1)
            maps[k] = made[key]
        return maps

    def map_of(self, k: int, img_pm1: torch.Tensor | None) -> torch.Tensor:
        """ControlNet k's map of the newest frame(s): its preprocessor on the input or on its own source's map."""
        own = self.own_u8[k]
        if own is not None:
            rgb01 = own[..., :3].permute(0, 3, 1, 2).to(self.dtype) / 255.0
        else:
            rgb01 = img_pm1 * 0.5 + 0.5  # type: ignore[operator]  (schema: txt2img ControlNets have own sources)
        return self._preprocess[k](rgb01)

    def set_frame(self, k: int, frame: np.ndarray | torch.Tensor) -> None:
        """The latest map from ControlNet k's own source, rgba_u8 of any size, fitted like the input.
        It holds until the next one (a source that stops leaves its last map in place)."""
        out = self.own_u8[k] if 0 <= k < len(self.own_u8) else None
        if out is None:
            raise ConfigError(f"ControlNet {k} has no source of its own (its maps come from the input frame)")
        frames = as_frame_batch(frame, self.frames, self.height, self.width, any_size=True)
        if frames.shape[1:] == out.shape[1:] and frames.shape[0] in (1, out.shape[0]):
            out.copy_(frames, non_blocking=True)  # one map for all F frames, or one each
            return
        staging = self._staging[k]
        if staging is None or staging.shape != frames.shape:
            staging = self._staging[k] = torch.empty(frames.shape, dtype=torch.uint8, device=self.device)
        staging.copy_(frames, non_blocking=True)
        fit_into(staging, out)

    def set_live(self, live: LiveParams) -> None:
        """Canny thresholds, and which ControlNets run (a host-side choice)."""
        self.canny.set_thresholds(live.canny_low, live.canny_high)
        on = tuple(k for k in range(self.count) if getattr(live, f"controlnet_{k}_enabled"))
        self.switched_on.update(k for k in on if k not in self.on)
        self.on = on

    @torch.no_grad()
    def refill(self, batch: ControlBatch, img_pm1: torch.Tensor | None) -> None:
        """ControlNets switched back on: the frames in flight take the newest frame's map, not the maps
        they held when it was switched off. Eager, once per switch (a host-side event, not per frame)."""
        for k in sorted(self.switched_on):
            carried = batch.map_buf[k]
            if carried is None or carried.shape[0] == 0:
                continue
            new = self.map_of(k, img_pm1)
            carried.view(-1, *new.shape).copy_(new.unsqueeze(0).expand(carried.shape[0] // new.shape[0], *new.shape))
        self.switched_on.clear()

    def variants(self) -> list[tuple[int, ...]]:
        """Every subset of the ControlNets, the current one first (what the pipeline's warm-up builds)."""
        subsets = [tuple(k for k in range(self.count) if mask >> k & 1) for mask in range(2 ** self.count)]
        return [self.on, *(s for s in subsets if s != self.on)]
