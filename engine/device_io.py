"""Device -> host frame downloads on their own CUDA stream, finished by events, never by syncs.

The render thread starts frame k's download, then goes on to launch frame k+1 and only
then waits for frame k's event (engine/runtime.py keeps it "pending"): the host-side work
of the next frame (parameters, similarity check, upload, graph launch) overlaps the GPU
finishing the previous one, instead of the GPU idling while the host catches up.
"""

from __future__ import annotations

from typing import Any

import torch

EVENTS = 4  # more than the frames ever pending at once (one), so a ring never reuses a live event


class DeviceDownload:
    """Copies a CUDA uint8 frame into a pinned host tensor on a dedicated stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._events = [torch.cuda.Event() for _ in range(EVENTS)]
        self._next = 0

    def start(self, result: torch.Tensor, host: torch.Tensor) -> Any:
        """Queue `host <- result`; returns the event that marks the bytes as landed.

        The copy waits for the frame's compute (stream order), and the compute stream waits
        for the copy before its next kernels, so the next frame cannot overwrite `result`
        (the pipeline's reused output buffer) while it is still being read.
        """
        compute = torch.cuda.current_stream(result.device)
        event = self._events[self._next]
        self._next = (self._next + 1) % EVENTS
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            host.copy_(result, non_blocking=True)
            event.record(self.stream)
        compute.wait_event(event)
        return event
