"""The dashboard's live socket: counts and recent activity, re-rendered from the database.

The consumer never writes. It joins the `ops` group, and on connect and after saga
events it sends the dashboard's partials (swapped in by id, out of band, by htmx's ws
extension). Since the partials are always rendered from the database, an event missed
while a socket was down is caught up on the next connect or the next event.

A burst of saga events is answered by one render (LiveConsumer.coalesce): the counts are
a GROUP BY over every order (tens of ms at 100,000 orders), so a busy minute costs at
most five renders a second per process instead of one per event per open dashboard.
"""

import asyncio
import time
import weakref

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from orders.broadcast import OPS_GROUP

from .dashboard import dashboard_figures_html
from .live import StaffConsumer
from .selectors import service_outages


def dashboard_live_html() -> str:
    """The outage banner and the figures, marked for out-of-band swap (the figures from
    the cache when their data has not changed: ops.dashboard)."""
    return render_to_string("ops/partials/dashboard_live.html", {
        "outages": service_outages(),
        "figures": dashboard_figures_html(oob=True),
        "oob": True,
    })


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
            # Not the sockets' reader thread: this GROUP BY would hold up the order pages' renders.
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


class OpsDashboardConsumer(StaffConsumer):
    async def connect(self):
        if not await self.authorize():
            return
        await self.accept()
        await self.join(OPS_GROUP)
        await self._send_dashboard(time.monotonic())

    async def saga_event(self, message):
        self.coalesce(self._send_dashboard)

    async def _send_dashboard(self, requested_at: float):
        await self.send(text_data=await _shared_render().html(requested_at))
