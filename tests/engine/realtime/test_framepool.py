from __future__ import annotations

import numpy as np

from engine.realtime.framepool import FramePool


def test_a_buffer_is_reused_only_after_every_holder_released_it():
    pool = FramePool("t", size=2)
    a = pool.acquire((4, 4, 4))
    pool.retain(a, 2)  # three holders now
    b = pool.acquire((4, 4, 4))
    assert b is not a
    pool.release(a)
    pool.release(a)
    c = pool.acquire((4, 4, 4))  # `a` still has a holder: a new buffer, never `a`
    assert c is not a and c is not b
    pool.release(a)
    assert pool.acquire((4, 4, 4)) is a


def test_steady_state_allocates_nothing():
    pool = FramePool("t", size=3)
    for _ in range(100):
        buf = pool.acquire((8, 8, 4))
        pool.release(buf)
    assert pool.allocated == 3


def test_sinks_get_a_read_only_view_of_the_same_memory():
    buf = FramePool("t", size=1).acquire((2, 2, 4))
    buf.array[:] = 7
    assert not buf.view.flags.writeable and buf.array.flags.writeable
    assert np.shares_memory(buf.view, buf.array) and int(buf.view[0, 0, 0]) == 7


def test_a_new_shape_replaces_the_buffers_and_old_ones_are_not_recycled():
    pool = FramePool("t", size=2)
    old = pool.acquire((4, 4, 4))
    new = pool.acquire((8, 8, 4))
    assert new.array.shape == (8, 8, 4)
    pool.release(old)  # lent out across the resize: dropped, not put back
    for _ in range(4):
        buf = pool.acquire((8, 8, 4))
        assert buf is not old and buf.array.shape == (8, 8, 4)
