"""Shared-memory frame bridge: ShmSource (reader) here, ShmSink (writer) in shm_sink.py.

docs/shared-memory.md is the specification; bridges/video/shm_protocol.py holds the layout,
shm_seqlock.py the frame exchange, shm_block.py the OS side of a block, shm_faults.py how
faults are reported. This module owns the reader's side: when to attach, follow a new
writer and let go of a block, noticing dead or restarted writers and peers that break the
rules (logger "streamvj.shm").

A writer can misbehave in ways no frame reveals: truncate the block, zero or rewrite its
header, leave it in INIT or 0 bytes long, stop mid-write. Nothing it does can crash this
process (every access goes through shm_seqlock's checked reads); each fault is logged
once with what is wrong, and the source recovers as soon as a valid block is there again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from bridges.video.shm_block import Block, describe_os_error, writer_alive
from bridges.video.shm_faults import RULES, STALL_GRACE_S, Once, Stall
from bridges.video.shm_protocol import (
    PIXEL_FORMATS,
    STATE_CLOSED,
    STATE_LIVE,
    ShmChangedError,
    ShmError,
    ShmHeader,
    ShmNotReadyError,
    ShmTruncatedError,
    validate_name,
)
from bridges.video.shm_seqlock import MISS_INDEX, MISS_ODD, MISS_RACED, ShmView, read_header
from bridges.video.shm_sink import ShmOpenError, ShmSink
from engine.errors import ConfigError

log = logging.getLogger("streamvj.shm")

RETRY_S = 0.5  # attach attempts and name probes at most this often


class ShmSource:
    """FrameSource reading the newest frame from a streamvj shared-memory block.

    `read_latest()` copies the newest frame (seqlock-checked, never torn) into one of
    `out_buffers` preallocated arrays used in turn: a returned array stays untouched until
    `out_buffers - 1` newer frames have been returned (default 2: keep using a frame while
    the next one is read). Copy it to keep it longer, or pass `out_buffers=0` for a fresh
    array per frame. The writer never writes these arrays; they are C-contiguous rgba_u8.

    A missing block, a dead writer (CLOSED, or stale heartbeat and pid gone), a bad header
    or a block a peer broke (truncated, rewritten) is logged once and retried at most every
    `retry_s`; a restarted writer (new generation under the same name) is picked up without
    recreating the source. No frames for `grace_s` for a reason that is the writer's fault
    (a 0-byte block, a header stuck in INIT or all zero, a seq stuck odd…) is said once.
    """

    def __init__(
        self,
        block_name: str,
        *,
        out_buffers: int = 2,
        retry_s: float = RETRY_S,
        grace_s: float = STALL_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.block_name = validate_name(block_name)
        if out_buffers < 0:
            raise ConfigError(f"ShmSource out_buffers must be >= 0, got {out_buffers}")
        self.name = f"shm:{block_name}"
        self.retry_s = retry_s
        self.last_index = 0  # the writer's frame index of the last frame returned
        self.last_timestamp_ns = 0  # the writer's time.time_ns() when it wrote that frame
        self.generation = 0  # the attached block's generation (0: none yet)
        self._n_out = out_buffers
        # The runtime skips its own copy into a pooled buffer for sources that hand over a
        # fresh array per frame (engine/realtime/runtime.py, `frames_owned`).
        self.frames_owned = out_buffers == 0
        self._clock = clock
        self._outs: list[np.ndarray] = []
        self._k = 0
        self._block: Block | None = None
        self._view: ShmView | None = None
        self._next_try = 0.0
        self._last_new = 0.0
        self._dead: tuple[int, int] | None = None  # (generation, heartbeat) of a writer seen dead
        self._broken_ident: tuple[int, int] | None = None  # the block a fault was just logged for
        self._once = Once()
        self._stall = Stall(block_name, grace_s)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    @property
    def connected(self) -> bool:
        return self._view is not None

    def open(self) -> None:
        self._try_attach(self._clock())

    def close(self) -> None:
        self._detach()

    def read_latest(self) -> np.ndarray | None:
        return self._read(self._out)

    def read_latest_into(self, acquire: Callable[[tuple[int, int, int]], np.ndarray]) -> np.ndarray | None:
        """Like read_latest, but copies the new frame into `acquire(shape)` (the caller's buffer).

        Saves the runtime a second copy per frame. `acquire` is only called when a new frame
        is there; a torn read leaves that buffer unfilled and returns None.
        """
        return self._read(lambda view: acquire((view.layout.height, view.layout.width, 4)))

    def _read(self, out_for: Callable[[ShmView], np.ndarray]) -> np.ndarray | None:
        now = self._clock()
        view = self._view
        if view is None:
            if now < self._next_try:
                return None
            view = self._try_attach(now)
            if view is None:
                return None
        try:
            view.refresh()
            if view.state == STATE_CLOSED:
                log.info("shm %r: block was closed (writer stopped, resized or was replaced)", self.block_name)
                self._detach()
                view = self._try_attach(now)  # a resizing writer has usually made the new one already
                if view is None:
                    return None
            if view.state != STATE_LIVE:
                raise ShmChangedError(f"its state changed to {view.state} while in use (only CLOSED may follow LIVE)")
            if view.frame_counter > self.last_index:
                out = out_for(view)
                got = view.read_frame(out, self.last_index, fresh=True)
                if got is not None:
                    self.last_index, self.last_timestamp_ns = got
                    self._last_new = now
                    self._k += 1
                    self._stall.frame()
                    self._once.reset()
                    return out
                if view.last_miss:
                    self._stall.problem(now, lambda: self._miss_reason(view))
            else:
                self._stall.clear()
        except (ShmError, OSError) as exc:
            self._broken(exc, now)
            return None
        if now - self._last_new >= self.retry_s and now >= self._next_try:
            self._next_try = now + self.retry_s
            self._probe(view)
        return None

    def _miss_reason(self, view: ShmView) -> str:
        slot = view.latest_slot
        if view.last_miss == MISS_ODD:
            return (
                f"the newest slot ({slot}) stays mid-write (its seq {view.slot_seq(slot)} is odd): the writer "
                "stopped inside a frame or does not complete its seqlock"
            )
        if view.last_miss == MISS_INDEX:
            return (
                f"frame_counter says frame {view.frame_counter}, but the newest slot ({slot}) holds "
                f"frame_index {view.slot_index(slot)}: the writer does not store the frame's index in its slot"
            )
        assert view.last_miss == MISS_RACED
        return "the writer overwrote the slot during every copy (write slower, or use 3 slots)"

    def _broken(self, exc: Exception, now: float) -> None:
        """The attached block broke the rules (or the OS refused it): say so once, let go, retry."""
        what = describe_os_error(self.block_name, exc) if isinstance(exc, OSError) else str(exc)
        if isinstance(exc, ShmTruncatedError | ShmChangedError):
            what += f" ({RULES})"
        self._once(logging.WARNING, f"shm {self.block_name!r}: {what}; letting go of it and waiting for a valid block")
        self._stall.said()
        self._broken_ident = self._block.ident if self._block is not None else None
        self._detach()
        self._next_try = now + self.retry_s

    def _out(self, view: ShmView) -> np.ndarray:
        shape = (view.layout.height, view.layout.width, 4)
        if self._n_out == 0:
            return np.empty(shape, np.uint8)
        if not self._outs or self._outs[0].shape != shape:
            self._outs = [np.empty(shape, np.uint8) for _ in range(self._n_out)]
        return self._outs[self._k % self._n_out]

    def _open_named(self, now: float) -> tuple[Block, ShmHeader] | None:
        """Open the name and parse its header; log (once) and return None when unusable."""
        try:
            block = Block(self.block_name)
        except FileNotFoundError:
            self._stall.clear()
            self._once(logging.INFO, f"shm {self.block_name!r}: no block yet; waiting for a writer")
            return None
        except ShmNotReadyError as exc:
            self._not_ready(now, exc)
            return None
        except OSError as exc:
            self._once(logging.WARNING, f"shm {self.block_name!r}: {describe_os_error(self.block_name, exc)}; retrying")
            return None
        try:
            return block, read_header(block.io)
        except ShmNotReadyError as exc:
            block.close()
            self._not_ready(now, exc)
        except ShmError as exc:
            block.close()
            if block.ident is not None and block.ident == self._broken_ident:
                log.debug("shm %r: the block broken earlier is still unusable: %s", self.block_name, exc)
            else:
                self._once(logging.WARNING, f"shm {self.block_name!r}: unusable block: {exc}")
        except OSError as exc:
            block.close()
            self._once(logging.WARNING, f"shm {self.block_name!r}: {describe_os_error(self.block_name, exc)}; retrying")
        return None

    def _not_ready(self, now: float, exc: ShmNotReadyError) -> None:
        reason = f"{exc} ({RULES})"
        self._stall.problem(now, lambda: reason)

    def _try_attach(self, now: float) -> ShmView | None:
        self._next_try = now + self.retry_s
        opened = self._open_named(now)
        if opened is None:
            return None
        block, header = opened
        if header.state == STATE_CLOSED or (header.generation, header.heartbeat_ns) == self._dead:
            block.close()
            return None
        if not writer_alive(header.writer_pid, header.heartbeat_ns, header.state):
            block.close()
            self._dead = (header.generation, header.heartbeat_ns)
            self._once(
                logging.INFO,
                f"shm {self.block_name!r}: block left by dead writer pid {header.writer_pid}; waiting for a new writer",
            )
            return None
        return self._attach(block, header, now)

    def _attach(self, block: Block, header: ShmHeader, now: float) -> ShmView | None:
        lay = header.layout
        view = ShmView(block.io, lay)
        try:
            view.refresh()  # the header may have changed since read_header
        except (ShmError, OSError) as exc:
            block.close()
            self._once(logging.WARNING, f"shm {self.block_name!r}: unusable block: {exc}")
            return None
        if header.generation != self.generation:
            self.last_index = 0
        self.generation = header.generation
        self._block, self._view = block, view
        self._last_new = now
        self._dead = self._broken_ident = None
        self._once(
            logging.INFO,
            f"shm {self.block_name!r}: attached ({lay.width}x{lay.height} {PIXEL_FORMATS[lay.pixel_format]}, "
            f"{lay.slot_count} slots, writer pid {header.writer_pid})",
        )
        return view

    def _probe(self, view: ShmView) -> None:
        """Idle for a while: has a new writer taken over the name, or has ours died?"""
        opened = self._open_named(self._clock())
        if opened is not None:
            block, header = opened
            if (
                header.generation != view.generation
                and header.state == STATE_LIVE
                and writer_alive(header.writer_pid, header.heartbeat_ns, header.state)
            ):
                log.info("shm %r: a new writer took over the name", self.block_name)
                self._detach()
                self._attach(block, header, self._clock())
                return
            block.close()
        if not writer_alive(view.writer_pid, view.heartbeat_ns, view.state):
            self._dead = (view.generation, view.heartbeat_ns)
            log.warning("shm %r: writer pid %d is gone; waiting for a new writer", self.block_name, view.writer_pid)
            self._detach()

    def _detach(self) -> None:
        block = self._block
        self._view = self._block = None
        if block is not None:
            block.close()


__all__ = ["STALL_GRACE_S", "ShmOpenError", "ShmSink", "ShmSource", "writer_alive"]
