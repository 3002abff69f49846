"""Runtime: the real-time loop that moves frames source -> processor -> sinks (DESIGN.md "Data flow").

Threads (all named 'streamvj-<role>', all daemons so a hung driver can't keep the process alive):

- one per source: polls `read_latest()`, copies the frame into a pooled buffer and puts it
  in the input mailbox (latest wins: frames the render loop had no time for are dropped,
  never queued, so latency stays bounded by one frame plus one render);
- one render loop: the ONLY thread that calls the processor (the model), through the
  `Processor` protocol (engine/realtime/processor.py). It runs control actions (`call_soon`)
  between frames, calls `process`, copies the output into a pooled host buffer and hands it
  to every sink group's mailbox;
- one per sink group: sends the newest output; with `target_fps` it sends on a steady
  clock, repeating the last frame when the model skipped, is slower or is paused. A slow
  sink only drops frames for itself; it never stalls the render loop;
- one stats thread when `on_stats` is given: calls it about once a second.

Buffers handed across threads are reference counted: a pooled buffer is rewritten only
after every holder (a mailbox slot, a sink repeating it) gave it back, so a sink never sees
a frame being overwritten, and the steady state allocates no frame memory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.accel.device_io import DeviceDownload
from engine.errors import ConfigError, FrameError
from engine.realtime.framepool import FrameBuffer, FramePool
from engine.realtime.frames import Frame, FrameSink, FrameSource, check_rgba_u8
from engine.realtime.log_limit import LogLimiter
from engine.realtime.mailbox import Mailbox
from engine.realtime.processor import FrameResult, Processor
from engine.realtime.sinkgroup import WAIT_S, SinkGroup, close_quietly
from engine.realtime.timings import Timings

log = logging.getLogger("streamvj.runtime")

SOURCE_RETRY_S = 0.5  # a raising source is retried this often, not spun on
ERROR_REPEAT_S = 5.0  # a repeated processor error is logged at most this often
IDLE_MIN_S, IDLE_MAX_S = 0.0002, 0.001  # source polling back-off: <= 1 ms added latency
STATS_PERIOD_S = 1.0
SIGNAL_POLL_S = 0.1  # how often the main thread looks at the signal flag
POOL_SPARE = 3  # the frame being filled, a pending CUDA frame, and the last output kept for reuse


class Runtime:
    """Real-time frame loop around a processor; see the module docstring.

    `sinks`: each item is a sink (its own thread) or a sequence of sinks sharing one thread.
    `source=None`: txt2img, the processor is called with no input at `target_fps` (or as fast
    as it goes). `clock` stamps arrivals and timings (perf_counter by default); pacing sleeps
    in real time. `on_stats(stats)` is called about once a second.
    """

    def __init__(
        self,
        processor: Processor,
        source: FrameSource | None,
        sinks: Sequence[FrameSink | Sequence[FrameSink]] = (),
        target_fps: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_stats: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if target_fps is not None and (isinstance(target_fps, bool) or not 0 < target_fps <= 1000):
            raise ConfigError(f"target_fps must be in (0, 1000] or None, got {target_fps!r}")
        self._processor = processor
        self._source = source
        self.target_fps = float(target_fps) if target_fps else None
        self._clock = clock
        self._on_stats = on_stats
        self.timings = Timings(clock=clock)
        pin_input = torch.cuda.is_available() and processor.device.type == "cuda"
        # Input: one being filled by the source, one in the mailbox, one being rendered.
        self._in_pool = FramePool("input", 3, pinned=pin_input)
        self._in_box: Mailbox[tuple[Frame, FrameBuffer | None]] = Mailbox("input", on_drop=self._drop_input)
        groups = [[s] if isinstance(s, FrameSink) or not isinstance(s, Sequence) else list(s) for s in sinks]
        # Output: each group holds at most two (mailbox + the one it repeats), the render loop one.
        self._out_pool = FramePool("output", 2 * len(groups) + POOL_SPARE)
        self._groups = [SinkGroup(g, i, self._out_pool) for i, g in enumerate(groups)]
        names = [g.name for g in self._groups]
        for g in self._groups:  # two "null" sinks must not share a line in stats()
            if names.count(g.name) > 1:
                g.name = f"{g.name}#{g.index}"
        self._actions: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.SimpleQueue()
        self._errlog = LogLimiter(log, repeat_s=ERROR_REPEAT_S)
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = self._stopped = False
        self._paused = False
        self._download: DeviceDownload | None = None
        # A CUDA frame whose download is in flight: (out_buf, event, in_buf, arrival, t_done, skipped).
        self._pending: tuple | None = None
        # The last output handed off (the render thread holds a reference): a frame the
        # similarity filter skipped is this same picture, so it is handed off again, uncopied.
        self._last_out: FrameBuffer | None = None
        self.frames_received = 0
        self.frames_rendered = 0
        self.render_errors = 0
        self.last_error = ""

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Runtime:
        """Open the source and sinks (a failure closes what was opened and raises), start the threads."""
        if self._started:
            raise RuntimeError("Runtime.start() called twice; build a new Runtime")
        if self._source is None and self._processor.needs_input:
            raise ConfigError("the processor renders from input frames (img2img) but the runtime was given no source")
        opened: list[tuple[str, Any]] = []
        try:
            for name, obj in self._endpoints():
                obj.open()
                opened.append((name, obj))
        except BaseException:
            for name, obj in reversed(opened):
                close_quietly(name, obj)
            raise
        self._started = True
        if self._source is not None:
            self._spawn("source", self._source_loop)
        self._spawn("render", self._render_loop)
        for g in self._groups:
            g.thread = self._spawn(f"sink-{g.index}", g.serve, self._stopping, self.target_fps, self.timings,
                                   self._clock)
        if self._on_stats is not None:
            self._spawn("stats", self._stats_loop)
        log.info("runtime started: source %s, %d sink group(s), %s", self._source_name(), len(self._groups),
                 f"{self.target_fps:g} fps paced output" if self.target_fps else "unpaced output")
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop every thread, then close the source and sinks; idempotent. True if all threads ended.

        An endpoint whose thread is still running after `timeout` (stuck in a driver) is not
        closed under it (unmapping memory a thread is reading would crash the process); it is
        logged, and the daemon thread dies with the process.
        """
        with self._stop_lock:
            first, self._stopped = not self._stopped, True
        if not first:  # a concurrent or repeated stop: wait for the first one to finish
            if threading.current_thread() not in self._threads:
                self._stop_done.wait(timeout)
            return all(not t.is_alive() for t in self._threads if t is not threading.current_thread())
        self._stopping.set()
        self._in_box.close()
        for g in self._groups:
            g.box.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive() and t is not threading.current_thread()]
        if stuck:
            log.error("threads still running after %.1f s: %s", timeout, ", ".join(stuck))
        with self._stop_lock:
            self._run_actions(refuse=True)
        if self._started:
            if self._source is not None and not any(t.name == "streamvj-source" and t.is_alive()
                                                    for t in self._threads):
                close_quietly(f"source {self._source_name()}", self._source)
            for g in self._groups:
                if g.thread is not None and g.thread.is_alive():
                    continue
                for sink in g.sinks:
                    close_quietly(f"sink {getattr(sink, 'name', sink)}", sink)
        log.info("runtime stopped")
        self._stop_done.set()
        return not stuck

    def run_until_signal(self, timeout: float = 5.0) -> bool:
        """Start (if needed) and run until SIGINT/SIGTERM or stop(); then shut down cleanly.

        Main thread only (Python delivers signals there). The handlers only set a flag: the
        shutdown itself runs here, outside the signal handler. Previous handlers are restored.
        Call it instead of start() so a signal during startup is handled too.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_until_signal() must be called from the main thread")
        # A plain list, not an Event: a handler runs on the main thread between bytecodes,
        # possibly while that thread is inside Event.wait() holding the Event's lock, and
        # Event.set() would then deadlock (the engine kept rendering after SIGTERM). Nor does
        # the handler log (logging takes locks too); the loop reports the signal.
        received: list[int] = []

        def handler(signum: int, _frame: Any) -> None:
            received.append(signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not self._started:
                self.start()
            # Short sleeps: the main thread must get back to bytecode to run the handler.
            while not received and not self._stopping.is_set():
                time.sleep(SIGNAL_POLL_S)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if received:
            log.info("received %s: stopping", signal.Signals(received[0]).name)
        return self.stop(timeout)

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- control (any thread) -----------------------------------------------------------------------

    def call_soon(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the render thread between frames; the future gets its result or error.

        This is how OSC/preset changes reach the pipeline without touching the model from
        another thread. Actions run in order, also while paused or waiting for input.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._stop_lock:  # an action is either refused here or run/failed by stop()'s drain
            if self._stopped:
                fut.set_exception(RuntimeError("runtime is stopped"))
                return fut
            self._actions.put((fn, fut))
        self._in_box.wake()
        return fut

    def pause(self) -> None:
        """Hold the last output: the render loop stops calling the processor; paced sinks repeat it."""
        self._paused = True
        self._in_box.wake()

    def resume(self) -> None:
        self._paused = False
        self._in_box.wake()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        return self._started and not self._stopping.is_set()

    # ---- stats --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Flat numbers for the status line and OSC feedback, plus per-stage and per-sink detail.

        Keys: state, fps (outputs/s), fps_in, fps_sent (primary sink group), latency_ms /
        latency_p90_ms / latency_p99_ms (arrival -> handoff to sinks), skip_ratio (rolling),
        frames_received, frames_rendered, render_errors, error (last processor error text),
        dropped_input, dropped_output, the processor's counters (frames_in, frames_out, skipped,
        unet_calls), stages {name: {median_ms, p90_ms, p99_ms, n}},
        sinks {name: {sent, repeated, dropped (replaced by a newer output before it was sent:
        a slow sink, or pacing below the render rate), errors}} and counts (source/sink/render
        errors).
        """
        snap = self.timings.snapshot()
        if not self._started:
            state = "ready"
        elif self._stopping.is_set():
            state = "stopped"
        else:
            state = "paused" if self._paused else "running"
        out: dict[str, Any] = {"state": state}
        out.update({k: v for k, v in snap.items() if k not in ("stages", "counts")})
        out.update(
            frames_received=self.frames_received,
            frames_rendered=self.frames_rendered,
            render_errors=self.render_errors,
            error=self.last_error,
            dropped_input=self._in_box.dropped,
            dropped_output=sum(g.box.dropped for g in self._groups),
        )
        out.update(dataclasses.asdict(self._processor.counters))
        out["stages"] = snap["stages"]
        out["sinks"] = {
            g.name: {"sent": g.sent, "repeated": g.repeated, "dropped": g.box.dropped, "errors": sum(g.errors)}
            for g in self._groups
        }
        out["counts"] = snap["counts"]
        return out

    # ---- threads ------------------------------------------------------------------------------------

    def _spawn(self, role: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"streamvj-{role}", daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def _endpoints(self) -> list[tuple[str, Any]]:
        src = [] if self._source is None else [(f"source {self._source_name()}", self._source)]
        return src + [(f"sink {getattr(s, 'name', s)}", s) for g in self._groups for s in g.sinks]

    def _source_name(self) -> str:
        return "none (txt2img)" if self._source is None else str(getattr(self._source, "name", self._source))

    def _drop_input(self, item: tuple[Frame, FrameBuffer | None]) -> None:
        self._in_pool.release(item[1])

    def _let_go(self, item: tuple[Frame, FrameBuffer | None] | None) -> None:
        if item is not None:
            self._in_pool.release(item[1])

    def _source_loop(self) -> None:
        src, clock, timings = self._source, self._clock, self.timings
        assert src is not None
        # A source that hands over a fresh array per frame (never touched again) needs no copy;
        # one with `read_latest_into` copies straight into a pooled buffer (one copy, not two).
        owned = bool(getattr(src, "frames_owned", False))
        read_into = getattr(src, "read_latest_into", None)
        lent: list[FrameBuffer] = []

        def acquire(shape: tuple[int, ...]) -> np.ndarray:
            buf = self._in_pool.acquire(tuple(shape))
            lent.append(buf)
            return buf.array

        name = self._source_name()
        idle = IDLE_MIN_S
        while not self._stopping.is_set():
            t0 = clock()
            try:
                rgba = read_into(acquire) if read_into is not None else src.read_latest()
            except Exception as e:  # a vanished driver/peer: log, back off, retry
                for buf in lent:
                    self._in_pool.release(buf)
                lent.clear()
                timings.count("source_errors")
                self._errlog.log(logging.WARNING, f"source {name} failed: {type(e).__name__}: {e}; "
                                                  f"retrying every {SOURCE_RETRY_S:g} s")
                self._stopping.wait(SOURCE_RETRY_S)
                continue
            filled = next((b for b in lent if b.array is rgba), None)
            for buf in lent:  # buffers the source asked for but did not fill (a torn read)
                if buf is not filled:
                    self._in_pool.release(buf)
            lent.clear()
            if rgba is None:
                # Frames come every 16-33 ms; polling back-off keeps a core free without adding
                # more than ~1 ms to latency.
                self._stopping.wait(idle)
                idle = min(idle * 2, IDLE_MAX_S)
                continue
            idle = IDLE_MIN_S
            try:
                check_rgba_u8(rgba, f"source {name}")
            except FrameError as e:
                timings.count("source_errors")
                self._errlog.log(logging.WARNING, str(e))
                self._in_pool.release(filled)
                continue
            buf = filled
            if buf is None and not owned:
                buf = self._in_pool.acquire(rgba.shape)
                np.copyto(buf.array, rgba)
            t1 = clock()
            timings.record("receive", t1 - t0)
            timings.tick("in", t0)
            frame = Frame(rgba if buf is None else buf.array, self.frames_received, t0)
            self.frames_received += 1
            self._in_box.put((frame, buf))

    def _render_loop(self) -> None:
        period = 1.0 / self.target_fps if self.target_fps else 0.0
        next_t = time.monotonic()
        while True:
            self._run_actions()
            if self._stopping.is_set():
                break
            if self._paused:
                self._flush_pending()
                self._let_go(self._in_box.get(WAIT_S))  # keep the input fresh: no stale frame on resume
                continue
            if not self._processor.needs_input:
                # txt2img: nothing to wait for, paced by target_fps. Input the source still
                # delivers is let go, so an img2img pipeline going on air starts from a fresh frame.
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._flush_pending()
                    self._let_go(self._in_box.get(min(delay, WAIT_S)))  # a wakeable sleep
                    continue
                self._let_go(self._in_box.get_nowait())
                next_t = max(next_t + period, time.monotonic() - period) if period else 0.0
                self._render(None)
                continue
            if self._source is None:
                self._errlog.log(logging.WARNING, "the pipeline on air needs input frames (img2img), but this "
                                                  "runtime has no source: holding the last output")
            # With a CUDA frame pending, take a waiting input first (launch it, then hand the
            # pending one off); block only after handing it off, so an idle source adds no latency.
            item = self._in_box.get_nowait() if self._pending is not None else None
            if item is None:
                self._flush_pending()
                item = self._in_box.get(WAIT_S)
            if item is not None:
                self._render(item)
        self._flush_pending()
        self._out_pool.release(self._last_out)
        self._last_out = None
        pending = self._in_box.clear()
        if pending is not None:
            self._in_pool.release(pending[1])

    def _run_actions(self, refuse: bool = False) -> None:
        """Run the queued actions (render thread), or fail them all (`refuse`, from stop())."""
        while True:
            try:
                fn, fut = self._actions.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if refuse:
                fut.set_exception(RuntimeError("runtime stopped before the action ran"))
                continue
            try:
                fut.set_result(fn())
            except Exception as e:  # a bad control change must not end the show
                self._errlog.log(logging.WARNING, f"control action {getattr(fn, '__name__', fn)!r} failed: "
                                                  f"{type(e).__name__}: {e}")
                fut.set_exception(e)

    def _render(self, item: tuple[Frame, FrameBuffer | None] | None) -> None:
        clock, timings, p = self._clock, self.timings, self._processor
        frame, in_buf = item if item is not None else (None, None)
        out_buf: FrameBuffer | None = None
        try:
            t0 = clock()
            t_arrival = frame.t_arrival if frame is not None else t0
            result = p.process(frame.rgba_u8 if frame is not None else None)
            if result.skipped:
                self._flush_pending()  # the output it repeats may still be landing (CUDA)
            out_buf, landed = self._output_buffer(result)
        except Exception as e:  # one bad frame must not end the show: log, keep the last output
            self.render_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            timings.count("render_errors")
            self._errlog.log(logging.ERROR, f"processor failed on frame "
                                            f"{frame.index if frame is not None else self.frames_rendered}: "
                                            f"{self.last_error}", exc_info=True, key=self.last_error)
            self._out_pool.release(out_buf)
            self._in_pool.release(in_buf)
            return
        t1 = clock()
        own = 0.0
        for name, seconds in result.stage_times.items():  # the processor's stages ("params", "preprocess")
            timings.record(name, seconds)
            own += seconds
        timings.record("model", t1 - t0 - own)
        out_buf.index = frame.index if frame is not None else self.frames_rendered
        out_buf.t_arrival = t_arrival
        if landed is None:
            self._in_pool.release(in_buf)
            self._hand_off(out_buf, t1, result.skipped)
            return
        # On CUDA the previous frame is handed off only now, after this one was launched:
        # the GPU finished it while the host prepared this frame (see engine/accel/device_io.py).
        self._flush_pending()
        self._pending = (out_buf, landed, in_buf, t1, result.skipped)

    def _output_buffer(self, result: FrameResult) -> tuple[FrameBuffer, Any]:
        """The pooled host buffer sinks will read this result from, and (CUDA) its landed event."""
        last, output = self._last_out, result.output
        if result.skipped and last is not None and isinstance(output, (np.ndarray, torch.Tensor)) \
                and tuple(output.shape) == last.array.shape:
            # The similarity filter skipped: the processor repeats its last output, which is
            # already on the host. Hand that buffer off again instead of copying it again.
            self._out_pool.retain(last)
            return last, None
        return self._to_host(output)

    def _flush_pending(self) -> None:
        """Wait for the pending CUDA frame's bytes (its event, not a device sync) and hand it off."""
        if self._pending is None:
            return
        out_buf, landed, in_buf, t1, skipped = self._pending
        self._pending = None
        landed.synchronize()
        self._in_pool.release(in_buf)  # its upload ran before the download the event marks
        self._hand_off(out_buf, t1, skipped)

    def _hand_off(self, out_buf: FrameBuffer, t_model_done: float, skipped: bool) -> None:
        clock, timings = self._clock, self.timings
        t2 = clock()
        timings.record("postprocess", t2 - t_model_done)
        self._out_pool.retain(out_buf, len(self._groups))
        for g in self._groups:
            g.box.put(out_buf)
        if out_buf is not self._last_out:
            self._out_pool.retain(out_buf)
            self._out_pool.release(self._last_out)
            self._last_out = out_buf
        self.frames_rendered += 1
        timings.frame_out(out_buf.t_arrival, clock(), skipped)
        self._out_pool.release(out_buf)

    def _to_host(self, result: np.ndarray | torch.Tensor) -> tuple[FrameBuffer, Any]:
        """Copy a processor result into a pooled host buffer (the one copy sinks read from).

        Returns the buffer and, for a CUDA result, the event marking its bytes as landed.
        """
        if isinstance(result, torch.Tensor):
            if result.is_cuda:
                return self._download_cuda(result)
            result = result.detach().numpy()  # a view: the ring copy below is the only copy
        if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.ndim != 3 \
                or result.shape[2] != 4:
            raise FrameError(f"processor must return an HxWx4 uint8 array or tensor, got "
                             f"{type(result).__name__} {getattr(result, 'dtype', '')} "
                             f"{tuple(getattr(result, 'shape', ()))}")
        buf = self._out_pool.acquire(result.shape, pinned=False)
        np.copyto(buf.array, result)
        return buf, None

    def _download_cuda(self, result: torch.Tensor) -> tuple[FrameBuffer, Any]:
        if result.dtype != torch.uint8 or result.ndim != 3 or result.shape[2] != 4:
            raise FrameError(f"processor must return an HxWx4 uint8 tensor, got {result.dtype} "
                             f"{tuple(result.shape)}")
        buf = self._out_pool.acquire(tuple(result.shape), pinned=True)
        assert buf.tensor is not None
        if self._download is None:
            self._download = DeviceDownload(result.device)
        # A producer that alternates output buffers lets the GPU go on with the next frame
        # while this one downloads; any other producer's compute waits for the download.
        return buf, self._download.start(result, buf.tensor, output_read=self._processor.output_read)

    def _stats_loop(self) -> None:
        assert self._on_stats is not None
        while not self._stopping.wait(STATS_PERIOD_S):
            try:
                self._on_stats(self.stats())
            except Exception as e:  # a broken status consumer must not take the engine down
                self._errlog.log(logging.WARNING, f"on_stats failed: {type(e).__name__}: {e}")
