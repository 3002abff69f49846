"""StreamPipeline: rgba_u8 in, rgba_u8 out, through VAE encode -> stream batch -> VAE decode.

Everything a frame touches is allocated in `__init__`; live settings copy into those
buffers. A call reads top to bottom (`__call__`): the input (or fresh noise), the FX mode,
the frame step (run N times on the first input to prime an empty stream batch), the output
buffer. The frame step's tensor work (`_frame_step`) is one function, so its backend
(engine/accel/backend.py: eager, compiled, CUDA graphs) runs it with the same result; the
network calls (torch modules or TensorRT engines) are fixed when the pipeline is built.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.accel.backend import FrameStep, allow_compiled_variants, model_calls
from engine.config.schema import LiveParams, LoadSettings
from engine.core.control_maps import CHOICE_FIELDS, LIVE_FIELDS, ControlMaps
from engine.core.controlnet import ControlBatch
from engine.core.fit import fit_into
from engine.core.fx import FxUniforms, feedback_mix, post_fx
from engine.core.pixels import as_frame_batch, img_pm1_to_rgb_u8, rgba_u8_to_img_pm1
from engine.core.prompts import PromptEncoder
from engine.core.seed_noise import SeedNoise
from engine.core.similarity import SimilarityFilter
from engine.core.stream import StreamBatch, unet_batch_size
from engine.core.temporal import TEMPORAL_FIELDS, Temporal
from engine.errors import ConfigError
from engine.models.controlnet import ControlNetParts
from engine.models.family import Family
from engine.models.parts import ModelParts
from engine.realtime.processor import Counters, FrameResult

log = logging.getLogger("streamvj.pipeline")

VAE_FACTOR = 8

# Live fields the pipeline applies together (one setter call per group), for LiveApplier and __init__.
LIVE_GROUPS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "negative_prompt", "prompt_blend", "prompt_interp"),
    "seed": ("seed", "seed_blend"),
    "guidance": ("guidance_scale", "delta"),
    "t_index": ("t_index_list",),
    "similarity": ("similarity_enabled", "similarity_threshold", "similarity_max_skip"),
    "fx": ("fx_feedback", "fx_blend", "fx_brightness", "fx_contrast", "fx_saturation", "fx_hue"),
    "temporal": TEMPORAL_FIELDS,
    "controlnet": LIVE_FIELDS,
    "control_choice": CHOICE_FIELDS,  # apart: a refused choice is said once and holds up no scale change
}


class StreamPipeline:
    """Built for one preset's load settings, starting from its live values (both validated by
    engine/config/schema.py). `backend` is the resolved acceleration: none, compile or tensorrt.
    `fit_input`: accept frames of any size and cover-fit them on the device.
    `controlnets`: load.controlnets, loaded (engine/models/controlnet.py), in the same order."""

    def __init__(self, parts: ModelParts, load: LoadSettings, live: LiveParams, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, backend: str = "none",
                 fit_input: bool = False, rng: random.Random | None = None,
                 controlnets: Sequence[ControlNetParts] = ()):
        self.parts, self.load, self.fit_input = parts, load, fit_input
        self.device, self.dtype = torch.device(device), dtype
        self.txt2img = load.mode == "txt2img"
        f, h, w = load.frame_buffer_size, load.height, load.width
        latent_shape = (parts.unet.config.in_channels, h // VAE_FACTOR, w // VAE_FACTOR)
        if self.device.type == "cuda":
            parts.unet.to(memory_format=torch.channels_last)
        calls = model_calls(parts, backend, width=w, height=h, frame_buffer_size=f, device=self.device,
                            dtype=dtype, txt2img=self.txt2img,
                            unet_batch=unet_batch_size(load.cfg_type, len(live.t_index_list), f),
                            controlnets=[c.model for c in controlnets])
        self._vae_encode, self._vae_decode = calls.vae_encode, calls.vae_decode
        sdxl = parts.family is Family.SDXL
        self.input_u8 = torch.zeros(f, h, w, 4, dtype=torch.uint8, device=self.device)
        self.controls = ControlMaps(load.controlnets, controlnets, live, input_u8=self.input_u8, dtype=dtype,
                                    backend=calls.backend, compile_mode=load.compile_mode)
        self.control = None if not load.controlnets else ControlBatch(
            calls.controlnets, [(s.guidance_start, s.guidance_end) for s in load.controlnets],
            len(live.t_index_list), f, (3, h, w), device=self.device, dtype=dtype)
        self.stream = StreamBatch(
            calls.unet, parts.scheduler_config, list(live.t_index_list), latent_shape,
            frame_buffer_size=f, cfg_type=load.cfg_type, txt2img=self.txt2img, device=self.device,
            dtype=dtype, pooled=sdxl, time_ids=(h, w, 0, 0, h, w) if sdxl else None, control=self.control)
        # Feature bank on the UNet's self-attention (wraps the stream's UNet call), latent feedback, scene cuts.
        self.temporal = Temporal(parts.unet, load, self.stream, latent_shape=latent_shape, device=self.device,
                                 dtype=dtype, backend=calls.backend)
        self.prompts = PromptEncoder(parts, self.device, dtype)
        self.similarity = SimilarityFilter(live.similarity_threshold, live.similarity_max_skip, rng,
                                           enabled=live.similarity_enabled)
        self.counters = Counters()
        # Two output buffers, written in turn: the download of frame k (its own stream) reads
        # one while frame k+1 is written into the other (see engine/accel/device_io.py).
        self._outputs = [torch.full((f, h, w, 4), 255, dtype=torch.uint8, device=self.device) for _ in range(2)]
        self._output_read: list[Any] = [None, None]  # per buffer: the event its last reader recorded
        self._out_index = 0
        self.output_u8 = self._outputs[0]
        self.txt_noise = torch.zeros(f, *latent_shape, device=self.device, dtype=dtype)
        self.fx = FxUniforms(self.device)
        self.fx_last = torch.zeros(f, 3, h, w, device=self.device, dtype=dtype)  # last shown frame, post-FX
        self._fx_on = False
        self._txt_generator = torch.Generator(device=self.device)
        self._vae_scale = float(getattr(parts.vae.config, "scaling_factor", 1.0) or 1.0)
        self._vae_shift = float(getattr(parts.vae.config, "shift_factor", 0.0) or 0.0)
        self._has_output = False
        self.primed = False  # the stream batch holds frames in flight (else the next call primes it)
        self.seeds = SeedNoise(tuple(self.stream.noise.shape), self.device, dtype)
        self._staging: torch.Tensor | None = None  # raw input frames of another size, on the device
        self._uploader = None
        if self.device.type == "cuda":
            from engine.accel.device_io import DeviceUpload

            self._uploader = DeviceUpload(self.device)
        stream = self.stream
        # Prompt buffers are watched (a new token width replaces them); the frames in flight and
        # the FX history are preserved across a CUDA graph capture's warm-up runs.
        self.step = FrameStep(self._frame_step, calls.backend, device=self.device, compile_mode=load.compile_mode,
                              static_inputs=[self.input_u8, self.txt_noise],
                              watch=lambda: (stream.cond, stream.uncond, stream.cond_pooled, stream.uncond_pooled),
                              preserve=lambda: (stream.x_buf, stream.anchor_buf, self.fx_last, *self.temporal.tensors(),
                                                *(self.control.map_buf if self.control else ())))
        self.negative_prompt = live.negative_prompt
        self.guidance_scale, self.delta = live.guidance_scale, live.delta
        for group in LIVE_GROUPS:
            self.apply_live(group, live)

    @property
    def needs_input(self) -> bool:
        return not self.txt2img

    @property
    def backend(self) -> str:
        """What runs each frame after any fallback, e.g. "compile + cuda graphs" (FrameStep.status)."""
        return self.step.status

    # ---- model calls ------------------------------------------------------------------------------

    def encode(self, img_pm1: torch.Tensor) -> torch.Tensor:
        return (self._vae_encode(img_pm1) - self._vae_shift) * self._vae_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(latents / self._vae_scale + self._vae_shift)

    @torch.no_grad()
    def _frame_step(self, input_u8: torch.Tensor, txt_noise: torch.Tensor, fx: bool = False, bank: str = "off",
                    control: tuple[int, ...] = ()) -> torch.Tensor:
        """`fx`, `bank` (the feature bank's mode, which `_run_step` sets on its processors) and `control` (the
        ControlNets that run) are host-side modes: one compiled step and CUDA graph each, made in `warm_up`."""
        if self.txt2img:
            x_in = txt_noise
        else:
            img = rgba_u8_to_img_pm1(input_u8, self.dtype)
            x_in = self.temporal.mix(self.encode(feedback_mix(img, self.fx_last, self.fx.feedback) if fx else img))
        latents = self.stream.step(x_in, self.controls.newest_maps(control))
        self.temporal.keep(latents)
        out = self.decode(latents)
        if fx:
            out = post_fx(out, self.fx_last, self.fx)
            self.fx_last.copy_(out)
        return img_pm1_to_rgb_u8(out)

    def set_control_frame(self, k: int, frame: np.ndarray | torch.Tensor, source: str | None = None) -> Any:
        """The latest map from ControlNet k's own source (engine/core/control_maps.py `set_frame`)."""
        return self.controls.set_frame(k, frame, source)

    # ---- live settings ----------------------------------------------------------------------------

    def set_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        self.set_prompt_blend([(prompt, 1.0)], negative_prompt=negative_prompt)

    def set_prompt_blend(self, prompts: list[tuple[str, float]], method: str = "linear",
                         negative_prompt: str | None = None) -> None:
        """Weighted prompt mix; only texts not in the cache are encoded. Applies on the next frame."""
        if negative_prompt is not None:
            self.negative_prompt = negative_prompt
        cond = self.prompts.blend(prompts, method)
        uncond = self.prompts.encode(self.negative_prompt)
        self.stream.set_conditioning(cond.hidden, uncond.hidden, cond.pooled, uncond.pooled)

    def set_seed(self, seed: int) -> None:
        self.set_seed_blend([(seed, 1.0)])

    def set_seed_blend(self, seeds: list[tuple[int, float]]) -> None:
        """Noise from one seed or a slerp of several (engine/core/seed_noise.py: each drawn once)."""
        mixed = self.seeds.mix(seeds)
        self.stream.set_noise(mixed)
        self._txt_generator.manual_seed(seeds[0][0])

    def set_guidance(self, guidance_scale: float, delta: float | None = None) -> None:
        self.guidance_scale = float(guidance_scale)
        self.delta = self.delta if delta is None else float(delta)
        self.stream.set_guidance(self.guidance_scale, self.delta)

    def set_t_index_list(self, t_index_list: list[int]) -> None:
        self.stream.set_t_index_list(t_index_list)

    def set_similarity(self, enabled: bool, threshold: float, max_skip: int) -> None:
        self.similarity.configure(threshold, max_skip)
        if enabled and not self.similarity.enabled:
            self.similarity.reset()  # its reference frame is stale after a pause
        self.similarity.enabled = bool(enabled)

    def apply_live(self, group: str, live: LiveParams) -> None:
        """Apply one of LIVE_GROUPS from `live` (values already validated by the schema)."""
        if group == "prompt":
            blend = [(text, float(w)) for text, w in live.prompt_blend] or [(live.prompt, 1.0)]
            self.set_prompt_blend(blend, live.prompt_interp, negative_prompt=live.negative_prompt)
        elif group == "seed":
            self.set_seed_blend([(int(s), float(w)) for s, w in live.seed_blend] or [(live.seed, 1.0)])
        elif group == "guidance":
            self.set_guidance(live.guidance_scale, live.delta)
        elif group == "t_index":
            self.set_t_index_list(list(live.t_index_list))
        elif group == "fx":
            self.fx.update({name: getattr(live, name) for name in LIVE_GROUPS["fx"]})
        elif group == "similarity":
            self.set_similarity(live.similarity_enabled, live.similarity_threshold, live.similarity_max_skip)
        elif group == "temporal":
            self.temporal.apply(live)
        elif group == "controlnet":
            self.controls.set_live(live, self.control)
        elif group == "control_choice":
            self.controls.choose(live)
        else:
            raise ValueError(f"unknown live group {group!r}: groups are {', '.join(LIVE_GROUPS)}")

    def warm_up(self) -> float:
        """Run the frame step now, with and without FX, on a black frame; returns the seconds taken.

        torch.compile compiles, CUDA graphs capture and libraries do their lazy setup
        (cuDNN algorithm search, TensorRT contexts) on a step's first run. Done here, on the
        thread that builds the pipeline, the render thread never freezes for them: not on
        the first frame after a preset switch, nor when a VJ first turns an FX knob. The
        pipeline then forgets these frames: frames in flight, FX history, counters.
        Runs in the same grad mode as `__call__`: torch.compile guards on it, and a
        mismatch would recompile on air.
        """
        started = time.monotonic()
        if self.step.backend == "compile":
            log.info("warming up: torch.compile compiles the frame step now (minutes on a first run)")
        if not self.txt2img:
            self._upload(torch.zeros(self.input_u8.shape, dtype=torch.uint8))  # through the upload path
        self.controls.warm_up()  # the map step of every listed source and preprocessor
        # Eager steps need one run (lazy library setup); compiled or graphed ones one per ControlNet subset and
        # feature bank mode, so switching either on air never compiles or captures.
        every = self.step.backend != "none" or self.step.graphed
        variants = [(control, bank, fx) for control in (self.controls.variants() if every else [self.controls.on])
                    for bank in (self.temporal.modes() if every else [None]) for fx in (False, True)]
        if every:
            # Past dynamo's recompile limit a new variant would run eagerly, silently, on air.
            allow_compiled_variants(len(variants))
            log.info("warming up %d frame-step variants (%d ControlNet subset(s) x %d feature bank mode(s) x FX "
                     "off/on)", len(variants), len(self.controls.variants()), len(self.temporal.modes()))
        for control, bank, fx in variants:
            self._run_step(fx, control, bank)
        self.primed = False
        self.counters.unet_calls = 0
        self.fx_last.zero_()
        self.similarity.reset()
        self.temporal.reset()
        self._fx_on = self._has_output = False
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # build thread only: ready means ready
        return time.monotonic() - started

    def reset(self) -> None:
        """Drop frames in flight and the filter's reference; the next frame re-primes the batch."""
        self.primed = False
        self.similarity.reset()
        self.temporal.reset()
        self._fx_on = False

    # ---- per frame --------------------------------------------------------------------------------

    def _similarity_sample(self, frames: torch.Tensor) -> torch.Tensor:
        # Every 8th pixel of RGB: enough to tell a static scene, cheap on the host before upload.
        return frames[:, ::8, ::8, :3]

    def __call__(self, frame: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """One frame (H,W,4) or F frames (F,H,W,4) of rgba_u8 -> the output rgba_u8, same layout.

        The returned tensor is one of this pipeline's two output buffers, used in turn: copy
        (or send) it before the next call but one. txt2img takes no input.
        """
        return self.process(frame).output

    def process(self, frame: np.ndarray | torch.Tensor | None = None) -> FrameResult:
        """`__call__` as the runtime calls it (engine/realtime/processor.py): the output, whether the
        similarity filter skipped the model, and the host time of the input stage ("preprocess")."""
        started = time.perf_counter()
        self.counters.frames_in += 1
        # 1. The input: fresh noise (txt2img), or the frames unless the similarity filter skips them.
        if self.txt2img:
            torch.randn(self.txt_noise.shape, generator=self._txt_generator, out=self.txt_noise)
        else:
            if frame is None:
                raise ConfigError("img2img needs an input frame")
            load = self.load
            frames = as_frame_batch(frame, load.frame_buffer_size, load.height, load.width, any_size=self.fit_input)
            if self.similarity.enabled and self.similarity.should_skip(self._similarity_sample(frames)) \
                    and self._has_output:
                self.counters.skipped += 1
                return FrameResult(self._result(frame), True, {"preprocess": time.perf_counter() - started})
            self.temporal.observe(self._similarity_sample(frames))  # a scene cut clears the bank and feedback
            self._upload(frames)
        prepared = time.perf_counter()
        # 2. FX run only when some uniform is off neutral (decided on the host from Python floats).
        fx = not self.fx.is_identity()
        if fx and not self._fx_on:
            # Seed the feedback history from what is on screen, never from black.
            seed = self.output_u8 if self._has_output else self.input_u8
            self.fx_last.copy_(rgba_u8_to_img_pm1(seed, self.dtype))
        self._fx_on = fx
        # 3. Encode -> stream batch -> decode -> FX, priming an empty batch first.
        rgb = self._run_step(fx)
        # 4. Into the output buffer the previous frame's reader is not using.
        i = 1 - self._out_index
        read, self._output_read[i] = self._output_read[i], None
        if read is not None and self.device.type == "cuda":
            # The download of the frame two calls back must have read this buffer first.
            torch.cuda.current_stream(self.device).wait_event(read)
        self._outputs[i][..., :3].copy_(rgb)
        self._out_index, self.output_u8 = i, self._outputs[i]
        self._has_output = True
        self.counters.frames_out += 1
        return FrameResult(self._result(frame), False, {"preprocess": prepared - started})

    def _run_step(self, fx: bool, control: tuple[int, ...] | None = None,
                  bank: str | None = None) -> torch.Tensor:
        """The frame step on the current input. The first call after a start or reset primes: it
        runs the step N times on that input, so every slot of the stream batch holds the frame at
        its own timestep and the very first output is a finished image, not the decoded empty
        buffer ("brown frames")."""
        # Modes: FX, the feature bank's (None: what the live values ask for), the ControlNets that run (if any).
        bank = self.temporal.bank_mode(priming=not self.primed, mode=bank)
        # The ControlNets that run are a mode of pipelines that have any; their maps are made here, once a frame.
        control = None if self.control is None else self.controls.prepare(control, self.control, self.primed)
        modes = (fx, bank) if control is None else (fx, bank, control)
        for _ in range(1 if self.primed else self.stream.n):
            rgb = self.step.run(self.input_u8, self.txt_noise, *modes)
            self.counters.unet_calls += 1
        self.primed = True
        self.temporal.stepped()
        return rgb

    def output_read(self, output: torch.Tensor, event: Any) -> bool:
        """A reader on another CUDA stream (the runtime's download) is reading `output`, one of
        this pipeline's results, until `event`: the buffer is not rewritten before it.
        False if `output` is not this pipeline's (the caller must then order the reuse itself)."""
        ptr = output.untyped_storage().data_ptr()
        for i, buffer in enumerate(self._outputs):
            if buffer.untyped_storage().data_ptr() == ptr:
                self._output_read[i] = event
                return True
        return False

    def _upload(self, frames: torch.Tensor) -> None:
        """Host (or device) frames into `input_u8`; other sizes are uploaded raw and fitted on the device."""
        if self._uploader is not None and frames.device.type == "cpu":
            # CUDA: the copy runs on the upload stream, overlapping the previous frame's compute.
            if frames.shape == self.input_u8.shape:
                self._uploader.upload(frames, self.input_u8.copy_)
            else:
                self._uploader.upload(frames, lambda staged: fit_into(staged, self.input_u8))
            return
        if frames.shape == self.input_u8.shape:
            self.input_u8.copy_(frames, non_blocking=True)
            return
        if self._staging is None or self._staging.shape != frames.shape:
            self._staging = torch.empty(frames.shape, dtype=torch.uint8, device=self.device)  # on size change only
        self._staging.copy_(frames, non_blocking=True)
        fit_into(self._staging, self.input_u8)

    def _result(self, frame: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        single = frame is None and self.load.frame_buffer_size == 1 or frame is not None and frame.ndim == 3
        return self.output_u8[0] if single else self.output_u8
