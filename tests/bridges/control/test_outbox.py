from __future__ import annotations

import asyncio
import threading

from bridges.control.outbox import Outbox


def test_latest_wins_in_first_come_order() -> None:
    async def main() -> list:
        box = Outbox(asyncio.get_running_loop())
        box.offer("a", "a1")
        box.offer("b", "b1")
        box.offer("a", "a2")  # replaces a1, keeps a's place
        assert box.pending() == 2 and box.dropped == 1
        return [await box.get(), await box.get()]

    assert asyncio.run(main()) == ["a2", "b1"]


def test_a_writer_waiting_is_woken_from_another_thread() -> None:
    async def main() -> list:
        box = Outbox(asyncio.get_running_loop())
        got = []

        async def writer() -> None:
            for _ in range(3):
                got.append(await box.get())

        task = asyncio.create_task(writer())
        await asyncio.sleep(0)  # the writer now waits on an empty box

        def produce() -> None:
            for i in range(3):
                box.offer(i, f"m{i}")

        thread = threading.Thread(target=produce)
        thread.start()
        await asyncio.wait_for(task, 10)
        thread.join()
        return got

    assert asyncio.run(main()) == ["m0", "m1", "m2"]


def test_bounded_by_keys_whatever_is_offered() -> None:
    async def main() -> None:
        box = Outbox(asyncio.get_running_loop())
        for i in range(10_000):
            box.offer(i % 3, b"x" * 100)
        assert box.pending() == 3 and box.dropped == 10_000 - 3

    asyncio.run(main())


def test_closed_box_drops_and_refuses() -> None:
    async def main() -> None:
        box = Outbox(asyncio.get_running_loop())
        box.offer("a", "1")
        box.close()
        box.offer("b", "2")
        assert box.pending() == 0

    asyncio.run(main())


def test_offer_after_the_loop_closed_is_harmless() -> None:
    loop = asyncio.new_event_loop()
    box = Outbox(loop)
    loop.close()
    box.offer("a", "1")  # a producer racing the server's stop: no exception
    assert box.pending() == 1
