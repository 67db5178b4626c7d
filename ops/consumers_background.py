"""The flagged-sagas card's live socket (ws/ops/background/flags/).

The consumer never writes. It joins the flags group, where the sweeper announces every
change of flags (with the rows, so no query is needed), and the ops group, where saga
events go: when a saga shown as flagged records an event it has moved again, so the card
is re-rendered from the database at once (a burst coalesced into one render) instead of
waiting for the next sweep.
"""

from datetime import datetime

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from orders.broadcast import OPS_GROUP

from .live import StaffConsumer
from .stalls.selectors import FlagList, FlagRow, stall_flags_card_context
from .stalls.services import FLAGS_GROUP


def stall_flags_card_html(context: dict) -> str:
    return render_to_string("ops/background/partials/flags.html", {**context, "oob": True})


class StallFlagsConsumer(StaffConsumer):
    async def connect(self):
        self._shown: set[int] = set()
        if not await self.authorize():
            return
        await self.accept()
        await self.join(FLAGS_GROUP, OPS_GROUP)
        await self._send_from_database()

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
        if message.get("order", {}).get("order_id") in self._shown:
            self.coalesce(lambda _requested_at: self._send_from_database())

    async def _send_from_database(self):
        await self._send(await database_sync_to_async(stall_flags_card_context)())

    async def _send(self, context: dict):
        self._shown = {row.order_id for row in context["flags"].rows}
        # Rendering reads no database: the rows are in the context already.
        await self.send(text_data=stall_flags_card_html(context))
