"""ShmSink: the writer side of the streamvj shared-memory protocol (docs/shared-memory.md).

Owns its block's life: created on the first frame (sized by it), recreated under the same
name with a new generation when the frame size changes, replaced when a dead writer left
one behind, and — when another process truncated or overwrote it — replaced too, with one
log line: nothing a peer does to the block can crash the engine (bridges/video/shm_seqlock.py
checks every access), and readers follow the new generation by name.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from bridges.video.shm_block import Block, describe_os_error, names_block, unlink, writer_alive
from bridges.video.shm_faults import RULES, Once
from bridges.video.shm_protocol import (
    MAX_SLOTS,
    MIN_SLOTS,
    STATE_CLOSED,
    ShmError,
    ShmHeader,
    ShmHeaderError,
    ShmNameInUseError,
    ShmNotReadyError,
    layout_for,
    validate_name,
)
from bridges.video.shm_seqlock import ShmView, init_block, read_header
from engine.errors import ConfigError
from engine.realtime.frames import check_rgba_u8

log = logging.getLogger("streamvj.shm")

WRITER_RETRY_S = 0.1  # retry creating a block whose old instance is still held open (Windows)
SINK_REPEAT_S = 10.0  # the same fault (a peer truncating every new block) is logged at most this often


class ShmOpenError(ShmError, ConfigError):
    """The OS refused the name (a symbolic link, another user's block…): a setup problem."""


class ShmSink:
    """FrameSink writing rgba_u8 frames into a streamvj shared-memory block.

    The block is created on the first `send` (its size follows the frames) and recreated,
    under the same name with a new generation, when the frame size changes — or when
    another process truncated or overwrote it (logged once per fault). `close()` marks it
    CLOSED for readers and unlinks it.
    """

    def __init__(self, block_name: str, slots: int = 3) -> None:
        self.block_name = validate_name(block_name)
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ConfigError(f"ShmSink slots must be {MIN_SLOTS} or {MAX_SLOTS}, got {slots}")
        self.name = f"shm:{block_name}"
        self.slots = slots
        self._block: Block | None = None
        self._view: ShmView | None = None
        self._generation = 0
        self._index = 0
        self._retry_at = 0.0
        self._once = Once(repeat_s=SINK_REPEAT_S)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    @property
    def generation(self) -> int:
        """The current block's generation id (0 before the first frame)."""
        return self._generation

    def open(self) -> None:
        """Fail early (ShmOpenError / ShmNameInUseError) if the name is unusable or a live writer owns it.

        The block itself comes with the first frame.
        """
        try:
            block = Block(self.block_name)
        except (FileNotFoundError, ShmNotReadyError):
            return
        except OSError as exc:
            raise ShmOpenError(f"shm sink {self.block_name!r}: {describe_os_error(self.block_name, exc)}") from None
        try:
            self._check_stale(block)
        finally:
            block.close()

    def send(self, rgba_u8: np.ndarray) -> None:
        frame = check_rgba_u8(rgba_u8, "ShmSink.send")
        view = self._view
        if view is None or frame.shape[:2] != (view.layout.height, view.layout.width):
            view = self._recreate(frame.shape[1], frame.shape[0])
            if view is None:
                return
        try:
            view.write_frame(frame, self._index + 1, time.time_ns())
        except ShmError as exc:  # truncated or overwritten by someone else: ours no longer
            self._once(logging.WARNING, f"shm {self.block_name!r}: {exc}; replacing it with a new block ({RULES})")
            self._retire()
            view = self._recreate(frame.shape[1], frame.shape[0])
            if view is None:
                return
            view.write_frame(frame, self._index + 1, time.time_ns())
        except OSError as exc:
            raise ShmError(f"shm sink {self.block_name!r}: {describe_os_error(self.block_name, exc)}") from None
        self._index += 1

    def close(self) -> None:
        self._retire()

    def _recreate(self, width: int, height: int) -> ShmView | None:
        now = time.monotonic()
        if now < self._retry_at:
            return None
        layout = layout_for(width, height, self.slots)
        self._retire()
        try:
            block = self._create(layout.block_size)
            if block is None:
                # Windows: readers of the old block still hold it; they let go once they see CLOSED.
                self._retry_at = now + WRITER_RETRY_S
                self._once(logging.INFO, f"block {self.block_name!r} still held by readers; retrying")
                return None
            generation = int.from_bytes(os.urandom(8), "little") | 1
            view = init_block(block.io, layout, generation, os.getpid())
        except OSError as exc:
            self._retry_at = now + WRITER_RETRY_S
            raise ShmError(f"shm sink {self.block_name!r}: {describe_os_error(self.block_name, exc)}") from None
        self._block, self._view, self._generation, self._index = block, view, generation, 0
        log.info("shm %r: writing %dx%d RGBA8, %d slots", self.block_name, width, height, self.slots)
        return view

    def _create(self, size: int) -> Block | None:
        try:
            return Block(self.block_name, create_size=size)
        except FileExistsError:
            self._clear_stale()
        try:
            return Block(self.block_name, create_size=size)
        except FileExistsError:
            return None

    def _check_stale(self, block: Block) -> ShmHeader | None:
        """Raise ShmNameInUseError unless the existing block is ours to replace; return its header."""
        try:
            header = read_header(block.io)
        except ShmNotReadyError:
            return None  # a writer died while initialising: stale
        except ShmHeaderError as e:
            raise ShmNameInUseError(
                f"shared-memory block {self.block_name!r} exists and is not a streamvj v1 block ({e}); "
                "pick another name"
            ) from e
        if writer_alive(header.writer_pid, header.heartbeat_ns, header.state, pid_decides=True):
            raise ShmNameInUseError(
                f"shared-memory block {self.block_name!r} is in use by a live writer (pid "
                f"{header.writer_pid}); stop it or pick another name"
            )
        return header

    def _clear_stale(self) -> None:
        try:
            block = Block(self.block_name, writable=True)
        except (FileNotFoundError, ShmNotReadyError):
            unlink(self.block_name)
            return
        try:
            header = self._check_stale(block)
            # Our own pid here is a block this process retired (CLOSED, or it would be "in use"),
            # still held open by readers on Windows while it is resized: no dead writer to report.
            if header is not None and header.writer_pid != os.getpid():
                log.info("shm %r: replacing the block of dead writer pid %d", self.block_name, header.writer_pid)
                ShmView(block.io, header.layout).set_state(STATE_CLOSED)  # its readers detach (and, on Windows, free it)
        finally:
            block.close()
        unlink(self.block_name)

    def _retire(self) -> None:
        view, block = self._view, self._block
        self._view = self._block = None
        if view is None or block is None:
            return
        try:
            view.set_state(STATE_CLOSED)
        except OSError as exc:
            log.debug("shm %r: could not mark the old block CLOSED: %s", self.block_name, exc)
        # Unlink only if the name still means our block: a writer that (wrongly) judged us
        # dead may have replaced it, and its block is not ours to remove.
        ours = names_block(self.block_name, block.ident)
        block.close()
        if ours:
            unlink(self.block_name)
