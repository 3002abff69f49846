"""GLThread: every call runs on its one thread, results and errors come back, a stuck call is fenced off."""

from __future__ import annotations

import threading

import pytest

from bridges.video.gl_thread import GLThread, GLThreadStuck


@pytest.fixture
def gl():
    thread = GLThread("streamvj-test-gl")
    yield thread
    thread.stop(10)


def test_calls_run_on_the_thread_and_return_their_result(gl):
    assert gl.call(threading.get_ident) == gl.ident != threading.get_ident()
    assert gl.call(lambda: threading.current_thread().name) == "streamvj-test-gl"


def test_an_error_is_raised_in_the_caller(gl):
    def fails():
        raise ValueError("driver said no")

    with pytest.raises(ValueError, match="driver said no"):
        gl.call(fails)
    assert gl.call(lambda: 7) == 7  # the thread keeps serving


def test_callers_on_many_threads_are_served_one_at_a_time(gl):
    inside, overlaps, seen = [0], [], []

    def work(k):
        inside[0] += 1
        overlaps.append(inside[0])
        seen.append((k, threading.get_ident()))
        inside[0] -= 1
        return k

    results: list[int] = []
    callers = [threading.Thread(target=lambda k=k: results.extend(gl.call(lambda: work(k)) for _ in range(50)))
               for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(60)
    assert sorted(results) == sorted(k for k in range(4) for _ in range(50))
    assert set(overlaps) == {1} and {ident for _, ident in seen} == {gl.ident}


def test_stop_ends_the_thread_and_later_calls_are_refused(gl):
    assert gl.stop(10)
    assert not [t for t in threading.enumerate() if t.name == "streamvj-test-gl"]
    with pytest.raises(RuntimeError, match="stopped"):
        gl.call(lambda: None)
    assert gl.stop(10)  # idempotent


def test_a_stuck_call_is_fenced_off_and_the_thread_ends_when_it_returns(gl):
    driver = threading.Event()
    with pytest.raises(GLThreadStuck, match="did not return"):
        gl.call(lambda: driver.wait(60), timeout=0.05)
    with pytest.raises(GLThreadStuck, match="still stuck"):
        gl.call(lambda: None)  # refused at once, not queued behind the stuck call
    assert gl.stop(10) is False  # not waited for
    driver.set()
    for t in [t for t in threading.enumerate() if t.name == "streamvj-test-gl"]:
        t.join(30)
    assert not [t for t in threading.enumerate() if t.name == "streamvj-test-gl"]
