"""Runtime: the real-time loop that moves frames source -> processor -> sinks (DESIGN.md "Data flow").

Threads (all named 'streamvj-<role>', all daemons so a hung driver can't keep the process alive):

- one per source (engine/realtime/source_reader.py): the newest frame into a pooled buffer and
  the input mailbox (latest wins: frames the render loop had no time for are dropped, never
  queued, so latency stays bounded by one frame plus one render);
- one render loop (engine/realtime/render_loop.py): the ONLY thread that calls the processor
  (the model), through the `Processor` protocol (engine/realtime/processor.py). It runs
  control actions (`call_soon`) between frames, calls `process`, and hands the output to every
  sink group's mailbox through a pooled host buffer (engine/realtime/handoff.py);
- one per sink group (engine/realtime/sinkgroup.py): sends the newest output; with
  `target_fps` it sends on a steady clock, repeating the last frame when the model skipped,
  is slower or is paused. A slow sink only drops frames for itself; it never stalls the
  render loop;
- one stats thread when `on_stats` is given: calls it about once a second.

This module starts, controls and stops them. Buffers handed across threads are reference
counted: a pooled buffer is rewritten only after every holder (a mailbox slot, a sink
repeating it) gave it back, so a sink never sees a frame being overwritten, and the steady
state allocates no frame memory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.errors import ConfigError
from engine.realtime.framepool import FramePool
from engine.realtime.frames import FrameSink, FrameSource
from engine.realtime.handoff import OutputHandoff
from engine.realtime.log_limit import LogLimiter
from engine.realtime.mailbox import Mailbox
from engine.realtime.os_signals import signal_label, stop_signals
from engine.realtime.processor import Processor
from engine.realtime.render_loop import RenderLoop
from engine.realtime.sinkgroup import SinkGroup, close_quietly
from engine.realtime.source_reader import InputItem, SourceReader, source_name
from engine.realtime.timings import Timings

log = logging.getLogger("streamvj.runtime")

ERROR_REPEAT_S = 5.0  # a repeated processor or source error is logged at most this often
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
        self._in_box: Mailbox[InputItem] = Mailbox("input", on_drop=lambda item: self._in_pool.release(item[1]))
        groups = [[s] if isinstance(s, FrameSink) or not isinstance(s, Sequence) else list(s) for s in sinks]
        # Output: each group holds at most two (mailbox + the one it repeats), the render loop one.
        self._out_pool = FramePool("output", 2 * len(groups) + POOL_SPARE)
        self._groups = [SinkGroup(g, i, self._out_pool) for i, g in enumerate(groups)]
        names = [g.name for g in self._groups]
        for g in self._groups:  # two "null" sinks must not share a line in stats()
            if names.count(g.name) > 1:
                g.name = f"{g.name}#{g.index}"
        self._errlog = LogLimiter(log, repeat_s=ERROR_REPEAT_S)
        self._reader = None if source is None else SourceReader(source, self._in_pool, self._in_box, self.timings,
                                                                 clock, self._errlog)
        self._handoff = OutputHandoff(self._out_pool, self._in_pool, self._groups, self.timings, clock)
        self._renderer = RenderLoop(processor, self._in_box, self._in_pool, self._handoff, self.timings, clock,
                                    self._errlog, self.target_fps, has_source=source is not None)
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = self._stopped = False

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
        if self._reader is not None:
            self._spawn("source", self._reader.run, self._stopping)
        self._spawn("render", self._renderer.run, self._stopping)
        for g in self._groups:
            g.thread = self._spawn(f"sink-{g.index}", g.serve, self._stopping, self.target_fps, self.timings,
                                   self._clock)
        if self._on_stats is not None:
            self._spawn("stats", self._stats_loop)
        log.info("runtime started: source %s, %d sink group(s), %s", source_name(self._source), len(self._groups),
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
            self._renderer.run_actions(refuse=True)
        if self._started:
            if self._source is not None and not any(t.name == "streamvj-source" and t.is_alive()
                                                    for t in self._threads):
                close_quietly(f"source {source_name(self._source)}", self._source)
            for g in self._groups:
                if g.thread is not None and g.thread.is_alive():
                    continue
                for sink in g.sinks:
                    close_quietly(f"sink {sink.name}", sink)
        log.info("runtime stopped")
        self._stop_done.set()
        return not stuck

    def run_until_signal(self, timeout: float = 5.0) -> bool:
        """Start (if needed) and run until a stop signal or stop(); then shut down cleanly.

        The stop signals are engine/realtime/os_signals.py's: Ctrl-C, SIGTERM, and Ctrl-Break
        (SIGBREAK) on Windows. Main thread only (Python delivers signals there). The handlers
        only set a flag: the shutdown itself runs here, outside the signal handler. Previous
        handlers are restored. Call it instead of start() so a signal during startup is handled too.
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

        previous = {s: signal.signal(s, handler) for s in stop_signals()}
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
            log.info("received %s: stopping", signal_label(received[0]))
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
            self._renderer.actions.put((fn, fut))
        self._in_box.wake()
        return fut

    def pause(self) -> None:
        """Hold the last output: the render loop stops calling the processor; paced sinks repeat it."""
        self._renderer.paused = True
        self._in_box.wake()

    def resume(self) -> None:
        self._renderer.paused = False
        self._in_box.wake()

    @property
    def paused(self) -> bool:
        return self._renderer.paused

    @property
    def running(self) -> bool:
        return self._started and not self._stopping.is_set()

    @property
    def frames_received(self) -> int:
        return 0 if self._reader is None else self._reader.received

    @property
    def frames_rendered(self) -> int:
        return self._handoff.rendered

    @property
    def render_errors(self) -> int:
        return self._renderer.errors

    @property
    def last_error(self) -> str:
        """The last processor error, as "Type: message"."""
        return self._renderer.last_error

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
            state = "paused" if self._renderer.paused else "running"
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
        src = [] if self._source is None else [(f"source {source_name(self._source)}", self._source)]
        return src + [(f"sink {s.name}", s) for g in self._groups for s in g.sinks]

    def _stats_loop(self) -> None:
        assert self._on_stats is not None
        while not self._stopping.wait(STATS_PERIOD_S):
            try:
                self._on_stats(self.stats())
            except Exception as e:  # a broken status consumer must not take the engine down
                self._errlog.log(logging.WARNING, f"on_stats failed: {type(e).__name__}: {e}")
