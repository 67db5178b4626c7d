"""What every live page's socket shares (staff pages in ops, the customer's page here):
the base consumer, the close codes, the reader thread and shared renders.

Consumers only read. On connect (every reconnect included) they render the page's live
parts from the database, so an event missed while a socket was down is never lost from
view; on each saga.event they render again and send HTML that htmx swaps out of band.

All sockets in a process that watch the same order get the same HTML for an event, so
each (partial, order, event) is rendered once per process and shared (SharedRenders):
with ten staff on one order that is one database read instead of ten.

Reads run on one dedicated thread that keeps its database connection between reads
(database_read below) rather than through channels' database_sync_to_async, which closes
and reopens the connection around every call: with CONN_MAX_AGE=0 that measured 2.4 ms per
call on SQLite (more on Postgres), paid on every saga event, more than the rest of a
typical event's render (bench/live_updates.py).
"""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import InterfaceError, OperationalError, connection

from . import metrics

logger = logging.getLogger(__name__)

# Close codes the page can tell apart: outside the codes (1006, 1011-1013) on which htmx's
# ws extension reconnects, so a refused page does not retry forever.
CLOSE_FORBIDDEN = 4403  # signed out, or not staff
CLOSE_NOT_FOUND = 4404
# The access check itself failed (the database away): a code on which htmx reconnects, and
# the reconnect asks again from scratch.
CLOSE_CHECK_FAILED = 1011

# Saga events come in bursts (a saga records several within milliseconds, and a bulk
# retry wakes hundreds of sagas at once). Pages whose render is costly for every event
# (the dashboard's counts, the flags card) answer a burst with one render made this long
# after its first event (LiveConsumer.coalesce).
COALESCE_SECONDS = 0.2


class _Reader:
    """One thread for the sockets' reads, keeping its connection while reads keep coming.

    The connection is closed after IDLE_SECONDS without a read (from a timer thread, so it
    happens even when no event loop is left to schedule it), and reopened on the next read;
    a read that finds the connection broken closes it and tries once more.
    """

    IDLE_SECONDS = 2.0

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-reader")
        self.last_read = 0.0
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()

    def run(self, fn: Callable, *args):
        try:
            try:
                return fn(*args)
            except (InterfaceError, OperationalError):
                connection.close()
                return fn(*args)
        finally:
            self._arm_idle_close()

    def _arm_idle_close(self) -> None:
        with self.lock:
            self.last_read = time.monotonic()
            if self.timer is None:
                self.timer = threading.Timer(self.IDLE_SECONDS, self._idle_check)
                self.timer.daemon = True
                self.timer.start()

    def _idle_check(self) -> None:
        with self.lock:
            self.timer = None
            idle = time.monotonic() - self.last_read
        if idle >= self.IDLE_SECONDS:
            self.pool.submit(self._close_if_idle)
        else:
            with self.lock:
                if self.timer is None:
                    self.timer = threading.Timer(self.IDLE_SECONDS - idle, self._idle_check)
                    self.timer.daemon = True
                    self.timer.start()

    def _close_if_idle(self) -> None:
        if time.monotonic() - self.last_read >= self.IDLE_SECONDS:
            connection.close()


_reader = _Reader()


def reader_connection_close() -> None:
    """Close the reader's connection now, not after the idle delay (a test suite about to
    drop its database, a process shutting down)."""
    # A lambda: `connection` must be looked up on the reader thread, not here.
    _reader.pool.submit(lambda: connection.close()).result(timeout=10)


async def database_read(fn: Callable, *args):
    """Run a read (a sync function using the ORM) on the reader thread."""
    return await sync_to_async(_reader.run, thread_sensitive=False, executor=_reader.pool)(fn, *args)


class SharedRenders:
    """Single-flight cache: the first socket to ask for a render starts it, the others
    await the same task. Entries live a few seconds, per event loop."""

    def __init__(self, ttl: float = 5.0, limit: int = 4096):
        self.ttl = ttl
        self.limit = limit
        self._entries: dict[Hashable, tuple[asyncio.AbstractEventLoop, float, asyncio.Task]] = {}

    async def get(self, key: Hashable, render: Callable, *args):
        loop = asyncio.get_running_loop()
        now = loop.time()
        entry = self._entries.get(key)
        if entry is None or entry[0] is not loop or now - entry[1] > self.ttl:
            task = loop.create_task(database_read(render, *args))
            task.add_done_callback(_retrieve_exception)
            entry = self._entries[key] = (loop, now, task)
            if len(self._entries) > self.limit:
                self._prune(now)
        # Shielded: a socket that closes while waiting must not cancel the others' render.
        return await asyncio.shield(entry[2])

    def _prune(self, now: float) -> None:
        for key, (_loop, created, task) in list(self._entries.items()):
            if task.done() and now - created > self.ttl:
                del self._entries[key]


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # awaited by the sockets; here only so asyncio does not warn


shared_renders = SharedRenders()



# --- the base consumer ------------------------------------------------------------------


# Sockets whose answer to "may this socket still be open?" (LiveConsumer.still_allowed) is
# the same share one read per this many seconds, per process.
access_checks = SharedRenders(ttl=1.0)


class AccessFollowingConsumer(AsyncWebsocketConsumer):
    """A socket that follows the access it was opened with (still_allowed): asked before an
    outgoing frame when the last answer is more than a second old, and every
    settings.SOCKET_ACCESS_CHECK_SECONDS while the socket is quiet. Once the answer is no
    (signed out, deactivated, a permission lost, the session expired), the socket is closed
    with 4403 and sends nothing more.

    A class of its own under LiveConsumer, so that LiveConsumer's own accept/send/close
    (metrics, say) reach these through super().
    """

    _access_closed = False  # closed (for access or otherwise): nothing is sent after that
    _access_checked_at = float("-inf")
    _access_watch: asyncio.Task | None = None
    _access_pending: asyncio.Task | None = None

    async def still_allowed(self) -> bool:
        """May this socket stay open? Asked again and again while it is: keep it cheap (a
        few indexed reads, shared through access_checks)."""
        return True

    def access_checked(self) -> None:
        """The consumer has just checked access itself (its connect): no need to ask again yet."""
        self._access_checked_at = time.monotonic()

    async def access_recheck(self) -> bool:
        """Ask still_allowed now; close with 4403 when the answer is no. Returns whether open.
        A frame and the periodic check asking at once share one question: neither goes on
        before the answer is in."""
        if self._access_closed:
            return False
        if self._access_pending is None:
            self._access_pending = asyncio.ensure_future(self._access_ask())
        try:
            return await asyncio.shield(self._access_pending)
        finally:
            if self._access_pending is not None and self._access_pending.done():
                self._access_pending = None

    async def _access_ask(self) -> bool:
        asked_at = time.monotonic()
        try:
            allowed = await self.still_allowed()
        except Exception:
            logger.exception("could not check the access of a socket on %s; closing it", self.scope.get("path"))
            await self.access_close(CLOSE_CHECK_FAILED)
            return False
        if not allowed:
            await self.access_close(CLOSE_FORBIDDEN)
            return False
        self._access_checked_at = asked_at  # when the answer was read, not when it came back
        return True

    async def access_close(self, code: int = CLOSE_FORBIDDEN) -> None:
        if self._access_closed:
            return
        self._access_closed = True
        # Leave the groups now: no message need reach a socket that may send nothing more.
        for group in self.groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                logger.warning("could not leave %s", group, exc_info=True)
        await super().close(code=code)

    async def _watch_access(self) -> None:
        from django.conf import settings

        interval = settings.SOCKET_ACCESS_CHECK_SECONDS
        while not self._access_closed:
            await asyncio.sleep(max(0.0, self._access_checked_at + interval - time.monotonic()))
            if self._access_closed:
                return
            if time.monotonic() - self._access_checked_at >= interval and not await self.access_recheck():
                return

    async def accept(self, subprotocol=None, headers=None):
        await super().accept(subprotocol, headers)
        if self._access_watch is None:
            self._access_watch = asyncio.ensure_future(self._watch_access())

    async def send(self, text_data=None, bytes_data=None, close=False):
        if self._access_closed:
            return
        if time.monotonic() - self._access_checked_at >= access_checks.ttl and not await self.access_recheck():
            return
        await super().send(text_data, bytes_data, close)

    async def close(self, code=None, reason=None):
        # Any close (a refusal right after accept included) ends the checks and the frames.
        self._access_closed = True
        await super().close(code=code, reason=reason)

    async def websocket_disconnect(self, message):
        self._access_closed = True
        if self._access_watch is not None:
            self._access_watch.cancel()
        await super().websocket_disconnect(message)


class LiveConsumer(AccessFollowingConsumer):
    """The base of every live page's socket: read-only, refuses with a close code, sends
    what a render returns, and can coalesce a burst of events into one render. It follows
    the access it was opened with (AccessFollowingConsumer).

    Channels closes stale connections of its shared sync thread before every handler, one
    thread hop per message: per socket per saga event here, which measured more than the
    socket's share of the render. These consumers never use that thread's connection (their
    reads go through database_read, or database_sync_to_async, which closes its own), so
    the hop is skipped.
    """

    groups: list[str] = []  # joined in connect (join), after any permission check
    _coalesce_since: float | None = None
    _coalesce_task: asyncio.Task | None = None

    _metrics_open = False
    # When the oldest saga event not yet shown on this socket was committed (epoch seconds).
    _pending_commit: float | None = None

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        committed_at = message.get("committed_at")
        if committed_at is not None and self._pending_commit is None:
            self._pending_commit = committed_at
        await handler(message)

    # Metrics: open sockets, frames, and how long after its commit an event's frame leaves.
    async def accept(self, subprotocol=None, headers=None):
        await super().accept(subprotocol, headers)
        if not self._metrics_open:
            self._metrics_open = True
            metrics.websocket_opened(type(self).__name__)

    async def websocket_disconnect(self, message):
        if self._metrics_open:
            self._metrics_open = False
            metrics.websocket_closed(type(self).__name__)
        await super().websocket_disconnect(message)

    async def send(self, text_data=None, bytes_data=None, close=False):
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        if text_data is not None or bytes_data is not None:
            committed_at, self._pending_commit = self._pending_commit, None
            metrics.websocket_frame_sent(type(self).__name__, committed_at)

    async def refuse(self, code: int) -> None:
        # Accept, then close with a code: a refused handshake reaches the browser as 1006,
        # on which the ws extension would keep reconnecting.
        await self.accept()
        await self.close(code=code)

    async def join(self, *groups: str) -> None:
        # Join before the first render: an event committed in between is then either in
        # the render or announced afterwards, never lost.
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups = [*self.groups, *groups]

    async def receive(self, text_data=None, bytes_data=None):
        return  # the pages send nothing the server needs

    async def disconnect(self, code):
        if self._coalesce_task is not None:
            self._coalesce_task.cancel()

    async def send_safely(self, render: Callable[[], Awaitable[str]]) -> None:
        """Send what `render()` returns; a failed render is logged and the socket stays open."""
        try:
            html = await render()
        except Exception:
            logger.exception("could not render a live update for %s", self.scope.get("path"))
            return
        if html:
            await self.send(text_data=html)
        else:
            self._pending_commit = None  # the event needed no frame: nothing to time

    def coalesce(self, send: Callable[[float], Awaitable[None]], seconds: float = COALESCE_SECONDS) -> None:
        """Answer a burst of events with one `send(requested_at)` `seconds` after its
        first event; events that arrive meanwhile (or during the send) get one more.
        `requested_at` is when the first event it answers arrived: a render shared with
        other sockets may be reused only if it started after that."""
        if self._coalesce_since is None:
            self._coalesce_since = time.monotonic()
        if self._coalesce_task is None:
            self._coalesce_task = asyncio.ensure_future(self._coalesced(send, seconds))

    async def _coalesced(self, send: Callable[[float], Awaitable[None]], seconds: float) -> None:
        # No await between the check and clearing the task, so an event cannot slip between them.
        try:
            while self._coalesce_since is not None:
                await asyncio.sleep(seconds)
                requested_at, self._coalesce_since = self._coalesce_since, None
                await send(requested_at)
        finally:
            self._coalesce_task = None
