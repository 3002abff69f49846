"""ControlNets in the stream batch: each slot carries the control map of the frame it holds.

The stream batch (engine/core/stream.py) advances N frames in flight by one step per call.
For a ControlNet to guide each frame by *its own* map, slot 0 takes the map made from the
newest frame and slots 1..N-1 take the maps that travelled with theirs, exactly as the RCFG
anchors travel: after the call, the maps of slots 0..N-2 move on to slots 1..N-1.

Scales and guidance windows are per batch row: row r of slot i is scaled by
`scale * keep(i)`, where keep(i) is 1 when step i of N lies in [guidance_start,
guidance_end] (diffusers' rule: i/N >= start and (i+1)/N <= end). A live scale change is
one `mul` into that preallocated buffer. A slot outside the window, or a scale of 0, adds
residuals multiplied by exactly 0: the UNet's result is the same as without a ControlNet,
bit for bit (x + 0 == x). A ControlNet switched off is not run at all: which ones run is
decided on the host (the pipeline's step variants), never by a tensor branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

# controlnet(latents, timesteps, hidden, control_maps (B,3,H,W in 0..1), pooled, time_ids) -> (down residuals, mid)
ControlNetFn = Callable[..., tuple[Sequence[torch.Tensor], torch.Tensor]]
Residuals = tuple[list[torch.Tensor], torch.Tensor]
Layout = Callable[[torch.Tensor], torch.Tensor]


def keep_per_slot(n: int, start: float, end: float) -> list[float]:
    """1.0 for the steps of N inside the guidance window [start, end] (fractions of the steps), else 0.0."""
    return [0.0 if (i / n < start or (i + 1) / n > end) else 1.0 for i in range(n)]


def same_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows


class ControlBatch:
    """Per-slot control maps and per-row scales for K ControlNets; every tensor allocated here, once."""

    def __init__(self, controlnets: Sequence[ControlNetFn], windows: Sequence[tuple[float, float]], n: int, f: int,
                 map_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if len(controlnets) != len(windows):
            raise ValueError(f"{len(controlnets)} ControlNets but {len(windows)} guidance windows")
        self.calls, self.n, self.f = list(controlnets), n, f
        self.map_shape = tuple(map_shape)
        rows = n * f
        self.map_buf = [torch.zeros(rows - f, *self.map_shape, device=device, dtype=dtype) for _ in self.calls]
        self.keep = [torch.tensor(keep_per_slot(n, start, end), device=device, dtype=dtype)
                     .repeat_interleave(f).view(-1, 1, 1, 1) for start, end in windows]
        self.scale_rows = [keep.clone() for keep in self.keep]  # scale 1 until set_scale

    def __len__(self) -> int:
        return len(self.calls)

    def set_scale(self, k: int, scale: float) -> None:
        torch.mul(self.keep[k], float(scale), out=self.scale_rows[k])

    def slot_maps(self, new_maps: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """ControlNet k -> its maps for all N*F rows: the newest frame's (F rows) first, then the carried ones."""
        if self.n == 1:
            return dict(new_maps)
        return {k: torch.cat([new.to(self.map_buf[k].dtype), self.map_buf[k]]) for k, new in new_maps.items()}

    def residuals(self, maps: Mapping[int, torch.Tensor], layout: Layout, x: torch.Tensor, timesteps: torch.Tensor,
                  hidden: torch.Tensor, pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> Residuals:
        """The scaled, summed residuals for one UNet call; `layout` maps slot rows to that call's rows
        (e.g. twice over for full CFG, whose negative half is guided by the same maps)."""
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for k, slot_maps in maps.items():
            k_down, k_mid = self.calls[k](x, timesteps, hidden, layout(slot_maps), pooled, time_ids)
            scale = layout(self.scale_rows[k])
            if down is None or mid is None:
                down, mid = [r * scale for r in k_down], k_mid * scale
            else:
                down = [total + r * scale for total, r in zip(down, k_down)]
                mid = mid + k_mid * scale
        if down is None or mid is None:
            raise ValueError("residuals need at least one ControlNet's maps")
        return down, mid

    def refill(self, k: int, new: torch.Tensor) -> None:
        """Every frame in flight takes `new` (F maps) as ControlNet k's map: after a switch, when the maps
        they carry were never made (k was off) or made from another source or preprocessor."""
        carried = self.map_buf[k]
        if carried.shape[0]:
            carried.view(self.n - 1, *new.shape).copy_(new)

    def advance(self, maps: Mapping[int, torch.Tensor]) -> None:
        """After the call: slots 0..N-2's maps move on with their frames to slots 1..N-1."""
        if self.n > 1:
            for k, slot_maps in maps.items():
                self.map_buf[k].copy_(slot_maps[:-self.f])
