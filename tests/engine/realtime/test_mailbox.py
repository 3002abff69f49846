from __future__ import annotations

import threading

from engine.realtime.mailbox import Mailbox


def test_put_then_get_and_counters():
    box: Mailbox[int] = Mailbox()
    assert box.put(1) is False
    assert box.get(0) == 1
    assert box.get(0) is None
    assert box.counters() == {"put": 1, "taken": 1, "dropped": 0}


def test_latest_wins_and_the_replaced_item_counts_as_dropped():
    dropped: list[int] = []
    box: Mailbox[int] = Mailbox(on_drop=dropped.append)
    box.put(1)
    assert box.put(2) is True
    assert box.put(3) is True
    assert box.get_nowait() == 3
    assert dropped == [1, 2]
    assert box.counters() == {"put": 3, "taken": 1, "dropped": 2}


def test_get_times_out_with_none():
    box: Mailbox[int] = Mailbox()
    assert box.get(0.01) is None
    assert box.get(0) is None
    assert box.get_nowait() is None


def test_get_blocks_until_another_thread_puts():
    box: Mailbox[str] = Mailbox()
    waiting = threading.Event()
    got: list[str | None] = []

    def consumer() -> None:
        waiting.set()
        got.append(box.get(timeout=30))

    t = threading.Thread(target=consumer)
    t.start()
    waiting.wait(10)
    box.put("frame")
    t.join(30)
    assert got == ["frame"]


def test_close_wakes_a_waiter_and_refuses_later_puts():
    dropped: list[int] = []
    box: Mailbox[int] = Mailbox(on_drop=dropped.append)
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(box.get()))  # no timeout: only close() ends it
    t.start()
    box.close()
    t.join(30)
    assert not t.is_alive() and got == [None]
    assert box.closed
    assert box.put(7) is False
    assert dropped == [7]  # handed back (a pooled buffer returns to its pool), not counted
    assert box.counters() == {"put": 0, "taken": 0, "dropped": 0}


def test_item_put_before_close_can_still_be_taken():
    box: Mailbox[int] = Mailbox()
    box.put(5)
    box.close()
    assert box.get() == 5
    assert box.get() is None


def test_wake_returns_none_without_consuming():
    box: Mailbox[int] = Mailbox()
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(box.get(timeout=30)))
    t.start()
    box.wake()
    t.join(30)
    assert got == [None]
    box.put(1)
    assert box.get(0) == 1  # the wake flag was consumed by the woken get


def test_clear_removes_without_counting():
    box: Mailbox[int] = Mailbox()
    box.put(4)
    assert box.clear() == 4
    assert box.get_nowait() is None
    assert box.counters() == {"put": 1, "taken": 0, "dropped": 0}


def test_threaded_producer_consumer_never_queues_and_accounts_for_every_item():
    box: Mailbox[int] = Mailbox()
    n = 20000
    taken: list[int] = []
    done = threading.Event()

    def consumer() -> None:
        while True:
            item = box.get(timeout=0.01)
            if item is not None:
                taken.append(item)
            elif done.is_set() and box.get_nowait() is None:
                return

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(n):
        box.put(i)
    done.set()
    t.join(30)
    c = box.counters()
    assert c["put"] == n
    assert c["taken"] == len(taken)
    assert c["taken"] + c["dropped"] == n
    assert taken == sorted(set(taken))  # strictly increasing: newest only, never out of order
    assert taken[-1] == n - 1  # the last item is never lost
