"""Each connection's outgoing queue, and the one way frames leave it.

Fan-out policy. A room queues messages for a client in the step that made them, so every client
sees updates in version order. Each connection has its own bounded queue (`Outbox`). A client
whose queue overflows (``outbound_queue_size`` messages or ``outbound_queue_chars``
characters, whichever comes first), whose socket write takes longer than
``send_timeout_seconds``, or whose write fails is dropped (counted in
``collab_dropped_sockets_total{reason}`` and announced as left); it never delays the others.

Writing. `Outbox.write_queued` is the one place frames are taken from a queue and written. A
transport that can write a frame without waiting (`Transport.writer`) is written to once per
event-loop turn, for every connection that had something queued in that turn (`Outboxes.flush`:
no task switch per frame). Whatever such a write cannot take (no writer, or the connection's
buffer is full) is written by the connection's own sender task (`Outbox.run`), which awaits the
transport's ``send``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol as TypingProtocol

import structlog

from observability import metrics
from rooms.addresses import Address
from rooms.session import DropReason, Session

log = structlog.get_logger("collab.rooms")

Writer = Callable[[str], None]
Entry = str | tuple[str, ...]  # one frame, or a burst of frames that must leave together


class Transport(TypingProtocol):
    """What a room needs of a client connection.

    A transport may also have ``writer() -> Callable[[str], None] | None``: a function that
    writes one frame at once, or None while the connection cannot take one without waiting.
    """

    name: str  # the `transport` label of metrics, e.g. "websocket"

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def _size(entry: Entry) -> int:
    return len(entry) if isinstance(entry, str) else sum(map(len, entry))


class Outbox:
    """One connection's queue of frames (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        transport: Transport,
        *,
        max_messages: int,
        max_chars: int,
        clock: Callable[[], float],
        on_drop: Callable[[Session, DropReason], None],
        address: Address | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.clock = clock
        self.on_drop = on_drop
        self.address = address  # the entry of the client's address, whose sessions it counts
        self.writer: Callable[[], Writer | None] | None = getattr(transport, "writer", None)
        # Each entry with when it was queued.
        self.queue: deque[tuple[Entry, float]] = deque()
        self.queued_chars = 0  # full-text messages make the sizes uneven
        # When the write in progress started (None while idle): the watchdog drops a stuck one.
        self.sending_since: float | None = None
        # Set while the sender waits for something to send; whoever queues resolves it. A bare
        # future rather than an asyncio.Event: this wakes a sender for every update.
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _take(self) -> tuple[tuple[str, ...], float]:
        """The frames to write next, and when the first was queued: for a batching client
        everything queued as one frame (a JSON array), for any other the first entry's frames."""
        queue = self.queue
        if self.session.batch:
            queued_at = queue[0][1]
            messages: list[str] = []
            for entry, _ in queue:
                if isinstance(entry, str):
                    messages.append(entry)
                else:
                    messages.extend(entry)
            queue.clear()
            self.queued_chars = 0
            return ("[" + ",".join(messages) + "]",) if len(messages) > 1 else (messages[0],), queued_at
        entry, queued_at = queue.popleft()
        self.queued_chars -= _size(entry)
        return (entry,) if isinstance(entry, str) else entry, queued_at

    def write_queued(self, now: float | None = None) -> bool:
        """Write everything queued at once, through the transport's writer; False when it
        cannot take a frame without waiting (then the sender awaits ``send``). A failed write
        drops the client. ``now``: the clock, when the caller has read it already."""
        if self.session.closed:
            return True  # dropped: nothing more is written
        write = self.writer() if self.writer is not None else None
        if write is None:
            return False
        queued_at = self.queue[0][1]  # the oldest message this write carries
        try:
            while self.queue:
                frames, _ = self._take()
                for frame in frames:
                    write(frame)
        except Exception as exc:
            self._failed(exc)
            return True
        metrics.FANOUT.observe((self.clock() if now is None else now) - queued_at)
        return True

    async def run(self) -> None:
        """The connection's sender: writes what the end-of-turn flush could not."""
        queue = self.queue
        loop = asyncio.get_running_loop()
        try:
            while not self.session.closed:
                if not queue:
                    self.waiter = waiter = loop.create_future()
                    await waiter
                while queue and not self.write_queued():
                    frames, queued_at = self._take()
                    for frame in frames:
                        # No asyncio.timeout() here: arming a timer per frame was the largest
                        # cost of a fan-out; the watchdog checks `sending_since` once a second.
                        self.sending_since = self.clock()
                        await self.transport.send(frame)
                        self.sending_since = None
                    metrics.FANOUT.observe(self.clock() - queued_at)
        except asyncio.CancelledError:
            # Ending quietly keeps no exception on the task: a kept one would hold this frame,
            # the frame the outbox, and the outbox the task, a cycle only a full collection frees.
            return
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        session = self.session
        log.info("send_failed", room_id=session.room.room_id, user_id=session.user_id, error=type(exc).__name__)
        self.on_drop(session, DropReason.SEND_FAILED)


class Outboxes:
    """Every connection's outbox, and the write at the end of each event-loop turn."""

    def __init__(self) -> None:
        self.by_session: dict[Session, Outbox] = {}
        self._unsent: dict[Outbox, None] = {}  # outboxes with something queued in this turn
        self._flush_scheduled = False

    def put(self, outbox: Outbox, entry: Entry) -> bool:
        """Queue an entry for writing at the end of this turn; False (and nothing queued) when
        the queue is full. An entry always fits an empty queue, however large: the limits catch
        a client that falls behind, not one big message."""
        queue = outbox.queue
        size = len(entry) if type(entry) is str else sum(map(len, entry))
        if queue and (len(queue) >= outbox.max_messages or outbox.queued_chars + size > outbox.max_chars):
            return False
        queue.append((entry, outbox.clock()))
        outbox.queued_chars += size
        if outbox.waiter is not None:  # the sender is idle
            if outbox.writer is not None:
                self._unsent[outbox] = None
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self.flush)
            else:
                outbox.wake()
        return True

    @property
    def flushing(self) -> bool:
        """Whether a write at the end of this turn is still to come."""
        return self._flush_scheduled

    def flush(self) -> None:
        """Write what this turn queued, to every connection that takes it now; wake the sender
        of any that cannot."""
        self._flush_scheduled = False
        outboxes, self._unsent = self._unsent, {}
        now: float | None = None
        for outbox in outboxes:
            if outbox.session.closed or outbox.waiter is None or not outbox.queue:
                continue  # gone, or its sender is busy: the sender takes the queue itself
            if now is None:
                now = outbox.clock()  # one clock for the whole flush: they are written together
            if not outbox.write_queued(now):
                outbox.wake()
