"""The render loop's output side: a processor's result into a pooled host buffer, then to every sink group.

A CUDA result is downloaded on its own stream (engine/accel/device_io.py) and handed off one
frame late: the render thread waits on frame k's "landed" event only after it launched
frame k+1, so the host work of the next frame overlaps the GPU finishing this one. A frame
the similarity filter skipped is the last output again: the host buffer already holding it
is handed off again, uncopied. Buffers are reference counted (engine/realtime/framepool.py):
each sink group's mailbox and the last output kept for reuse hold one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.accel.device_io import DeviceDownload
from engine.errors import FrameError
from engine.realtime.framepool import FrameBuffer, FramePool
from engine.realtime.processor import FrameResult
from engine.realtime.sinkgroup import SinkGroup
from engine.realtime.timings import Timings

OutputRead = Callable[[torch.Tensor, Any], bool]


class OutputHandoff:
    def __init__(self, out_pool: FramePool, in_pool: FramePool, groups: Sequence[SinkGroup], timings: Timings,
                 clock: Callable[[], float]) -> None:
        self.out_pool, self.in_pool, self.groups = out_pool, in_pool, list(groups)
        self.timings, self.clock = timings, clock
        self.rendered = 0  # frames handed to the sinks
        # A CUDA frame whose download is in flight: (out_buf, landed event, in_buf, t_done, skipped).
        self.pending: tuple | None = None
        # The last output handed off (held here): a skipped frame is this same picture again.
        self.last_out: FrameBuffer | None = None
        self._download: DeviceDownload | None = None

    def buffer_for(self, result: FrameResult, output_read: OutputRead) -> tuple[FrameBuffer, Any]:
        """The pooled host buffer sinks will read this result from, and (CUDA) its landed event."""
        if result.skipped:
            self.flush()  # the output it repeats may still be landing (CUDA)
        last, output = self.last_out, result.output
        if result.skipped and last is not None and isinstance(output, (np.ndarray, torch.Tensor)) \
                and tuple(output.shape) == last.array.shape:
            # The similarity filter skipped: the processor repeats its last output, which is
            # already on the host. Hand that buffer off again instead of copying it again.
            self.out_pool.retain(last)
            return last, None
        return self.to_host(output, output_read)

    def to_host(self, output: np.ndarray | torch.Tensor, output_read: OutputRead) -> tuple[FrameBuffer, Any]:
        """Copy a processor output into a pooled host buffer (the one copy sinks read from).

        Returns the buffer and, for a CUDA output, the event marking its bytes as landed.
        """
        if isinstance(output, torch.Tensor):
            if output.is_cuda:
                return self._download_cuda(output, output_read)
            if output.device.type != "cpu":  # Apple's MPS: no streams to overlap; copy_ waits for the GPU
                return self._download_sync(output)
            output = output.detach().numpy()  # a view: the ring copy below is the only copy
        if not isinstance(output, np.ndarray) or output.dtype != np.uint8 or output.ndim != 3 \
                or output.shape[2] != 4:
            what = type(output).__name__
            if isinstance(output, np.ndarray):
                what += f" {output.dtype} {output.shape}"
            raise FrameError(f"processor must return an HxWx4 uint8 array or tensor, got {what}")
        buf = self.out_pool.acquire(output.shape, pinned=False)
        np.copyto(buf.array, output)
        return buf, None

    def _download_sync(self, output: torch.Tensor) -> tuple[FrameBuffer, Any]:
        """A non-CUDA GPU's output (MPS) straight into a pooled host buffer: the one copy."""
        if output.dtype != torch.uint8 or output.ndim != 3 or output.shape[2] != 4:
            raise FrameError(f"processor must return an HxWx4 uint8 array or tensor, got {output.dtype} "
                             f"{tuple(output.shape)} on {output.device}")
        buf = self.out_pool.acquire(tuple(output.shape), pinned=False)
        torch.from_numpy(buf.array).copy_(output)
        return buf, None

    def _download_cuda(self, output: torch.Tensor, output_read: OutputRead) -> tuple[FrameBuffer, Any]:
        if output.dtype != torch.uint8 or output.ndim != 3 or output.shape[2] != 4:
            raise FrameError(f"processor must return an HxWx4 uint8 tensor, got {output.dtype} "
                             f"{tuple(output.shape)}")
        buf = self.out_pool.acquire(tuple(output.shape), pinned=True)
        assert buf.tensor is not None
        if self._download is None:
            self._download = DeviceDownload(output.device)
        # A producer that alternates output buffers lets the GPU go on with the next frame
        # while this one downloads; any other producer's compute waits for the download.
        return buf, self._download.start(output, buf.tensor, output_read=output_read)

    def deliver(self, out_buf: FrameBuffer, landed: Any, in_buf: FrameBuffer | None, t_done: float,
                skipped: bool) -> None:
        """Hand `out_buf` off now (host bytes), or keep it pending until the next frame launched (CUDA)."""
        if landed is None:
            self.in_pool.release(in_buf)
            self._hand_off(out_buf, t_done, skipped)
            return
        # On CUDA the previous frame is handed off only now, after this one was launched:
        # the GPU finished it while the host prepared this frame.
        self.flush()
        self.pending = (out_buf, landed, in_buf, t_done, skipped)

    def flush(self) -> None:
        """Wait for the pending CUDA frame's bytes (its event, not a device sync) and hand it off."""
        if self.pending is None:
            return
        out_buf, landed, in_buf, t_done, skipped = self.pending
        self.pending = None
        landed.synchronize()
        self.in_pool.release(in_buf)  # its upload ran before the download the event marks
        self._hand_off(out_buf, t_done, skipped)

    def close(self) -> None:
        """At stop: the pending frame handed off, the last output back in the pool."""
        self.flush()
        self.out_pool.release(self.last_out)
        self.last_out = None

    def _hand_off(self, out_buf: FrameBuffer, t_model_done: float, skipped: bool) -> None:
        clock, timings = self.clock, self.timings
        timings.record("postprocess", clock() - t_model_done)
        self.out_pool.retain(out_buf, len(self.groups))
        for g in self.groups:
            g.box.put(out_buf)
        if out_buf is not self.last_out:
            self.out_pool.retain(out_buf)
            self.out_pool.release(self.last_out)
            self.last_out = out_buf
        self.rendered += 1
        timings.frame_out(out_buf.t_arrival, clock(), skipped)
        self.out_pool.release(out_buf)
