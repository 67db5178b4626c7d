"""The flagged-sagas card's live socket (ws/ops/background/flags/).

The consumer never writes. It joins the flags group, where the sweeper announces every
change of flags (with the rows, so no query is needed), and the ops group, where saga
events go: when a saga shown as flagged records an event it has moved again, so the card
is re-rendered from the database at once instead of waiting for the next sweep.
"""

import asyncio
from datetime import datetime

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from orders.broadcast import OPS_GROUP

from .permissions import staff_member
from .sweeper import FLAGS_GROUP, FlagList, FlagRow, stall_flags_card_context

# Close code for "not staff": htmx's ws extension does not reconnect on it.
CLOSE_FORBIDDEN = 4403
# A saga records several events within milliseconds: answer the burst with one render.
COALESCE_SECONDS = 0.2


def stall_flags_card_html(context: dict) -> str:
    return render_to_string("ops/background/partials/flags.html", {**context, "oob": True})


class StallFlagsConsumer(AsyncWebsocketConsumer):
    groups: tuple = ()  # joined in connect, after the permission check

    async def connect(self):
        self._shown: set[int] = set()
        self._rerender: asyncio.Task | None = None
        if not await database_sync_to_async(staff_member)(self.scope.get("user")):
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        # Join first, render second: a change committed in between is then either in the
        # render or announced afterwards.
        for group in (FLAGS_GROUP, OPS_GROUP):
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups = (FLAGS_GROUP, OPS_GROUP)
        await self._send_from_database()

    async def disconnect(self, code):
        if self._rerender is not None:
            self._rerender.cancel()

    async def receive(self, text_data=None, bytes_data=None):
        return

    async def stall_flags(self, message):
        flags = FlagList(rows=[FlagRow.from_message(r) for r in message["flags"]], total=message["total"])
        swept_at = message.get("swept_at")
        context = {
            "flags": flags,
            "swept_at": datetime.fromisoformat(swept_at) if swept_at else None,
            "sweep_error": message.get("sweep_error", ""),
        }
        await self._send(context)

    async def saga_event(self, message):
        if message.get("order", {}).get("order_id") in self._shown and self._rerender is None:
            self._rerender = asyncio.ensure_future(self._rerender_soon())

    async def _rerender_soon(self):
        try:
            await asyncio.sleep(COALESCE_SECONDS)
            await self._send_from_database()
        finally:
            self._rerender = None

    async def _send_from_database(self):
        await self._send(await database_sync_to_async(stall_flags_card_context)())

    async def _send(self, context: dict):
        self._shown = {row.order_id for row in context["flags"].rows}
        # Rendering reads no database: the rows are in the context already.
        await self.send(text_data=stall_flags_card_html(context))
