"""The dashboard's live socket: counts and recent activity, re-rendered from the database.

The consumer never writes. It joins the `ops` group, and on connect and after saga
events it sends the dashboard's partials (swapped in by id, out of band, by htmx's ws
extension). Since the partials are always rendered from the database, an event missed
while a socket was down is caught up on the next connect or the next event.
"""

import asyncio
import time
import weakref

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from orders.broadcast import OPS_GROUP

from .permissions import staff_member
from .selectors import dashboard_snapshot

# Close code for "signed out or not staff": outside the codes (1006, 1011-1013) on which
# htmx's ws extension reconnects, so a refused page does not retry forever.
CLOSE_FORBIDDEN = 4403

# Saga events come in bursts (a saga records several within milliseconds, and a bulk
# retry wakes hundreds of sagas at once). Each burst is answered by one re-render made
# this long after its first event, instead of one re-render per event: the counts are a
# GROUP BY over every order (tens of ms at 100,000 orders), so a busy minute costs at
# most five renders a second per process instead of one per event per open dashboard.
COALESCE_SECONDS = 0.2


def dashboard_live_html() -> str:
    """Both live partials, marked for out-of-band swap. Three queries."""
    return render_to_string("ops/partials/dashboard_live.html", {"snapshot": dashboard_snapshot(), "oob": True})


class _SharedRender:
    """One dashboard render shared by every socket of this process's event loop.

    The partials are the same for every viewer, so when fifty dashboards are open a burst
    costs one set of queries, not fifty. A caller may reuse a render only if it started
    after the caller's request time: a render that started earlier may have read the
    database before the caller's event was committed.
    """

    def __init__(self) -> None:
        self._task: asyncio.Future | None = None
        self._started_at = float("-inf")

    async def html(self, requested_at: float) -> str:
        task = self._task
        stale = task is None or self._started_at < requested_at or (task.done() and task.exception() is not None)
        if stale:
            self._started_at = time.monotonic()
            task = self._task = asyncio.ensure_future(database_sync_to_async(dashboard_live_html)())
        # shield: one socket closing mid-render must not cancel the render for the others.
        return await asyncio.shield(task)


_renders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedRender]" = weakref.WeakKeyDictionary()


def _shared_render() -> _SharedRender:
    loop = asyncio.get_running_loop()
    render = _renders.get(loop)
    if render is None:
        render = _renders[loop] = _SharedRender()
    return render


class OpsDashboardConsumer(AsyncWebsocketConsumer):
    groups: list[str] = []  # joined in connect, after the permission check

    async def connect(self):
        self._pending_since: float | None = None
        self._flush_task: asyncio.Task | None = None
        user = self.scope.get("user")
        if not await database_sync_to_async(staff_member)(user):
            # Accept, then close with a code: a refusal during the handshake reaches the
            # browser as 1006, on which the ws extension would reconnect forever.
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        # Join first, render second: an event committed in between is then either in
        # the render or announced afterwards, never lost.
        await self.channel_layer.group_add(OPS_GROUP, self.channel_name)
        self.groups = [OPS_GROUP]
        await self._send_dashboard(time.monotonic())

    async def disconnect(self, code):
        if self._flush_task is not None:
            self._flush_task.cancel()

    async def receive(self, text_data=None, bytes_data=None):
        # The page sends nothing the server needs.
        return

    async def saga_event(self, message):
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        if self._flush_task is None:
            self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self):
        # Loop until no event arrived during the last wait or render; no await between the
        # check and clearing the task, so an event cannot slip between them.
        try:
            while self._pending_since is not None:
                await asyncio.sleep(COALESCE_SECONDS)
                requested_at, self._pending_since = self._pending_since, None
                await self._send_dashboard(requested_at)
        finally:
            self._flush_task = None

    async def _send_dashboard(self, requested_at: float):
        await self.send(text_data=await _shared_render().html(requested_at))
