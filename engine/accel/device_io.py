"""Host <-> device frame transfers on their own CUDA streams, ordered by events, never by syncs.

Upload: frame k+1 is copied from pinned host memory into a device staging slot on the
upload stream while the compute stream is still busy with frame k; the compute stream
only waits for that copy's event, then moves the bytes into the captured input buffer
with a device-to-device copy (microseconds).

Download: the copy of frame k to pinned host memory runs on the download stream after
frame k's compute, while the GPU goes on with frame k+1 — provided the producer does not
overwrite the downloaded buffer in frame k+1. A producer that alternates output buffers
(StreamPipeline on CUDA) takes the "landed" event through `output_read` and makes its
compute stream wait for it just before it writes that buffer again; any other producer
gets the safe default, its compute stream waiting for the download right away.

The render thread waits on a frame's landed event one frame late (engine/realtime/runtime.py
keeps it "pending"), after it launched the next frame, so the host-side work of the next
frame overlaps the GPU finishing the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EVENTS = 4  # more than the frames ever in flight at once (two), so a ring never reuses a live event
SLOTS = 2  # staging slots: one being filled by the upload stream, one being read by compute


class DeviceDownload:
    """Copies a CUDA uint8 frame into a pinned host tensor on a dedicated stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._events = [torch.cuda.Event() for _ in range(EVENTS)]
        self._computed = torch.cuda.Event()  # reused: wait_stream() would make a new event per frame
        self._next = 0

    def start(self, result: torch.Tensor, host: torch.Tensor,
              output_read: Callable[[torch.Tensor, Any], bool] | None = None) -> Any:
        """Queue `host <- result`; returns the event that marks the bytes as landed.

        The copy waits for the frame's compute (stream order). If the processor that made
        `result` takes the event (its `output_read(result, event)` returns True), it orders
        its own reuse of the buffer and the GPU goes straight on; otherwise the compute
        stream waits for the copy before its next kernels, so the next frame cannot
        overwrite `result` while it is read.
        """
        compute = torch.cuda.current_stream(result.device)
        event = self._events[self._next]
        self._next = (self._next + 1) % EVENTS
        self._computed.record(compute)
        self.stream.wait_event(self._computed)
        with torch.cuda.stream(self.stream):
            host.copy_(result, non_blocking=True)
            event.record(self.stream)
        # If `result` is freed (a preset switch drops the old pipeline), the allocator must
        # not hand its memory to new work before this copy has read it.
        result.record_stream(self.stream)
        if output_read is None or not output_read(result, event):
            compute.wait_event(event)
        return event


class DeviceUpload:
    """Host frames -> device, on a dedicated stream, through a ring of device staging slots."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._slots: list[torch.Tensor] = []
        self._ready = [torch.cuda.Event() for _ in range(SLOTS)]
        self._free: list[Any] = [None] * SLOTS  # recorded on compute once a slot's bytes were consumed
        self._next = 0

    def upload(self, frames: torch.Tensor, consume: Callable[[torch.Tensor], Any]) -> Any:
        """Copy `frames` (pinned host memory for a truly asynchronous copy) to the device, then
        run `consume(staged)` on the current (compute) stream once the bytes are there.

        `consume` copies the staged frames into the buffer the frame step reads (or fits
        them into it); the slot is refilled only after that, two uploads later. Returns the
        event that marks the copy as done: the host memory of `frames` may be rewritten after
        it (a producer that keeps its own pinned buffers, like a ControlNet's source, waits
        for it; the main input's buffer is released later, after the frame's download).
        """
        compute = torch.cuda.current_stream(self.device)
        if not self._slots or self._slots[0].shape != frames.shape:
            for old in self._slots:  # size change only: the upload stream may still be writing them
                old.record_stream(self.stream)
            self._slots = [torch.empty(frames.shape, dtype=torch.uint8, device=self.device) for _ in range(SLOTS)]
            self._free = [None] * SLOTS
            # New slots come from the compute stream's pool, maybe memory compute work queued before
            # freeing it still touches: the upload stream starts after that work.
            self.stream.wait_stream(compute)
        i = self._next
        self._next = (i + 1) % SLOTS
        slot, ready = self._slots[i], self._ready[i]
        if self._free[i] is not None:
            self.stream.wait_event(self._free[i])  # compute has read what this slot held before
        with torch.cuda.stream(self.stream):
            slot.copy_(frames, non_blocking=True)
            ready.record(self.stream)
        compute.wait_event(ready)
        consume(slot)
        if self._free[i] is None:
            self._free[i] = torch.cuda.Event()
        self._free[i].record(compute)
        return ready
