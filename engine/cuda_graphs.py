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


class GraphedStep:
    """`fn(*static_inputs)` captured into a CUDA graph; calling replays it.

    - `static_inputs`: preallocated tensors `fn` reads. Update them in place, or pass new
      values to `__call__`, which copies them in (skipped when they are those tensors).
    - The output is a static tensor inside the graph's memory pool, overwritten by the next
      replay: consume or copy it before the next call (on the same stream, or make that
      stream wait for the consumer).
    - Warm-up runs `fn` for real `warmup` times on a side stream (it lets cuDNN/cuBLAS and
      torch.compile finish their lazy setup, which must not happen during capture), so any
      state `fn` updates advances that many times: reset it after capturing (the stream
      batch re-primes on its next frame after `reset()`). The capture itself runs nothing.
    - Off CUDA (or with `enabled=False`) it calls `fn` directly, the same code path, so
      it is testable anywhere. If capture fails (a host sync inside `fn`, an op that cannot
      be captured), it logs why and keeps running `fn` eagerly rather than stopping the show.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], static_inputs: Sequence[torch.Tensor], warmup: int = 3,
                 watch: Watch | None = None, pool: Any = None, enabled: bool | None = None):
        if not static_inputs:
            raise ValueError("GraphedStep needs at least one static input tensor")
        devices = {t.device for t in static_inputs}
        if len(devices) != 1:
            raise ValueError(f"static inputs must share one device, got {sorted(map(str, devices))}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.fn, self.static_inputs = fn, tuple(static_inputs)
        self.device = next(iter(devices))
        self.warmup, self.watch, self.pool = warmup, watch, pool
        on_cuda = self.device.type == "cuda"
        self.enabled = on_cuda if enabled is None else bool(enabled) and on_cuda
        self.fallback_reason: str | None = None if self.enabled else f"device is {self.device.type}"
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._output: torch.Tensor | None = None
        self._watched: tuple[Any, ...] = ()

    @property
    def captured(self) -> bool:
        return self._graph is not None

    # ---- capture ------------------------------------------------------------------------------

    def capture(self) -> None:
        """Warm up, then record `fn` into a graph (drops any previous graph first)."""
        self.release()
        if not self.enabled:
            return
        side = torch.cuda.Stream(device=self.device)
        current = torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.no_grad():
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        self.fn(*self.static_inputs)
                # Inputs/buffers written on `current` after this point would race the warm-up otherwise.
                current.wait_stream(side)
                with torch.cuda.graph(graph, pool=self.pool, stream=side):
                    output = self.fn(*self.static_inputs)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.enabled, self.fallback_reason = False, f"capture failed: {reason}"
            log.warning("CUDA graph capture failed (%s); running the step without a graph", reason)
            return
        current.wait_stream(side)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"GraphedStep: fn must return one tensor, got {type(output).__name__}")
        self._graph, self._output = graph, output
        self._watched = self._watch_ids()
        self.captures += 1
        log.debug("captured CUDA graph #%d on %s", self.captures, self.device)

    def recapture(self) -> None:
        """For load-time changes: the next call captures anew (live settings never need this)."""
        self.release()
        if self.fallback_reason and self.fallback_reason.startswith("capture failed"):
            self.enabled, self.fallback_reason = self.device.type == "cuda", None

    def release(self) -> None:
        """Free the graph and its memory pool's hold on the static output."""
        if self._graph is not None:
            self._graph.reset()
        self._graph, self._output, self._watched = None, None, ()

    def _watch_ids(self) -> tuple[Any, ...]:
        return _storage_ids(self.watch()) if self.watch is not None else ()

    # ---- run ----------------------------------------------------------------------------------

    def _load(self, args: Sequence[torch.Tensor]) -> None:
        if len(args) != len(self.static_inputs):
            raise TypeError(f"GraphedStep takes {len(self.static_inputs)} inputs, got {len(args)}")
        for arg, static in zip(args, self.static_inputs):
            if arg is static:
                continue
            if arg.shape != static.shape:
                raise ValueError(f"input shape {tuple(arg.shape)} != captured shape {tuple(static.shape)}")
            static.copy_(arg, non_blocking=True)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """Run one step. With args: copy them into the static inputs first (a no-op for the same tensors)."""
        if args:
            self._load(args)
        if not self.enabled:
            with torch.no_grad():
                return self.fn(*self.static_inputs)
        if self._graph is not None and self.watch is not None and self._watch_ids() != self._watched:
            log.info("a captured buffer was replaced; recapturing the CUDA graph")
            self.release()
        if self._graph is None:
            self.capture()
            if self._graph is None:  # capture failed: eager from now on
                with torch.no_grad():
                    return self.fn(*self.static_inputs)
        self._graph.replay()
        assert self._output is not None
        return self._output
