"""Where each ControlNet's map comes from, and which ControlNets run (the pipeline's control side).

A map is a preprocessor (canny, depth, passthrough) applied to the input frame or to the latest
frame of one of the ControlNet's own sources. A preset may list several sources and
preprocessors per ControlNet (load.controlnets[k]); live `controlnet_<k>_source` and
`controlnet_<k>_preprocessor` pick among them. Making a map is a step of its own (the map
step), apart from the UNet's frame step: one compiled / CUDA-graph-captured variant per
(ControlNet, source, preprocessor), every one made in `warm_up`, each writing the ControlNet's
`newest` buffer, which the frame step reads as a static input. So a switch is a different
replay, never a compile or capture, and the pipeline's priming loop (N steps on one input)
makes the map once. ControlNets on the same input through the same preprocessor share one
map per frame. Which ControlNets run is a host-side choice too (live `controlnet_<k>_enabled`):
each subset is its own frame step variant, also made in warm-up.

Maps of own sources arrive on the render thread (`set_frame`, from
engine/realtime/control_source.py); on CUDA they are copied on an upload stream of their own
from the source's pinned buffers (engine/accel/device_io.py), overlapping the compute stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.accel.backend import FrameStep
from engine.config.schema import CONTROL_FROM_INPUT, MAX_CONTROLNETS, ControlNetSpec, LiveParams
from engine.core.controlnet import ControlBatch
from engine.core.fit import fit_into
from engine.core.pixels import as_frame_batch
from engine.core.preprocess import make_preprocessor
from engine.core.preprocess.canny import Canny
from engine.errors import ConfigError
from engine.models.controlnet import ControlNetParts

log = logging.getLogger("streamvj.control")

# Live fields, as the pipeline's LIVE_GROUPS applies them: scales, on/off and canny thresholds in one
# group; the choices in another, so a refused choice is said once and never blocks a scale change.
LIVE_FIELDS = (*(f"controlnet_{k}_{what}" for k in range(MAX_CONTROLNETS) for what in ("scale", "enabled")),
               "canny_low", "canny_high")
CHOICE_FIELDS = tuple(f"controlnet_{k}_{what}" for k in range(MAX_CONTROLNETS) for what in ("source", "preprocessor"))

Choice = tuple[str, str]  # (source, preprocessor)


def rgba_u8_to_rgb01(rgba_u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(F,H,W,4) uint8 -> (F,3,H,W) in 0..1: what the preprocessors take."""
    return rgba_u8[..., :3].permute(0, 3, 1, 2).to(dtype) / 255.0


def live_choice(spec: ControlNetSpec, k: int, live: LiveParams) -> Choice:
    """ControlNet k's (source, preprocessor) as `live` asks; a field `live` leaves unset is the first choice
    (a Preset fills them in; a LiveParams built in code may not)."""
    picked = []
    for what, choices in (("source", spec.sources), ("preprocessor", spec.preprocessors)):
        name = f"controlnet_{k}_{what}"
        picked.append(getattr(live, name) if name in live.model_fields_set else choices[0])
    return picked[0], picked[1]


class ControlMaps:
    """The maps of `specs` (load.controlnets) for frames shaped like `input_u8` (F,H,W,4 on the device);
    `loaded` in the same order. `backend` and `compile_mode` as the pipeline's frame step.
    `new_upload`: makes the host->device uploader of an own source's maps (DeviceUpload on CUDA; None:
    plain copies)."""

    def __init__(self, specs: Sequence[ControlNetSpec], loaded: Sequence[ControlNetParts], live: LiveParams, *,
                 input_u8: torch.Tensor, dtype: torch.dtype, backend: str = "none", compile_mode: str = "default",
                 new_upload: Callable[[], Any] | None = None):
        if len(loaded) != len(specs):
            raise ConfigError(f"the preset names {len(specs)} ControlNet(s) but {len(loaded)} were loaded")
        self.specs, self.count = list(specs), len(specs)
        self.frames, self.height, self.width = input_u8.shape[:3]
        self.input_u8, self.device, self.dtype = input_u8, input_u8.device, dtype
        self.canny = Canny(live.canny_low, live.canny_high, device=self.device, dtype=dtype)
        # Every listed preprocessor is built (a depth network is loaded only if depth is among the choices).
        self._preprocess = [{name: make_preprocessor(name, device=self.device, dtype=dtype, canny=self.canny,
                                                     depth=c.depth, depth_resolution=s.depth_resolution)
                             for name in s.preprocessors} for s, c in zip(specs, loaded)]
        # Each listed own source has its buffer: a switch shows that source's latest map (black until one came).
        self.own_u8 = {(k, src): torch.zeros(self.frames, self.height, self.width, 4, dtype=torch.uint8,
                                             device=self.device)
                       for k, s in enumerate(specs) for src in s.sources if src != CONTROL_FROM_INPUT}
        # The newest frame's map per ControlNet: written by the map step, read by the frame step.
        self.newest = [torch.zeros(self.frames, 3, self.height, self.width, device=self.device, dtype=dtype)
                       for _ in specs]
        self.chosen: list[Choice] = [(s.sources[0], s.preprocessors[0]) for s in specs]
        self.on: tuple[int, ...] = tuple(range(self.count))  # which run: set live (controlnet_<k>_enabled)
        self.refill_due: set[int] = set()  # switched on or to another choice: their carried maps are another's
        self._refused: set[tuple[int, str, str]] = set()  # live choices refused and still in the store (said once)
        if new_upload is None and self.device.type == "cuda":
            from engine.accel.device_io import DeviceUpload

            def new_upload() -> Any:
                return DeviceUpload(self.device)
        self._new_upload = new_upload
        self._uploads: dict[int, Any] = {}
        self._staging: dict[int, torch.Tensor] = {}
        self.step = FrameStep(self._map_step, backend, device=self.device, static_inputs=[input_u8],
                              compile_mode=compile_mode)
        self.choose(live)
        self.refill_due.clear()  # nothing is in flight yet

    # ---- the map step --------------------------------------------------------------------------------

    @torch.no_grad()
    def _map_step(self, input_u8: torch.Tensor, k: int, source: str, preprocessor: str) -> torch.Tensor:
        """ControlNet k's map of the newest frame(s) into `newest[k]`; (k, source, preprocessor) is a host-side
        mode: one compiled step and one CUDA graph each, all made in `warm_up`."""
        u8 = input_u8 if source == CONTROL_FROM_INPUT else self.own_u8[(k, source)]
        self.newest[k].copy_(self._preprocess[k][preprocessor](rgba_u8_to_rgb01(u8, self.dtype)))
        return self.newest[k]

    def _share_key(self, k: int) -> tuple[Any, ...]:
        # Own sources never share (each has its buffer); the same input through the same preprocessor does.
        source, preprocessor = self.chosen[k]
        spec = self.specs[k]
        depth = (spec.depth_model, spec.depth_resolution) if preprocessor == "depth" else None
        return (source if source == CONTROL_FROM_INPUT else (k, source), preprocessor, depth)

    def variants(self) -> list[tuple[int, ...]]:
        """Every subset of the ControlNets, the current one first (the frame step variants warm-up builds)."""
        subsets = [tuple(k for k in range(self.count) if mask >> k & 1) for mask in range(2 ** self.count)]
        return [self.on, *(s for s in subsets if s != self.on)]

    def warm_up(self) -> None:
        """Run the map step once for every listed (source, preprocessor) of every ControlNet: compiled and
        captured, a live switch replays one that exists; eager, it meets no lazy library setup (cuDNN's
        algorithm search for the depth network) on air either."""
        for k, spec in enumerate(self.specs):
            for source in spec.sources:
                for preprocessor in spec.preprocessors:
                    self.step(self.input_u8, k, source, preprocessor)

    def prepare(self, control: tuple[int, ...] | None, batch: ControlBatch | None, primed: bool) -> tuple[int, ...]:
        """Before a frame's step(s): the maps of the ControlNets that run (`control`, None: the live ones) into
        `newest`, once per frame however many steps prime the batch. ControlNets switched on or to another
        choice give the frames in flight the newest map too (theirs were never made, or made another way);
        priming fills every slot anyway. Returns the ControlNets that run, the frame step's mode."""
        control = self.on if control is None else control
        made: dict[tuple[Any, ...], int] = {}
        for k in control:
            first = made.setdefault(self._share_key(k), k)
            if first == k:
                self.step(self.input_u8, k, *self.chosen[k])
            else:
                self.newest[k].copy_(self.newest[first])
        for k in control:
            if k in self.refill_due:
                if primed and batch is not None:
                    batch.refill(k, self.newest[k])
                self.refill_due.discard(k)
        return control

    def newest_maps(self, control: tuple[int, ...]) -> dict[int, torch.Tensor] | None:
        """The frame step's view: ControlNet k -> its newest map, for the ControlNets that run."""
        return {k: self.newest[k] for k in control} or None

    # ---- live ----------------------------------------------------------------------------------------

    def set_live(self, live: LiveParams, batch: ControlBatch | None) -> None:
        """Scales (into the batch's per-row buffers), which ControlNets run (host-side), canny thresholds."""
        self.canny.set_thresholds(live.canny_low, live.canny_high)
        on = tuple(k for k in range(self.count) if getattr(live, f"controlnet_{k}_enabled"))
        self.refill_due.update(k for k in on if k not in self.on)
        self.on = on
        if batch is not None:
            for k in range(len(batch)):
                batch.set_scale(k, getattr(live, f"controlnet_{k}_scale"))

    def choose(self, live: LiveParams) -> None:
        """The live source and preprocessor of each ControlNet. Only the preset's choices are taken (a source
        named over OSC is never opened: `image:`/`video:` name files); a refused value raises one ConfigError
        naming it, after the valid ones were applied, and its ControlNet keeps what it had for that field.
        A refused value stays in the live store until another replaces it: it is said once, not again
        with every later choice change."""
        refused: dict[tuple[int, str, str], str] = {}
        for k, spec in enumerate(self.specs):
            picked = []
            for what, value, had, choices in zip(("source", "preprocessor"), live_choice(spec, k, live),
                                                 self.chosen[k], (spec.sources, spec.preprocessors)):
                if value not in choices:
                    refused[(k, what, value)] = (f"controlnet_{k}_{what} {value!r} is not among the preset's "
                                                 f"choices ({', '.join(choices)}); ControlNet {k} keeps {had}")
                picked.append(value if value in choices else had)
            if (picked[0], picked[1]) != self.chosen[k]:
                self.chosen[k] = (picked[0], picked[1])
                self.refill_due.add(k)
                log.info("ControlNet %d now %s", k, self.describe(k))
        new = [line for key, line in refused.items() if key not in self._refused]
        self._refused = set(refused)
        if new:
            raise ConfigError("; ".join(new))

    def describe(self, k: int) -> str:
        source, preprocessor = self.chosen[k]
        return f"{preprocessor} on {source}"

    def fed_source(self, k: int) -> str | None:
        """The own source whose maps ControlNet k needs now (None: it takes the input, or is off)."""
        source = self.chosen[k][0] if 0 <= k < self.count else CONTROL_FROM_INPUT
        return None if source == CONTROL_FROM_INPUT or k not in self.on else source

    # ---- maps of own sources -------------------------------------------------------------------------

    def set_frame(self, k: int, frame: np.ndarray | torch.Tensor, source: str | None = None) -> Any:
        """The latest map from ControlNet k's own `source` (None: the one chosen, else its first listed),
        rgba_u8 of any size, fitted like the input. It holds until the next one (a source that stops
        leaves its last map in place). Returns the upload's event on CUDA (the host frame may be reused
        once it has happened), else None (copied already)."""
        out = self.own_u8.get((k, source if source is not None else self._own_source(k)))
        if out is None:
            what = "no source of its own" if source is None else f"no source {source!r} in the preset"
            raise ConfigError(f"ControlNet {k} has {what} (its own sources are the preset's load.controlnets[{k}]"
                              f".source choices)")
        frames = as_frame_batch(frame, self.frames, self.height, self.width, any_size=True)
        same_size = frames.shape[1:] == out.shape[1:] and frames.shape[0] in (1, out.shape[0])
        if self._new_upload is not None and frames.device.type == "cpu":
            # CUDA: the copy runs on the upload stream, overlapping the previous frame's compute.
            upload = self._uploads.get(k)
            if upload is None:
                upload = self._uploads[k] = self._new_upload()
            return upload.upload(frames, out.copy_ if same_size else lambda staged: fit_into(staged, out))
        if same_size:
            out.copy_(frames, non_blocking=True)  # one map for all F frames, or one each
            return None
        staging = self._staging.get(k)
        if staging is None or staging.shape != frames.shape:
            staging = self._staging[k] = torch.empty(frames.shape, dtype=torch.uint8, device=self.device)
        staging.copy_(frames, non_blocking=True)
        fit_into(staging, out)
        return None

    def _own_source(self, k: int) -> str | None:
        if not 0 <= k < self.count:
            return None
        chosen = self.chosen[k][0]
        own = [s for s in self.specs[k].sources if s != CONTROL_FROM_INPUT]
        return chosen if chosen != CONTROL_FROM_INPUT else (own[0] if own else None)
