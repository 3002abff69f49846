"""TensorRT engines: built from ONNX (with progress) and run (engine/accel/trt_components.py
builds the UNet, VAE and ControlNet ones a pipeline uses, through the on-disk cache).

The runtime side is built for a frame loop: every engine input/output is a torch CUDA
tensor allocated once and bound once (`set_tensor_address`); a call copies inputs into
those buffers only when they are not already those buffers, and enqueues on the current
torch stream (`execute_async_v3`), with no host sync. (The reference StreamDiffusion
reallocates its TensorRT buffers on every call and synchronizes every frame.) On the legacy
default stream TensorRT would add `cudaStreamSynchronize` calls around each enqueue, so
there the engine runs on its own side stream, ordered by events. Because nothing is
allocated and nothing syncs, an engine call can sit inside a captured CUDA graph
(`engine.accel.cuda_graphs.GraphedStep`).

`tensorrt` is imported lazily: without it, engine/accel/backend.py falls back to the
torch.compile / CUDA-graph path and says why, naming `pip install 'streamvj[tensorrt]'`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.accel.onnx_export import CONTROL_MAP, MID_RESIDUAL, down_residual
from engine.errors import ConfigError, StreamVJError

log = logging.getLogger("streamvj.trt_engine")

INSTALL_HINT = "pip install 'streamvj[tensorrt]'"
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
SDXL_INPUTS = ("text_embeds", "time_ids")


class TensorRTUnavailable(StreamVJError):
    """The tensorrt package is missing or its libraries do not load."""


class TrtBuildError(StreamVJError):
    """An engine could not be built or loaded; the fallback path is used instead."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its CUDA libraries are not
        raise TensorRTUnavailable(f"TensorRT is not available ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                                  f"install it with: {INSTALL_HINT}") from None
    return tensorrt


def tensorrt_status() -> tuple[bool, str]:
    """(importable, version or the one-line reason it is not)."""
    try:
        return True, str(import_tensorrt().__version__)
    except TensorRTUnavailable as exc:
        return False, str(exc)


# ---- build ------------------------------------------------------------------------------------------

_TRT_LOGGER: Any = None
_TRT_LOGGER_LOCK = threading.Lock()  # pipelines are built on background threads


def _trt_logger(trt: Any) -> Any:
    """One process-wide logger (TensorRT requires it to outlive every builder/runtime, and warns
    when a second one is passed)."""
    global _TRT_LOGGER
    with _TRT_LOGGER_LOCK:
        if _TRT_LOGGER is None:
            _TRT_LOGGER = _make_trt_logger(trt)
    return _TRT_LOGGER


def _make_trt_logger(trt: Any) -> Any:
    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind trampolines need the base __init__

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity)
            if level is not None:
                logging.getLogger("streamvj.tensorrt").log(level, "%s", msg)

    return _Logger()


class BuildProgress:
    """Turns TensorRT's phase/step callbacks into log lines (thread-safe; TensorRT calls from its threads).

    Top-level and second-level phases log at INFO with their step counts; steps log at most
    every `interval_s` per phase, so a 10-minute build shows it is alive without flooding.
    Returning False from `step_complete` asks TensorRT to cancel (a hot preset switch).
    """

    def __init__(self, cancel: threading.Event | None = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.cancel, self.interval_s, self.clock = cancel, interval_s, clock
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float, float]] = {}  # name -> steps, depth, start, last log

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self._phases[parent_phase][1] + 1 if parent_phase in self._phases else 0
            now = self.clock()
            self._phases[phase_name] = (num_steps, depth, now, now)
        level = logging.INFO if depth <= 1 else logging.DEBUG
        log.log(level, "TensorRT build: %s%s (%d step%s)", "  " * depth, phase_name, num_steps,
                "" if num_steps == 1 else "s")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            info = self._phases.get(phase_name)
            now = self.clock()
            due = info is not None and info[1] <= 1 and now - info[3] >= self.interval_s
            if due:
                self._phases[phase_name] = (info[0], info[1], info[2], now)
        if due:
            log.info("TensorRT build: %s%s %d/%d", "  " * info[1], phase_name, step + 1, info[0])
        return not (self.cancel is not None and self.cancel.is_set())

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            info = self._phases.pop(phase_name, None)
        if info is not None:
            level = logging.INFO if info[1] <= 1 else logging.DEBUG
            log.log(level, "TensorRT build: %s%s done in %.1f s", "  " * info[1], phase_name, self.clock() - info[2])


def _progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()


def network_flags(trt: Any) -> tuple[int, bool]:
    """(create_network flags, strongly_typed) for this TensorRT version.

    TensorRT 11 removed the weak-typing precision flags (BuilderFlag.FP16): networks are
    strongly typed, precision comes from the ONNX graph, so the graph must be exported in
    float16 for a float16 engine. TensorRT 10 keeps the FP16 flag, which we use there as
    the reference demos do. TensorRT < 10 also needs EXPLICIT_BATCH.
    """
    flag = trt.NetworkDefinitionCreationFlag
    strongly_typed = not hasattr(trt.BuilderFlag, "FP16")
    flags = 0
    if strongly_typed and hasattr(flag, "STRONGLY_TYPED"):
        flags |= 1 << int(flag.STRONGLY_TYPED)
    if int(str(trt.__version__).split(".")[0]) < 10 and hasattr(flag, "EXPLICIT_BATCH"):
        flags |= 1 << int(flag.EXPLICIT_BATCH)
    return flags, strongly_typed


def build_engine(onnx_path: str | Path, fp16: bool = True, workspace_bytes: int | None = None,
                 optimization_level: int | None = None, cancel: threading.Event | None = None) -> Any:
    """Build a static-shape engine from an ONNX file; returns the serialized engine (a buffer)."""
    trt = import_tensorrt()
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    started = time.monotonic()
    log.info("TensorRT %s: parsing %s", trt.__version__, Path(onnx_path).name)
    if not parser.parse_from_file(str(onnx_path)):  # from a file, so >2 GB external weights are found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
        raise TrtBuildError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            raise TrtBuildError(f"input {tensor.name} has a dynamic shape {tuple(tensor.shape)}; export with fixed shapes")
        if strongly_typed and fp16 and tensor.dtype == trt.float32 and tensor.name != "timestep":
            log.warning("TensorRT %s builds strongly typed: %s is float32, so the engine will be float32 "
                        "(export the model in float16 for a float16 engine)", trt.__version__, tensor.name)
    config = builder.create_builder_config()
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    monitor = None
    if hasattr(trt, "IProgressMonitor"):
        monitor = _progress_monitor(trt, BuildProgress(cancel))
        config.progress_monitor = monitor
    else:
        log.info("TensorRT %s has no progress monitor: building without step updates (often several minutes)",
                 trt.__version__)
    log.info("TensorRT: building %s engine from %s", "fp16" if fp16 else "fp32", Path(onnx_path).name)
    serialized = builder.build_serialized_network(network, config)
    del monitor  # TensorRT may call it until the build returns; released only now
    if serialized is None:
        if cancel is not None and cancel.is_set():
            raise TrtBuildError("TensorRT build cancelled")
        raise TrtBuildError(f"TensorRT could not build {Path(onnx_path).name} (see the TensorRT errors above)")
    log.info("TensorRT: built %s in %.0f s (%.1f MB)", Path(onnx_path).name, time.monotonic() - started,
             serialized.nbytes / 1e6)
    return serialized


# ---- runtime ----------------------------------------------------------------------------------------


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32,
             "int64": torch.int64, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}
    for name, torch_dtype in table.items():
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return torch_dtype
    raise TrtBuildError(f"engine uses TensorRT dtype {dtype}, which streamvj does not bind")


class TrtEngine:
    """A deserialized engine with every I/O tensor bound once to a preallocated torch CUDA tensor.

    `buffers` may supply some of those tensors (e.g. the pipeline's own input buffer), so
    the caller writes straight into the engine's input and nothing is copied at all.
    Outputs are this engine's buffers, overwritten by the next call.
    """

    def __init__(self, serialized: Any, device: torch.device | str = "cuda",
                 buffers: dict[str, torch.Tensor] | None = None, name: str = "engine"):
        trt = import_tensorrt()
        self.device, self.name = torch.device(device), name
        if self.device.type != "cuda":
            raise ConfigError(f"TensorRT engines run on CUDA devices, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.runtime = trt.Runtime(_trt_logger(trt))
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(serialized)
            if self.engine is None:
                raise TrtBuildError(f"TensorRT could not load the {name} engine (built by another version or GPU?)")
            self.context = self.engine.create_execution_context()
            if self.context is None:  # its activation memory could not be allocated
                raise TrtBuildError(f"TensorRT could not create an execution context for the {name} engine "
                                    f"(out of GPU memory?)")
        self._side_stream: torch.cuda.Stream | None = None
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.buffers: dict[str, torch.Tensor] = {}
        given = dict(buffers or {})
        for i in range(self.engine.num_io_tensors):
            tensor_name = self.engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(tensor_name))
            if any(d < 0 for d in shape):
                raise TrtBuildError(f"{name} engine tensor {tensor_name} has a dynamic shape {shape}")
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(tensor_name))
            buffer = given.pop(tensor_name, None)
            if buffer is None:
                buffer = torch.empty(shape, dtype=dtype, device=self.device)
            elif (tuple(buffer.shape) != shape or buffer.dtype != dtype or buffer.device != self.device
                  or not buffer.is_contiguous()):
                raise ConfigError(f"buffer for {name}.{tensor_name} must be a contiguous {dtype} {shape} tensor "
                                  f"on {self.device}, got {buffer.dtype} {tuple(buffer.shape)} on {buffer.device}")
            if self.engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                if not self.context.set_input_shape(tensor_name, shape):
                    raise TrtBuildError(f"TensorRT refused the shape {shape} for {name}.{tensor_name}")
                self.inputs.append(tensor_name)
            else:
                self.outputs.append(tensor_name)
            if not self.context.set_tensor_address(tensor_name, buffer.data_ptr()):
                raise TrtBuildError(f"TensorRT refused the buffer for {name}.{tensor_name}")
            self.buffers[tensor_name] = buffer
        if given:
            raise ConfigError(f"{name} engine has no tensors named {', '.join(sorted(given))}")

    def _stage(self, name: str, value: torch.Tensor) -> None:
        buffer = self.buffers[name]
        if value is buffer or (value.data_ptr() == buffer.data_ptr() and value.dtype == buffer.dtype
                               and value.shape == buffer.shape and value.stride() == buffer.stride()):
            return  # the caller wrote into the bound buffer itself
        if value.shape != buffer.shape:
            raise ValueError(f"{self.name}.{name}: got shape {tuple(value.shape)}, engine built for "
                             f"{tuple(buffer.shape)} (a new size or batch needs a new engine)")
        buffer.copy_(value, non_blocking=True)  # also converts dtype/layout (int64 timesteps, channels_last)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Inputs in engine order; enqueued on the current stream, returns the output buffer(s)."""
        if len(inputs) != len(self.inputs):
            raise TypeError(f"{self.name} engine takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                            f"got {len(inputs)}")
        for name, value in zip(self.inputs, inputs):
            self._stage(name, value)
        stream = torch.cuda.current_stream(self.device)
        if stream.cuda_stream != 0:
            ok = self.context.execute_async_v3(stream.cuda_stream)
        else:
            # TensorRT brackets enqueues on the legacy default stream with cudaStreamSynchronize
            # (it warns so): run on a side stream instead, ordered after and before the caller's work.
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(self.device)
            side = self._side_stream
            side.wait_stream(stream)
            ok = self.context.execute_async_v3(side.cuda_stream)
            stream.wait_stream(side)
        if not ok:
            raise RuntimeError(f"TensorRT could not enqueue the {self.name} engine (see the TensorRT errors above)")
        outs = tuple(self.buffers[n] for n in self.outputs)
        return outs[0] if len(outs) == 1 else outs


def residual_names(engine: TrtEngine, outputs: bool = False) -> list[str]:
    """The engine's ControlNet residual tensors, in the UNet's order: down_residual_0.., mid_residual."""
    names = set(engine.outputs if outputs else engine.inputs)
    down = []
    while down_residual(len(down)) in names:
        down.append(down_residual(len(down)))
    return [*down, MID_RESIDUAL] if MID_RESIDUAL in names else down


class TrtUnet:
    """Drop-in for the stream batch's unet_fn: (x, timesteps, hidden, pooled, time_ids[, residuals]) -> noise.

    Inputs are matched by name: TensorRT does not document that its I/O order is the ONNX order.
    An engine exported with residual inputs (a pipeline with ControlNets) takes the ControlNets'
    (down, mid) residuals. On a frame where none runs, its bound residual inputs are zeroed in
    place (one fused fill, no allocation, no extra memory; x + 0 == x: the same picture as the
    engine without residual inputs), a kernel like any other inside a captured CUDA graph.
    """

    def __init__(self, engine: TrtEngine):
        sdxl = "text_embeds" in engine.inputs
        self.residual_inputs = residual_names(engine)
        expected = list(UNET_INPUTS) + (list(SDXL_INPUTS) if sdxl else []) + self.residual_inputs
        if sorted(engine.inputs) != sorted(expected) or (self.residual_inputs and
                                                        self.residual_inputs[-1] != MID_RESIDUAL):
            raise ConfigError(f"not a streamvj UNet engine: inputs {engine.inputs}, expected {expected}")
        self.engine, self.sdxl = engine, sdxl
        self._order = [expected.index(n) for n in engine.inputs]  # engine position -> argument position
        self._residual_buffers = [engine.buffers[n] for n in self.residual_inputs]

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                 pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                 residuals: tuple[Sequence[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        if self.sdxl and (pooled is None or time_ids is None):
            raise ValueError("this SDXL UNet engine needs pooled text embeddings and time ids")
        if residuals is None:
            if self._residual_buffers:
                torch._foreach_zero_(self._residual_buffers)
            extra = self._residual_buffers  # the bound buffers themselves: staged without a copy
        elif not self.residual_inputs:
            raise ValueError("this UNet engine takes no ControlNet residuals (it was built for a preset without "
                             "ControlNets)")
        else:
            extra = [*residuals[0], residuals[1]]
            if len(extra) != len(self.residual_inputs):
                raise ValueError(f"this UNet engine takes {len(self.residual_inputs) - 1} down residuals, "
                                 f"got {len(extra) - 1}")
        args = (x, timesteps, hidden, pooled, time_ids)[:5 if self.sdxl else 3] + tuple(extra)
        return self.engine(*(args[i] for i in self._order))


class TrtControlNet:
    """Drop-in for a ControlNet call (engine/core/controlnet.py):
    (x, timesteps, hidden, control_maps, pooled, time_ids) -> (down residuals, mid residual).

    The residuals are the engine's output buffers (conditioning scale 1), overwritten by its
    next call: the caller scales them into new tensors at once.
    """

    def __init__(self, engine: TrtEngine):
        sdxl = "text_embeds" in engine.inputs
        expected = [*UNET_INPUTS, CONTROL_MAP, *(SDXL_INPUTS if sdxl else ())]
        outputs = residual_names(engine, outputs=True)
        if sorted(engine.inputs) != sorted(expected) or not outputs or outputs[-1] != MID_RESIDUAL \
                or len(outputs) != len(engine.outputs):
            raise ConfigError(f"not a streamvj ControlNet engine: inputs {engine.inputs}, outputs {engine.outputs}")
        self.engine, self.sdxl = engine, sdxl
        self._order = [expected.index(n) for n in engine.inputs]
        self.down = [engine.buffers[n] for n in outputs[:-1]]
        self.mid = engine.buffers[MID_RESIDUAL]

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor, control_maps: torch.Tensor,
                 pooled: torch.Tensor | None = None,
                 time_ids: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.sdxl and (pooled is None or time_ids is None):
            raise ValueError("this SDXL ControlNet engine needs pooled text embeddings and time ids")
        args = (x, timesteps, hidden, control_maps, pooled, time_ids)
        self.engine(*(args[i] for i in self._order))
        return self.down, self.mid
