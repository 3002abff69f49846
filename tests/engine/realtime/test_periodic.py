from __future__ import annotations

import threading

from engine.realtime.periodic import Periodic


def test_calls_until_stopped_and_stop_returns_without_waiting_out_the_period():
    calls, enough = [], threading.Event()

    def tick():
        calls.append(threading.current_thread().name)
        if len(calls) >= 3:
            enough.set()

    ticker = Periodic("streamvj-test", 0.001, tick)
    ticker.start()
    assert enough.wait(10)
    ticker.stop()
    n = len(calls)
    assert set(calls) == {"streamvj-test"} and not any(t.name == "streamvj-test" for t in threading.enumerate())
    assert len(calls) == n  # nothing after stop


def test_immediately_calls_once_before_the_first_period():
    called = threading.Event()
    ticker = Periodic("streamvj-test", 3600.0, called.set, immediately=True)
    ticker.start()
    try:
        assert called.wait(10)  # long before the hour-long period
    finally:
        ticker.stop()  # returns at once: the wait is an Event
