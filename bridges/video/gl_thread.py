"""A thread that owns a thread-bound graphics context: every call on that context goes through it.

An OpenGL context on Windows (WGL) is current on one thread at a time, and the hidden window
a headless context needs can only be destroyed by the thread that created it. Spout creates
both in `createOpenGL()`, and every later call (receive, send, release, `closeOpenGL()`) uses
whatever context is current on the calling thread. The runtime, though, reads a source on its
source thread and closes it on the main thread after that thread ended, and a thread serving
two Spout objects would have only the newest one's context current. So each Spout object gets
a `GLThread` and runs all its calls there: created, used and destroyed on one thread,
whichever thread asks.

`call(fn)` blocks until `fn()` ran on the thread and returns its result or raises its error:
one hand-off per frame or poll (two semaphore operations, tens of microseconds), nothing
allocated per call. A call that outlives its `timeout` (a driver stuck in a call) leaves the
thread marked stuck: later calls are refused at once instead of queueing behind it, and the
daemon thread dies with the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class GLThreadStuck(RuntimeError):
    """A call on the GL thread did not return in time; the thread takes no more calls."""


class GLThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()  # one call at a time, from any number of threads
        self._request = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._fn: Callable[[], Any] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._stuck = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `fn()` on the thread; its result, or its exception raised here."""
        with self._lock:
            if self._stuck:
                raise GLThreadStuck(f"{self.name}: an earlier call is still stuck in the driver")
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name} is stopped")
            self._fn = fn
            self._request.release()
            if not self._done.acquire(timeout=timeout):
                self._stuck = True
                raise GLThreadStuck(f"{self.name}: a call did not return within {timeout:g} s")
            result, error = self._result, self._error
            self._result = self._error = None
        if error is not None:
            raise error
        return result

    def stop(self, timeout: float = 5.0) -> bool:
        """End the thread after the call in progress; True once it ended.

        A stuck thread is not waited for: it ends by itself if its call ever returns."""
        with self._lock:
            if self._thread.is_alive():
                self._fn = None
                self._request.release()
            if self._stuck:
                return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            self._request.acquire()
            fn = self._fn
            if fn is None:
                return
            try:
                self._result = fn()
            except BaseException as exc:  # handed to the caller, who raises it on its own thread
                self._error = exc
            self._done.release()
