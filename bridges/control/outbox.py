"""A WebSocket client's outgoing messages: latest wins per key, never blocking the producer.

Producers (the ParamStore's listeners on the OSC or MIDI thread, the preview encoder, the
status tick) call `offer` from any thread; the client's writer task on the server's event
loop awaits `get`. A client that reads slowly gets the latest value of each key, in the
order the keys first became pending, never a backlog: the queue holds at most one message
per key, so its size is bounded by the number of keys, whatever the producers do.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Hashable

Message = str | bytes  # text (JSON) or binary (OSC, JPEG) WebSocket message


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: OrderedDict[Hashable, Message] = OrderedDict()
        self._ready = asyncio.Event()  # touched only on the loop's thread
        self._armed = False  # a wake-up is scheduled or the writer will look again: no second one
        self._closed = False
        self.dropped = 0  # messages replaced by a newer one before they were sent

    def offer(self, key: Hashable, message: Message) -> None:
        """Queue `message`; an unsent one with the same key is replaced (it keeps its place)."""
        with self._lock:
            if self._closed:
                return
            if key in self._pending:
                self.dropped += 1
            self._pending[key] = message
            if self._armed:
                return
            self._armed = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop closed under us: the client is gone anyway
            pass

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Drop what is pending and refuse new offers (the client is leaving)."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    async def get(self) -> Message:
        """The oldest pending message (on the loop's thread)."""
        while True:
            with self._lock:
                if self._pending:
                    return self._pending.popitem(last=False)[1]
                self._armed = False
                self._ready.clear()
            await self._ready.wait()
