"""The stream batch: one UNet call per frame advances N frames in flight by one step each.

Batch layout, for N = len(t_index_list) steps and F = frame_buffer_size frames per call:
rows [i*F, (i+1)*F) hold slot i, the frames at timestep t_i. Slot 0 is the newest input,
slot N-1 the oldest, which this call finishes. Latency is therefore N-1 calls.

Residual CFG (StreamDiffusion, arXiv 2312.12491, sec. 3.2): the negative-conditioned noise
is replaced by the *virtual residual noise* (x_t - alpha_t * a) / beta_t, where the anchor
`a` is the input latent itself (`self`), or the x0 implied by one real negative UNet pass at
the first step (`initialize`). Each slot carries its anchor with it through the buffer, so
the batch computes exactly what running each frame's N steps one after another would.

An empty batch (after a start or a reset) is primed by its owner, the pipeline, which runs
its whole frame step N times on the first input (engine/core/pipeline.py, `_run_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from engine.core.controlnet import same_rows
from engine.core.schedule import check_t_index_list, slot_coefficients
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.accel.backend import UnetFn
    from engine.core.controlnet import ControlBatch


def check_cfg_type(cfg_type: str, txt2img: bool) -> str:
    """cfg_type is one of scalars.CFG_TYPES (validated there); this is the rule across two fields."""
    if txt2img and cfg_type == "self":
        raise ConfigError("cfg_type 'self' needs an input image; use none, full or initialize for txt2img")
    return cfg_type


def unet_batch_size(cfg_type: str, n: int, f: int) -> int:
    """Rows in one UNet call: N slots of F frames, plus the negatives residual CFG runs for real."""
    return {"full": 2 * n * f, "initialize": (n + 1) * f}.get(cfg_type, n * f)


class StreamBatch:
    """Stream-batch state and math. Every tensor is allocated here, once; `step` only computes.

    Live settings (`set_*`) copy into the existing buffers, so a compiled or graph-captured
    `step` sees them without being rebuilt.
    """

    def __init__(self, unet_fn: UnetFn, scheduler_config: dict, t_index_list: list[int], latent_shape: tuple,
                 frame_buffer_size: int = 1, cfg_type: str = "self", txt2img: bool = False,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 pooled: bool = False, time_ids: tuple[float, ...] | None = None,
                 control: ControlBatch | None = None):
        t_index_list = check_t_index_list(t_index_list)
        if isinstance(frame_buffer_size, bool) or not isinstance(frame_buffer_size, int) or frame_buffer_size < 1:
            raise ConfigError(f"frame_buffer_size must be an integer >= 1, got {frame_buffer_size!r}")
        self.cfg_type = check_cfg_type(cfg_type, txt2img)
        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"unsupported prediction_type {prediction!r}: streamvj supports epsilon, v_prediction")
        self.unet_fn, self.scheduler_config = unet_fn, scheduler_config
        self.v_prediction = prediction == "v_prediction"
        self.txt2img = txt2img
        self.n, self.f = len(t_index_list), frame_buffer_size
        self.device, self.dtype = torch.device(device), dtype
        self.latent_shape = tuple(latent_shape)
        batch, f = self.n * self.f, self.f

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=self.device, dtype=dtype)

        self.t_index_list = t_index_list
        self.timesteps = torch.zeros(batch, device=self.device, dtype=torch.int64)
        self.alpha, self.beta, self.c_skip, self.c_out = (zeros(batch, 1, 1, 1) for _ in range(4))
        self.noise = zeros(batch, *self.latent_shape)
        self.x_buf = zeros(batch - f, *self.latent_shape)  # slots 1..N-1: partly denoised latents
        self.anchor_buf = zeros(batch - f, *self.latent_shape)  # their RCFG anchors
        self.guidance = torch.ones((), device=self.device, dtype=dtype)
        self.delta = torch.ones((), device=self.device, dtype=dtype)
        self.cond: torch.Tensor | None = None
        self.uncond: torch.Tensor | None = None
        self.cond_pooled: torch.Tensor | None = None
        self.uncond_pooled: torch.Tensor | None = None
        self.pooled = pooled
        self.time_ids = None if time_ids is None else torch.tensor(time_ids, device=self.device, dtype=dtype)
        self.control = control  # ControlNets: per-slot maps carried like the anchors (engine/core/controlnet.py)
        self.set_t_index_list(t_index_list)

    # ---- live settings: copy into buffers -------------------------------------------------------

    def set_t_index_list(self, t_index_list: list[int]) -> None:
        values = check_t_index_list(t_index_list)
        if len(values) != self.n:
            raise ConfigError(f"t_index_list has {len(values)} entries; this pipeline was built for {self.n} "
                              f"(changing the step count needs a rebuild)")
        coeffs = slot_coefficients(values, self.scheduler_config)

        def per_row(values_per_slot: torch.Tensor) -> torch.Tensor:
            return values_per_slot.repeat_interleave(self.f)

        self.timesteps.copy_(per_row(coeffs.timesteps))
        for buffer, values_per_slot in ((self.alpha, coeffs.alpha), (self.beta, coeffs.beta),
                                        (self.c_skip, coeffs.c_skip), (self.c_out, coeffs.c_out)):
            buffer.copy_(per_row(values_per_slot).view(-1, 1, 1, 1))
        self.t_index_list = values

    def set_noise(self, noise: torch.Tensor) -> None:
        """The fixed per-row noise (N*F latents): row i*F+j re-noises frame j into slot i."""
        if tuple(noise.shape) != tuple(self.noise.shape):
            raise ConfigError(f"noise must have shape {tuple(self.noise.shape)}, got {tuple(noise.shape)}")
        self.noise.copy_(noise)

    def set_guidance(self, guidance_scale: float, delta: float) -> None:
        self.guidance.fill_(float(guidance_scale))
        self.delta.fill_(float(delta))

    def set_conditioning(self, cond: torch.Tensor, uncond: torch.Tensor | None,
                         cond_pooled: torch.Tensor | None = None, uncond_pooled: torch.Tensor | None = None) -> None:
        """Prompt embeddings (1, tokens, width) expanded over the batch; buffers made on first use."""
        batch = self.n * self.f
        negatives = {"full": batch, "initialize": self.f}.get(self.cfg_type, 0)

        def fill(current: torch.Tensor | None, value: torch.Tensor | None, rows: int) -> torch.Tensor | None:
            if value is None or rows == 0:
                return None
            value = value.to(device=self.device, dtype=self.dtype)
            if current is None or current.shape[1:] != value.shape[1:]:
                current = torch.empty(rows, *value.shape[1:], device=self.device, dtype=self.dtype)
            current.copy_(value.expand(rows, *value.shape[1:]))
            return current

        if negatives and uncond is None:
            raise ConfigError(f"cfg_type {self.cfg_type!r} needs negative prompt embeddings")
        self.cond = fill(self.cond, cond, batch)
        self.uncond = fill(self.uncond, uncond, negatives)
        if self.pooled:
            if cond_pooled is None or (negatives and uncond_pooled is None):
                raise ConfigError("this model (SDXL) needs pooled text embeddings")
            self.cond_pooled = fill(self.cond_pooled, cond_pooled, batch)
            self.uncond_pooled = fill(self.uncond_pooled, uncond_pooled, negatives)

    # ---- the per-frame math ----------------------------------------------------------------------

    def _unet(self, x: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
              pooled: torch.Tensor | None, maps: dict[int, torch.Tensor] | None = None,
              layout: Callable[[torch.Tensor], torch.Tensor] = same_rows) -> torch.Tensor:
        time_ids = None
        if self.time_ids is not None:
            time_ids = self.time_ids.expand(x.shape[0], -1)
        if not maps or self.control is None:
            return self.unet_fn(x, timesteps, hidden, pooled, time_ids)
        residuals = self.control.residuals(maps, layout, x, timesteps, hidden, pooled, time_ids)
        return self.unet_fn(x, timesteps, hidden, pooled, time_ids, residuals=residuals)

    def _to_eps(self, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        # v = alpha*eps - beta*x0  =>  eps = alpha*v + beta*x  (guidance then works in eps space)
        return alpha * out + beta * x if self.v_prediction else out

    def step(self, x_in: torch.Tensor, control_maps: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """One call: x_in (F latents: clean input latents, or noise at t_0 for txt2img) -> F finished latents.

        `control_maps`: ControlNet k -> the newest frames' control maps (F,3,H,W in 0..1), for the
        ControlNets that run this call (the others are not run); they then travel with their frames.

        Pure tensor code (no host sync, no Python branches on tensor values) so it compiles and
        captures; the state update is in-place copies into the preallocated buffers.
        """
        f = self.f
        alpha, beta = self.alpha, self.beta
        x_new = x_in if self.txt2img else alpha[:f] * x_in + beta[:f] * self.noise[:f]
        x = torch.cat([x_new, self.x_buf]) if self.n > 1 else x_new
        cfg = self.cfg_type
        maps = self.control.slot_maps(control_maps) if control_maps and self.control is not None else None
        anchors = None
        if cfg == "self":
            anchors = torch.cat([x_in, self.anchor_buf]) if self.n > 1 else x_in
        if cfg == "full":
            out = self._unet(torch.cat([x, x]), torch.cat([self.timesteps, self.timesteps]),
                             torch.cat([self.uncond, self.cond]),
                             None if self.cond_pooled is None else torch.cat([self.uncond_pooled, self.cond_pooled]),
                             maps, lambda rows: torch.cat([rows, rows]))
            out_u, out_c = out.chunk(2)
            eps_u, eps_c = self._to_eps(out_u, x, alpha, beta), self._to_eps(out_c, x, alpha, beta)
        elif cfg == "initialize":
            out = self._unet(torch.cat([x_new, x]), torch.cat([self.timesteps[:f], self.timesteps]),
                             torch.cat([self.uncond, self.cond]),
                             None if self.cond_pooled is None else torch.cat([self.uncond_pooled, self.cond_pooled]),
                             maps, lambda rows: torch.cat([rows[:f], rows]))
            eps_u_new = self._to_eps(out[:f], x_new, alpha[:f], beta[:f])
            eps_c = self._to_eps(out[f:], x, alpha, beta)
            # One-time negative: the x0 that the real negative pass implies becomes the anchor.
            anchor_new = (x_new - beta[:f] * eps_u_new) / alpha[:f]
            anchors = torch.cat([anchor_new, self.anchor_buf]) if self.n > 1 else anchor_new
        else:
            eps_c = self._to_eps(self._unet(x, self.timesteps, self.cond, self.cond_pooled, maps), x, alpha, beta)
        if cfg in ("self", "initialize"):
            eps_u = self.delta * (x - alpha * anchors) / beta
        if cfg == "none":
            eps = eps_c
        else:
            eps = eps_u + self.guidance * (eps_c - eps_u)
        x0 = self.c_out * (x - beta * eps) / alpha + self.c_skip * x
        if self.n > 1:
            self.x_buf.copy_(alpha[f:] * x0[:-f] + beta[f:] * self.noise[f:])
            if anchors is not None:
                self.anchor_buf.copy_(anchors[:-f])
        if maps:
            self.control.advance(maps)
        return x0[-f:]

    def unet_batch_size(self) -> int:
        return unet_batch_size(self.cfg_type, self.n, self.f)
