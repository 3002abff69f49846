"""Acceleration policy in one place: which backend a preset gets, how it runs, where it falls back.

A preset asks for `acceleration` (engine/config/schema.py: auto, none, compile, tensorrt);
`select_backend` resolves it for the device. A pipeline then gets its network calls from
`model_calls` (the torch modules, or TensorRT engines in their place) and runs its frame
step through a `FrameStep` (eager, compiled, and on CUDA replayed from CUDA graphs). The
fallback chain, each link logged once, so the show always goes on:

    tensorrt ──(library missing, no GPU)──────────────► compile on CUDA, eager on a CPU
    tensorrt ──(engine build fails, any error)────────► compile (torch modules, same pipeline)
    compile  ──(no working compiler, on the 1st frame)─► eager, for good
    CUDA graph capture fails ──────────────────────────► the same step without a graph

`FrameStep.status` says what actually runs after these fallbacks ("compile + cuda graphs",
"eager (compile failed)"...), for the status line and OSC feedback.

Devices: `auto` is CUDA when torch sees an NVIDIA GPU, else Apple's MPS (Metal, Apple silicon)
when torch has it, else the CPU. On MPS: float16 by default (Apple GPUs run it natively;
bfloat16 needs macOS 14 there and not every op has it); eager by default, because
inductor's Metal backend calls itself "an early prototype" in the torch streamvj pins
(`acceleration: compile` still tries it, and a failure on the first frame falls back to eager
as everywhere); no CUDA graphs and no TensorRT (NVIDIA only).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.accel.compile_cache import broken_cache_entry, enable_compile_cache, log_compiles
from engine.accel.cuda_graphs import CUDA_GRAPHS, CudaGraphs, GraphedStep, Watch
from engine.accel.trt_engine import tensorrt_status
from engine.errors import ConfigError, first_line

log = logging.getLogger("streamvj.backend")

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
# Every preset shape (size, steps, cfg, model) compiles the frame step once per FX mode, all on
# one code object; dynamo's default limit of 8 would silently leave a show's 5th shape eager.
COMPILED_VARIANTS = 64

# unet(latents, timesteps, hidden, pooled_or_None, time_ids_or_None[, residuals=(down, mid)]) -> model output;
# `residuals` (ControlNets', engine/core/controlnet.py) is passed only when a ControlNet runs.
UnetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
                  torch.Tensor]


# ---- choice -------------------------------------------------------------------------------------------


def mps_available() -> bool:
    """Whether torch can run on Apple's GPU here (an Apple silicon Mac, a torch built with MPS)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built() and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """A preset's `device`: auto picks CUDA, then MPS, then the CPU; an explicit GPU must be there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        other = "device: mps (this Mac's GPU) or device: cpu" if mps_available() else "device: cpu"
        raise ConfigError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU "
                          f"(install a CUDA build of torch, or set {other})")
    if device.type == "mps" and not mps_available():
        mps = getattr(torch.backends, "mps", None)
        why = ("this torch build has no MPS backend (PyPI's macOS build has it)" if mps is None or not mps.is_built()
               else "torch sees no Metal GPU (MPS needs an Apple silicon Mac and macOS 12.3 or later)")
        raise ConfigError(f"device 'mps' was asked for, but {why}; set device: auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # CPU half-precision kernels run 10-100x slower than fp32; GPUs (CUDA, Apple's MPS) want fp16.
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name == "bfloat16" and device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise ConfigError("dtype bfloat16 on mps needs macOS 14 or later (torch's MPS backend); "
                          "use float16, what dtype: auto picks on mps")
    return DTYPES[name]


def select_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """("tensorrt" | "compile" | "none", reason) for a preset's `acceleration` on `device`.

    TensorRT is chosen only when the library imports and the device is CUDA (an engine build
    that fails falls back later, in `model_calls`). Otherwise: on CUDA, torch.compile + CUDA
    graphs; on a CPU, eager (compiling there takes minutes per graph for little gain,
    matching what `auto` does); on MPS, eager (inductor's Metal backend is a prototype).
    `compile` and `none` are honoured as asked.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if requested == "none":
        return "none", "acceleration off: eager PyTorch"
    if requested == "compile":
        if cuda:
            return "compile", "torch.compile with CUDA graphs"
        if device.type == "mps":
            return "compile", "torch.compile (inductor's Metal backend, a prototype: eager if it fails)"
        return "compile", "torch.compile (inductor, CPU)"
    if cuda:
        fallback = ("compile", "torch.compile with CUDA graphs")
    elif device.type == "mps":
        fallback = ("none", "eager PyTorch on Apple's GPU (torch.compile's Metal backend is a prototype; "
                            "acceleration: compile tries it)")
    else:
        fallback = ("none", "eager PyTorch")
    explicit = requested == "tensorrt"  # "auto" falling back is expected, not worth a warning

    def fall_back(why: str) -> tuple[str, str]:
        reason = f"{why}; using {fallback[1]}"
        (log.warning if explicit else log.info)("acceleration %s: %s", requested, reason)
        return fallback[0], reason

    if not cuda:
        return fall_back(f"TensorRT needs an NVIDIA GPU (device is {device})")
    ok, detail = tensorrt_status()
    if not ok:
        return fall_back(detail)
    return "tensorrt", f"TensorRT {detail} engines"


def resolve_acceleration(name: str, device: torch.device) -> str:
    """The backend a preset's `acceleration` gets on `device`, logged with the reason."""
    backend, reason = select_backend(name, device)
    log.info("acceleration %s on %s: %s", name, device, reason)
    return backend


# ---- the network calls ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCalls:
    """How a pipeline runs its networks; fixed when the pipeline (and its stream batch) is built."""

    unet: UnetFn
    vae_encode: Callable[[torch.Tensor], torch.Tensor]  # img_pm1 -> latents as the VAE emits them
    vae_decode: Callable[[torch.Tensor], torch.Tensor]  # latents as the VAE takes them -> img_pm1
    backend: str  # the backend these realise: "tensorrt", or the one asked for when TensorRT fell back
    # One per ControlNet: (latents, timesteps, hidden, maps, pooled, time_ids) -> (down residuals, mid)
    controlnets: tuple[Callable[..., Any], ...] = ()


def torch_calls(parts: Any, backend: str, controlnets: Sequence[torch.nn.Module] = ()) -> ModelCalls:
    """The diffusers modules themselves (eager, or compiled as part of the frame step)."""
    unet, vae = parts.unet, parts.vae

    def run_unet(x, timesteps, hidden, pooled, time_ids, residuals=None):
        added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
        # Residual keywords only with ControlNets: without them the call is exactly the plain UNet call.
        extra = {} if residuals is None else {"down_block_additional_residuals": residuals[0],
                                              "mid_block_additional_residual": residuals[1]}
        return unet(x, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False,
                    **extra)[0]

    def controlnet_call(controlnet: torch.nn.Module) -> Callable[..., Any]:
        def run(x, timesteps, hidden, maps, pooled, time_ids):
            added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
            return controlnet(x, timesteps, encoder_hidden_states=hidden, controlnet_cond=maps,
                              added_cond_kwargs=added, return_dict=False)
        return run

    def encode(img_pm1: torch.Tensor) -> torch.Tensor:
        encoded = vae.encode(img_pm1)
        # AutoencoderTiny returns latents directly; AutoencoderKL a distribution (its mode is deterministic).
        return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mode()

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents, return_dict=False)[0]

    return ModelCalls(run_unet, encode, decode, backend, tuple(controlnet_call(c) for c in controlnets))


def model_calls(parts: Any, backend: str, *, width: int, height: int, unet_batch: int, frame_buffer_size: int,
                device: torch.device, dtype: torch.dtype, txt2img: bool,
                controlnets: Sequence[torch.nn.Module] = ()) -> ModelCalls:
    """TensorRT engines for `backend == "tensorrt"` (built once, then cached), else the torch modules.

    An engine build that fails in any way (a TensorRT version whose API moved raises whatever
    it raises) falls back to torch.compile with CUDA graphs on the same modules, ControlNets
    included. With ControlNets, each gets an engine of its own and the UNet engine takes their
    residuals as inputs; the ControlNet calls have `torch_calls`' signature. Their preprocessors
    (canny, depth) stay torch, in the pipeline's map step."""
    if backend != "tensorrt":
        return torch_calls(parts, backend, controlnets)
    from engine.accel.trt_components import build_trt_components

    try:
        trt = build_trt_components(parts, width=width, height=height, unet_batch=unet_batch,
                                   frame_buffer_size=frame_buffer_size, device=device, dtype=dtype, txt2img=txt2img,
                                   controlnets=controlnets)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a TensorRT version raises, the show falls back
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("TensorRT build failed (%s: %s); using torch.compile with CUDA graphs", type(exc).__name__, reason)
        return torch_calls(parts, "compile", controlnets)
    encoder = trt.vae_encoder
    return ModelCalls(trt.unet, encoder if encoder is not None else _no_encoder, trt.vae_decoder, "tensorrt",
                      trt.controlnets)


def _no_encoder(img_pm1: torch.Tensor) -> torch.Tensor:
    raise ConfigError("this pipeline was built for txt2img: its TensorRT engines have no VAE encoder")


# ---- the frame step ------------------------------------------------------------------------------------


def torch_compile_mode(compile_mode: str) -> str | None:
    """A preset's compile_mode (scalars.COMPILE_MODES) as torch.compile's `mode`: torch's default, or
    inductor's variant of that mode without its own CUDA graphs ("max-autotune-no-cudagraphs"):
    FrameStep captures the whole frame step, FX modes included, itself."""
    return None if compile_mode == "default" else f"{compile_mode}-no-cudagraphs"


def allow_compiled_variants(count: int) -> None:
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, count)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * count)


def _import_inductor_quietly() -> None:
    # torch.compile's first use imports inductor, which imports torch.utils.mkldnn, whose
    # ScriptModules warn "torch.jit.script_method is deprecated" 14 times: torch's own code,
    # nothing streamvj calls. Imported here once, with exactly that warning silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                category=DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401


class FrameStep:
    """A pipeline's per-frame step `fn(*static_inputs, *mode)` as its backend runs it.

    - `compile`: under torch.compile, which compiles lazily, on the first frame. A machine
      without a working Triton (common on Windows) or C++ compiler fails there, not at build
      time; the failure is logged once and the same step runs eagerly for good (it happens
      before any of the step's state is written).
    - on CUDA with any backend but `none`: replayed from CUDA graphs (engine/accel/cuda_graphs.py),
      one launch per frame; a capture that fails leaves the step running without a graph.
    `static_inputs`, `watch` and `preserve` are GraphedStep's (the buffers the step reads, the
    ones a live change may replace, and the frames in flight a capture must not advance).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], backend: str, *, device: torch.device | str,
                 static_inputs: Sequence[torch.Tensor], compile_mode: str = "default",
                 watch: Watch | None = None, preserve: Watch | None = None):
        self.fn, self.backend, self.device = fn, backend, torch.device(device)
        self.static_inputs, self.watch, self.preserve = list(static_inputs), watch, preserve
        self.compile_error: str | None = None
        self._run = fn
        if backend == "compile":
            allow_compiled_variants(COMPILED_VARIANTS)
            # Before the first compile: a restart reuses what earlier runs compiled (any preset, any size).
            enable_compile_cache()
            log_compiles()
            _import_inductor_quietly()
            compiled = torch.compile(fn, dynamic=False, fullgraph=False, mode=torch_compile_mode(compile_mode))
            self._run = self._compiled_or_eager(compiled)
        self.graphed: GraphedStep | None = None
        # What a frame calls: the graphed step, or the compiled-or-eager one (no wrapper in between).
        self.run: Callable[..., torch.Tensor] = self._run
        if self.device.type == "cuda" and backend != "none":
            self.use_graphs(CUDA_GRAPHS)

    def _compiled_or_eager(self, compiled: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        from torch._dynamo.exc import TorchDynamoException

        def step(*args: Any) -> torch.Tensor:
            if self.compile_error is None:
                try:
                    return compiled(*args)
                except TorchDynamoException as exc:
                    broken = broken_cache_entry(exc)
                    if broken is not None:  # a compile cut short left it: remove it, compile once more
                        log.warning("torch.compile cache: %s (%d bytes) cannot be loaded (%s); removed, compiling "
                                    "it again", broken, broken.stat().st_size, first_line(exc))
                        broken.unlink(missing_ok=True)
                        try:
                            return compiled(*args)
                        except TorchDynamoException as again:
                            exc = again
                    self.compile_error = first_line(exc)
                    log.warning("torch.compile failed (%s); running this pipeline eagerly (slower). On Windows, "
                                "install Triton (pip install triton-windows) for compile on a GPU",
                                self.compile_error)
            return self.fn(*args)

        return step

    def use_graphs(self, graphs: CudaGraphs | None = CUDA_GRAPHS) -> GraphedStep | None:
        """Replay the step from CUDA graphs (captured on the next call), or run it without (None).

        `graphs` is the object capture and replay go through: CUDA's, or a test's emulator.
        Live settings reach a graph because they are copied into the captured buffers."""
        if self.graphed is not None:
            self.graphed.release()
        self.graphed = None if graphs is None else GraphedStep(
            self._run, self.static_inputs, watch=self.watch, preserve=self.preserve, backend=graphs)
        self.run = self._run if self.graphed is None else self.graphed
        return self.graphed

    def __call__(self, *args: Any) -> torch.Tensor:
        return self.run(*args)

    @property
    def status(self) -> str:
        """What actually runs each frame, e.g. "compile + cuda graphs", "eager (compile failed)".

        The preset asks for a backend; this says what it got after fallbacks, for the status
        line and OSC feedback (a compile that failed on a Windows box shows here, not only
        in a log line scrolled away)."""
        if self.backend == "tensorrt":
            name = "tensorrt"
        elif self.backend == "compile":
            name = "eager (compile failed)" if self.compile_error else "compile"
        else:
            name = "eager"
        graphed = self.graphed
        if graphed is not None and graphed.captured:
            name += " + cuda graphs"
        elif graphed is not None and (graphed.fallback_reason or "").startswith("capture failed"):
            name += " (cuda graph capture failed)"
        return name
