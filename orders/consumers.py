"""Websockets of the order pages: the live list, an order's detail, the customer's page.

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
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import InterfaceError, OperationalError, connection
from django.template.loader import render_to_string

from ops.permissions import staff_member

from .broadcast import OPS_GROUP, order_group
from .models import Order
from .selectors import (
    customer_order_status,
    order_actions,
    order_by_public_token,
    order_detail,
    order_row_get,
    user_action_permissions,
)

logger = logging.getLogger(__name__)

# Close codes the page can tell apart; the htmx ws extension does not reconnect on them.
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


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


# --- rendering (sync, in the database thread) ---------------------------------------------


def staff_permissions(user) -> frozenset[str] | None:
    """The user's operator-action permissions if they may watch orders at all, else None."""
    if not staff_member(user):
        return None
    return user_action_permissions(user)


@dataclass(frozen=True)
class FramePlan:
    """Which parts of the detail page a saga event can have changed, besides the timeline
    header (every frame carries it) and the summary (sent when the order's state moved)."""

    track: bool = False  # the forward step's own track
    all_heads: bool = False  # every step's head (a finished saga marks steps it never ran)
    compensation: bool = False  # the reverse track
    saga_events: bool = False  # events of the saga as a whole
    audit: bool = False  # the operator actions list
    ledger: frozenset[str] = frozenset()  # ledger sections: stock, payments, shipment, notify
    # The buttons that fit, beyond a change of saga status or current step (which is always
    # checked): a follow-up opening or closing, an operator command.
    actions: bool = False


# Which ledger section a step's effect (or its compensation) lands in.
LEDGER_OF_STEP = {"reserve": "stock", "confirm": "stock", "charge": "payments", "ship": "shipment", "notify": "notify"}


def frame_plan(kind: str, step: str) -> FramePlan | None:
    """What to re-render for an event; None means the whole page (an event kind this code
    does not know)."""
    ledger = frozenset({LEDGER_OF_STEP[step]}) if step in LEDGER_OF_STEP else frozenset()
    if not step:
        if kind == "finished":
            # The saga's end: its own event, steps never reached become "not run", a
            # follow-up may have been closed, and no button fits any more.
            return FramePlan(saga_events=True, all_heads=True, ledger=frozenset({"notify"}), actions=True)
        return FramePlan(saga_events=True, audit=kind in ("signal", "ignored"))
    plans = {
        "started": FramePlan(track=True),
        "retrying": FramePlan(track=True),
        "succeeded": FramePlan(track=True, ledger=ledger),
        "failed": FramePlan(track=True, ledger=ledger if step == "notify" else frozenset()),
        "stuck": FramePlan(track=True),
        "followup": FramePlan(track=True, ledger=ledger, actions=True),
        "compensating": FramePlan(track=True, compensation=True),
        "compensated": FramePlan(track=True, compensation=True, ledger=ledger),
        "signal": FramePlan(track=True, audit=True, ledger=ledger if step == "notify" else frozenset(), actions=True),
        "ignored": FramePlan(track=True, audit=True),
        "finished": FramePlan(track=True, ledger=ledger, actions=True),  # delivered (on the ship step)
    }
    return plans.get(kind)


def render_detail_frame(order_id: int, trigger_event_id: int | None = None, kind: str = "",
                        step: str = "") -> tuple[str, Order, bool] | None:
    """One out-of-band frame of the detail page, read from the database; returns the HTML,
    the order, and whether the buttons may have changed.

    Fresh (no trigger) or for an event without a plan: summary, whole timeline, whole ledger.
    Otherwise the summary, the timeline header and the parts in the event's FramePlan, with
    only the queries those parts need (a step's progress: the order and its events).
    """
    from .views.detail import detail_context

    plan = frame_plan(kind, step) if trigger_event_id is not None else None
    if plan is None:
        detail = order_detail(order_id, lines=False)
    else:
        detail = order_detail(order_id, lines=False, ledger=plan.ledger, audit=plan.audit)
    if detail is None:
        return None
    track = appended = None
    if plan is not None and plan.track:
        if kind in ("compensating", "compensated"):
            track = detail.timeline.step_track(step)  # the step being undone changes state too
        else:
            track = detail.timeline.forward_track_of(trigger_event_id)
            # The event is appended to the step's list: the earlier ones are on the page already.
            appended = next((e for e in track.events if e.id == trigger_event_id), None) if track else None
        if track is None:
            # Not on a forward step: a compensation failing, say. Send the tracks it can be on.
            plan = replace(plan, compensation=True, saga_events=True)
    order = detail.order
    summary_changed = _state_moved("summary", order, (order.status, order.saga_status, order.current_step,
                                                      order.last_error, order.stuck_since))
    # The buttons depend on the saga status, the current step and an open follow-up.
    buttons_changed = _state_moved("buttons", order, (order.saga_status, order.current_step))
    context = {**detail_context(detail), "oob": True, "trigger_event_id": trigger_event_id, "plan": plan,
               "track": track, "appended_event": appended, "summary_changed": summary_changed}
    html = render_to_string("orders/partials/order_detail_live.html", context)
    return html, order, buttons_changed or plan is None or plan.actions


# What each order's summary and buttons were last rendered from, in this process (only the
# reader thread touches it): most events (a step starting, failing, retrying, succeeding)
# move neither, and every socket got both fresh when it connected.
_rendered_from: dict[tuple[str, int], tuple] = {}


def _state_moved(part: str, order: Order, state: tuple) -> bool:
    key = (part, order.pk)
    moved = _rendered_from.get(key) != state
    _rendered_from[key] = state
    if len(_rendered_from) > 20_000:
        _rendered_from.clear()  # a bound, not a cache policy: forgetting only costs a re-render
    return moved


def render_actions(order: Order, permissions: frozenset[str]) -> str:
    """The operator buttons: they depend on the user, so they are rendered per permission set."""
    context = {"actions": order_actions(order, permissions), "order": order, "oob": True}
    return render_to_string("orders/partials/order_actions.html", context)


def render_row(order_id: int) -> str:
    order = order_row_get(order_id)
    if order is None:
        return ""
    return render_to_string("orders/partials/order_row.html", {"order": order, "oob": True})


def render_customer(order_id: int) -> str:
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        return ""
    return render_to_string("orders/partials/customer_status.html",
                            {"status": customer_order_status(order), "oob": True})


def customer_order_id(token: str) -> int | None:
    order = order_by_public_token(token)
    return order.pk if order else None


def order_exists(order_id: int) -> bool:
    return Order.objects.filter(pk=order_id).exists()


# --- consumers ----------------------------------------------------------------------------


class ReadOnlyConsumer(AsyncWebsocketConsumer):
    """A consumer whose reads all go through database_read.

    Channels closes stale connections of its shared sync thread before every handler, one
    thread hop per message: per socket per saga event here, which measured more than the
    socket's share of the render. These consumers never use that thread's connection, so
    the hop is skipped.
    """

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class StaffConsumer(ReadOnlyConsumer):
    """Accepts staff who may view orders; anyone else gets close code 4403."""

    permissions: frozenset[str] = frozenset()

    async def authorize(self) -> bool:
        permissions = await database_read(staff_permissions, self.scope.get("user"))
        if permissions is None:
            # Accept, then close with a code: a refused handshake looks like a network error
            # to the browser, and the ws extension would keep reconnecting.
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return False
        self.permissions = permissions
        return True

    async def send_safely(self, render) -> None:
        """Send what `render()` returns; a failed render is logged and the socket stays open."""
        try:
            html = await render()
        except Exception:
            logger.exception("could not render a live update for %s", self.scope.get("path"))
            return
        if html:
            await self.send(text_data=html)


class OrderListConsumer(StaffConsumer):
    """ws/orders/: a row for every order a saga event touches."""

    async def connect(self):
        if not await self.authorize():
            return
        self.groups = [OPS_GROUP]
        await self.channel_layer.group_add(OPS_GROUP, self.channel_name)
        await self.accept()

    async def saga_event(self, message):
        order_id, event_id = message["order"]["order_id"], message["event"]["id"]
        await self.send_safely(lambda: shared_renders.get(("row", order_id, event_id), render_row, order_id))


class OrderDetailConsumer(StaffConsumer):
    """ws/orders/<pk>/: the order's summary, timeline, ledger and this user's buttons."""

    async def connect(self):
        if not await self.authorize():
            return
        self.order_id = int(self.scope["url_route"]["kwargs"]["pk"])
        if not await database_read(order_exists, self.order_id):
            await self.accept()
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join first, then read: an event committed in between is in the read or arrives after.
        self.groups = [order_group(self.order_id)]
        await self.channel_layer.group_add(self.groups[0], self.channel_name)
        await self.accept()
        await self.send_safely(self._fresh_frame)

    async def _fresh_frame(self) -> str:
        def render():
            rendered = render_detail_frame(self.order_id)
            if rendered is None:
                return ""
            html, order, _ = rendered
            return html + render_actions(order, self.permissions)

        return await database_read(render)

    async def saga_event(self, message):
        await self.send_safely(lambda: self._event_frame(message["event"]))

    async def _event_frame(self, event: dict) -> str:
        event_id, kind, step = event["id"], event["kind"], event["step"]
        rendered = await shared_renders.get(("detail", self.order_id, event_id), render_detail_frame,
                                            self.order_id, event_id, kind, step)
        if rendered is None:
            return ""
        html, order, buttons_may_change = rendered
        if not buttons_may_change:
            return html
        actions = await shared_renders.get(("actions", self.order_id, event_id, self.permissions),
                                           render_actions, order, self.permissions)
        return html + actions


class CustomerStatusConsumer(ReadOnlyConsumer):
    """ws/status/<token>/: the customer's view of their one order. No login; the token is the key."""

    async def connect(self):
        token = self.scope["url_route"]["kwargs"]["token"]
        self.order_id = await database_read(customer_order_id, token)
        if self.order_id is None:
            await self.accept()
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.groups = [order_group(self.order_id)]
        await self.channel_layer.group_add(self.groups[0], self.channel_name)
        await self.accept()
        await self._send(lambda: database_read(render_customer, self.order_id))

    async def saga_event(self, message):
        event_id = message["event"]["id"]
        await self._send(lambda: shared_renders.get(("customer", self.order_id, event_id),
                                                    render_customer, self.order_id))

    async def _send(self, render) -> None:
        try:
            html = await render()
        except Exception:
            logger.exception("could not render the customer page of order %s", self.order_id)
            return
        if html:
            await self.send(text_data=html)
