"""CUDA graph semantics on the CPU, so capture logic and capturability are tested without a GPU.

A CUDA graph records kernels with the *addresses* they read and write; capturing runs
nothing, and a replay runs the same kernels on the same memory. `EmulatedGraphs` (a drop-in
for `engine.accel.cuda_graphs.CudaGraphs`) records every aten op of the captured call with the
very tensor objects it used, then replays them in order, writing each result back into the
tensor the capture produced. That reproduces what matters for streamvj's live updates:

- a value written into a captured buffer (`copy_`, `fill_`) is seen by the next replay;
- a Python number read at capture time (a float guidance, a branch on a flag) is baked in
  and never changes on replay, exactly the bug a CUDA graph would have;
- a buffer replaced by a new tensor is not seen (the graph keeps the old one);
- capture has no effect: buffers written during capture are restored afterwards, and what
  the capture allocated holds garbage (NaN / 0x5A bytes) until the first replay;
- a host sync inside the captured call (`.item()`, a branch on a tensor, `nonzero`, a
  tensor built from host data) raises, as `cudaStreamCaptureUnsupported` does.

What it does not model: kernel timing, streams (all work is in order here), memory pools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
# Ops that read device memory on the host or copy pageable host memory: illegal in capture.
SYNC_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
            aten.nonzero.default, aten.lift_fresh.default, aten.masked_select.default}


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (_storage(a) == _storage(b) and a.storage_offset() == b.storage_offset()
            and a.shape == b.shape and a.stride() == b.stride())


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.fresh: set[int] = set()  # storages the capture allocated
        self.saved: dict[int, tuple[Any, Any]] = {}  # storages the capture wrote: their contents before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS:
            raise RuntimeError(f"operation not permitted when stream is capturing ({func})")
        schema = func._schema.arguments
        named = {a.name: a for a in schema}
        for arg, value in [*zip(schema, args), *((named[k], v) for k, v in kwargs.items() if k in named)]:
            if arg.alias_info is not None and arg.alias_info.is_write:  # in-place and out= arguments
                for t in _tensors(value):
                    self._save(t)
        inputs = {_storage(t) for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for t in _tensors(out):
            if _storage(t) not in inputs:
                self.fresh.add(_storage(t))
        self.ops.append((func, args, kwargs, out))
        return out

    def _save(self, t: torch.Tensor) -> None:
        key = _storage(t)
        if key not in self.fresh and key not in self.saved:
            storage = t.untyped_storage()
            self.saved[key] = (storage, storage.clone())

    def finish(self) -> None:
        """Capture ran nothing: undo its writes, and leave its own allocations as garbage."""
        for storage, before in reversed(list(self.saved.values())):
            storage.copy_(before)
        poisoned: set[int] = set()
        for _, _, _, out in self.ops:
            for t in _tensors(out):
                key = _storage(t)
                if key in self.fresh and key not in poisoned:
                    poisoned.add(key)
                    t.untyped_storage().fill_(0x5A)  # as a float32 that is ~1.5e16; NaN-free but absurd
        self.saved.clear()


class EmulatedGraph:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.replays = 0

    @torch.no_grad()
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            result = func(*args, **kwargs)
            for recorded, new in zip(_tensors(out), _tensors(result)):
                if not _same_view(recorded, new):
                    recorded.copy_(new)
        self.replays += 1

    def reset(self) -> None:
        self.ops = []


class _Stream:
    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass


class EmulatedGraphs:
    """`engine.accel.cuda_graphs.CudaGraphs` for any device: records and replays aten ops."""

    def __init__(self) -> None:
        self.graphs: list[EmulatedGraph] = []

    def supports(self, device: torch.device) -> bool:
        return True

    def side_stream(self, device: torch.device) -> _Stream:
        return _Stream()

    def current_stream(self, device: torch.device) -> _Stream:
        return _Stream()

    def on_stream(self, stream: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def new_graph(self) -> EmulatedGraph:
        graph = EmulatedGraph()
        self.graphs.append(graph)
        return graph

    @contextlib.contextmanager
    def recording(self, graph: EmulatedGraph, pool: Any, stream: Any) -> Iterator[None]:
        recorder = _Recorder()
        try:
            with recorder:
                yield
        finally:
            recorder.finish()
        graph.ops = recorder.ops
