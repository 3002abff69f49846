"""CUDA graph capture of the whole per-frame step.

A 512x512 sd-turbo frame is a few hundred small kernels; at 250+ fps the CPU cost of
launching them one by one (Python, dispatcher, driver) is a large share of the frame.
A CUDA graph records those launches once and replays them with one call.

Why live parameter updates work without recapturing: a graph stores each kernel with its
arguments, including the *addresses* of the tensors it reads, not their values. Every
tensor the step reads lives in a buffer allocated once at prepare time (StreamBatch and
StreamPipeline own them), and live settings are written into those buffers in place
(`copy_`/`fill_`: prompt embeddings, guidance, delta, t_index coefficients, noise, the
input frame). A replay reads whatever the buffers hold at that moment, so the next frame
sees the new values exactly as an eager call would.

What does need a recapture (`recapture()`): anything the step's Python decides at capture
time (cfg type, mode, step count, sizes, Python float constants) and any buffer that gets
*replaced* by a new tensor instead of written into, since the graph would keep reading the
old storage (possibly freed and reused: garbage). `watch=` names such buffers; when one's
storage changes, the next call recaptures before replaying instead of reading stale memory.
A step whose Python branches on a flag per frame (an effect stage on or off) gets one graph
per flag value: trailing non-tensor arguments select the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger("streamvj.cuda_graphs")

Watch = Callable[[], Iterable["torch.Tensor | None"]]


def _storage_ids(tensors: Iterable[torch.Tensor | None]) -> tuple[Any, ...]:
    return tuple(None if t is None else (t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors)


class _Captured:
    __slots__ = ("graph", "output", "watched")

    def __init__(self, graph: Any, output: torch.Tensor, watched: tuple[Any, ...]):
        self.graph, self.output, self.watched = graph, output, watched


class CudaGraphs:
    """The torch.cuda calls that capture and replay take, in one place.

    GraphedStep only talks to this object, so a test can hand it an emulator of the same
    semantics (tests/engine/accel/graph_emulator.py runs capture/replay on the CPU) and exercise
    the capture logic, and the pipeline's capturability, on machines without a GPU.
    """

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def side_stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device=device)

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def on_stream(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)

    def new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def recording(self, graph: Any, pool: Any, stream: Any) -> Any:
        # thread_local: the runtime's source/sink threads keep using CUDA (uploads, pinned
        # buffers) while the render thread captures; "global" would fail them.
        return torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local")


CUDA_GRAPHS = CudaGraphs()


class GraphedStep:
    """`fn(*static_inputs, *mode)` captured into CUDA graphs; calling replays the matching one.

    - `static_inputs`: preallocated tensors `fn` reads. Update them in place, or pass new
      values to `__call__`, which copies them in (skipped when they are those tensors).
    - `mode`: trailing non-tensor arguments (e.g. a bool that switches an effect stage on)
      are passed to `fn` as they are and select the graph: one graph per distinct mode,
      captured on first use, so a switch costs one capture the first time and nothing after.
      Each graph has its own memory pool (alternating replays must not share one).
    - The output is a static tensor inside the graph's memory pool, overwritten by the next
      replay: consume or copy it before the next call (on the same stream, or make that
      stream wait for the consumer).
    - Warm-up runs `fn` for real `warmup` times on a side stream (it lets cuDNN/cuBLAS and
      torch.compile finish their lazy setup, which must not happen during capture). State
      that `fn` updates in place and that must not advance (the stream batch's frames in
      flight) is listed by `preserve`: it is saved before the warm-up and restored before
      the first replay, so capturing mid-show (e.g. when FX switch on) changes no frame.
      The capture itself runs nothing.
    - Off CUDA (or with `enabled=False`) it calls `fn` directly, the same code path, so
      it is testable anywhere. If capture fails (a host sync inside `fn`, an op that cannot
      be captured), it logs why and keeps running `fn` eagerly rather than stopping the show.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], static_inputs: Sequence[torch.Tensor], warmup: int = 3,
                 watch: Watch | None = None, pool: Any = None, enabled: bool | None = None,
                 preserve: Watch | None = None, backend: CudaGraphs = CUDA_GRAPHS):
        if not static_inputs:
            raise ValueError("GraphedStep needs at least one static input tensor")
        devices = {t.device for t in static_inputs}
        if len(devices) != 1:
            raise ValueError(f"static inputs must share one device, got {sorted(map(str, devices))}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.fn, self.static_inputs = fn, tuple(static_inputs)
        self.device = next(iter(devices))
        self.warmup, self.watch, self.pool, self.preserve = warmup, watch, pool, preserve
        self.backend = backend
        on_cuda = backend.supports(self.device)
        self.enabled = on_cuda if enabled is None else bool(enabled) and on_cuda
        self.fallback_reason: str | None = None if self.enabled else f"device is {self.device.type}"
        self.captures = 0
        self._graphs: dict[tuple[Any, ...], _Captured] = {}

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    # ---- capture ------------------------------------------------------------------------------

    def capture(self, *mode: Any) -> None:
        """Warm up, then record `fn(*static_inputs, *mode)` into a graph (replacing that mode's graph)."""
        self._release(mode)
        if not self.enabled:
            return
        graphs = self.backend
        side = graphs.side_stream(self.device)
        current = graphs.current_stream(self.device)
        kept = [t for t in (self.preserve() if self.preserve else ()) if t is not None]
        saved = [t.clone() for t in kept]
        side.wait_stream(current)
        graph = graphs.new_graph()
        try:
            with torch.no_grad():
                with graphs.on_stream(side):
                    for _ in range(self.warmup):
                        self.fn(*self.static_inputs, *mode)
                # Inputs/buffers written on `current` after this point would race the warm-up otherwise.
                current.wait_stream(side)
                with graphs.recording(graph, self.pool, side):
                    output = self.fn(*self.static_inputs, *mode)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.enabled, self.fallback_reason = False, f"capture failed: {reason}"
            log.warning("CUDA graph capture failed (%s); running the step without a graph", reason)
            return
        current.wait_stream(side)
        for tensor, copy in zip(kept, saved):
            tensor.copy_(copy)  # undo the warm-up's state updates (ordered on `current`)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"GraphedStep: fn must return one tensor, got {type(output).__name__}")
        self._graphs[mode] = _Captured(graph, output, self._watch_ids())
        self.captures += 1
        log.debug("captured CUDA graph #%d on %s (mode %s)", self.captures, self.device, mode or "default")

    def recapture(self) -> None:
        """For load-time changes: every mode captures anew on its next call (live settings never need this)."""
        self.release()
        if self.fallback_reason and self.fallback_reason.startswith("capture failed"):
            self.enabled, self.fallback_reason = self.backend.supports(self.device), None

    def release(self) -> None:
        """Free every graph (and with it their memory pools' hold on the static outputs)."""
        for mode in list(self._graphs):
            self._release(mode)

    def _release(self, mode: tuple[Any, ...]) -> None:
        captured = self._graphs.pop(mode, None)
        if captured is not None:
            captured.graph.reset()

    def _watch_ids(self) -> tuple[Any, ...]:
        return _storage_ids(self.watch()) if self.watch is not None else ()

    # ---- run ----------------------------------------------------------------------------------

    def _load(self, tensors: Sequence[torch.Tensor]) -> None:
        for arg, static in zip(tensors, self.static_inputs):
            if arg is static:
                continue
            if not isinstance(arg, torch.Tensor):
                raise TypeError(f"GraphedStep: expected a tensor for a static input, got {type(arg).__name__}")
            if arg.shape != static.shape:
                raise ValueError(f"input shape {tuple(arg.shape)} != captured shape {tuple(static.shape)}")
            static.copy_(arg, non_blocking=True)

    def __call__(self, *args: Any) -> torch.Tensor:
        """Run one step: `step()`, `step(*tensors)` or `step(*tensors, *mode)`.

        Tensors are copied into the static inputs (a no-op for the same tensors); the
        remaining arguments are the mode, passed through to `fn` and selecting the graph.
        """
        n = len(self.static_inputs)
        if args and len(args) < n:
            raise TypeError(f"GraphedStep takes {n} input tensors (then optional mode arguments), got {len(args)}")
        self._load(args[:n])
        mode = tuple(args[n:])
        if any(isinstance(m, torch.Tensor) for m in mode):
            raise TypeError(f"GraphedStep takes {n} input tensors; mode arguments after them must not be tensors")
        if not self.enabled:
            with torch.no_grad():
                return self.fn(*self.static_inputs, *mode)
        captured = self._graphs.get(mode)
        if captured is not None and self.watch is not None and self._watch_ids() != captured.watched:
            log.info("a captured buffer was replaced; recapturing the CUDA graph(s)")
            self.release()
            captured = None
        if captured is None:
            self.capture(*mode)
            captured = self._graphs.get(mode)
            if captured is None:  # capture failed: eager from now on
                with torch.no_grad():
                    return self.fn(*self.static_inputs, *mode)
        captured.graph.replay()
        return captured.output
