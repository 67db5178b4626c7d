"""Sockets of the staff order pages: the live list (ws/orders/) and an order's detail
(ws/orders/<pk>/). They only read: on connect (every reconnect included) they render the
page's live parts from the database, so an event missed while a socket was down is never
lost from view; on each saga.event they render again and send HTML that htmx swaps out of
band. Renders are shared by every socket of the process watching the same order
(orders.live.shared_renders) and run on the sockets' reader thread (orders.live.database_read).

A step's ordinary event (started, retrying, failed...) is added to the timeline this process
read last for the order, from the event's message, when that timeline is the one just before
it (the message names the previous event): no query. Anything else is read.
"""

from dataclasses import dataclass, replace

from django.template.loader import render_to_string

from orders.broadcast import OPS_GROUP, order_group
from orders.live import CLOSE_NOT_FOUND, database_read, shared_renders
from orders.models import Order
from orders.selectors.ledger import OrderDetail, order_detail, order_detail_after_event
from orders.selectors.timeline import SagaTimeline
from orders.selectors.waterfall import saga_waterfall, saga_waterfall_build

from .. import metrics
from ..charts.presenters import waterfall_present
from ..live import StaffConsumer
from .presenters import ActionButtons, order_row_present
from .selectors import order_actions, order_row_get
from .views.detail import detail_context

# --- rendering (sync, on the reader thread) -----------------------------------------------


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
    returns: bool = False  # the returns section (an event of a return saga)


# Which ledger section a step's effect (or its compensation) lands in.
LEDGER_OF_STEP = {"reserve": "stock", "confirm": "stock", "charge": "payments", "ship": "shipment", "notify": "notify"}


def frame_plan(kind: str, step: str) -> FramePlan | None:
    """What to re-render for an event; None means the whole page (an event kind this code
    does not know)."""
    ledger = frozenset({LEDGER_OF_STEP[step]}) if step in LEDGER_OF_STEP else frozenset()
    if step.startswith("return"):
        # A return saga's event: the timeline's saga-level list and the returns section; its
        # refund lands in the payments ledger, its restock in the stock one.
        effects = {"return_refund": "payments", "return_restock": "stock", "return_notify": "notify"}
        return FramePlan(saga_events=True, returns=True, audit=kind in ("signal", "ignored", "started"),
                         ledger=frozenset({effects[step]}) if step in effects and kind == "succeeded" else frozenset())
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
                        step: str = "", message: dict | None = None) -> tuple[str, Order, bool] | None:
    """One out-of-band frame of the detail page; returns the HTML, the order, and whether the
    buttons may have changed.

    Fresh (no trigger) or for an event without a plan: summary, whole timeline, whole ledger.
    Otherwise the summary, the timeline header and the parts in the event's FramePlan, with
    only the queries those parts need: none for a step's progress when the event's `message`
    follows the timeline kept here (_detail_from_message), else the order and its events.
    """
    plan = frame_plan(kind, step) if trigger_event_id is not None else None
    if plan is not None and _follows_a_missed_event(order_id, message):
        plan = None  # the whole of the page's live parts, the missed event's step included
    detail = _detail_from_message(order_id, plan, message) if message is not None else None
    if detail is not None:
        metrics.live_detail_frame_counted("message")
    else:
        if trigger_event_id is not None:
            metrics.live_detail_frame_counted("read")
        if plan is None:
            detail = order_detail(order_id, lines=False)
        else:
            detail = order_detail(order_id, lines=False, ledger=plan.ledger, audit=plan.audit)
    if detail is None:
        _timelines.pop(order_id, None)
        return None
    _timeline_keep(detail.timeline)
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


def _follows_a_missed_event(order_id: int, message: dict | None) -> bool:
    """Whether an event of the order between the timeline kept here and this one never
    reached this process: its broadcast was lost (a worker killed between the event's commit
    and its publish, Redis away a moment). A frame of this event's step alone would leave
    that event's step as the page last showed it until a reload; the whole frame mends it.
    A message merely overtaken by this one (two workers publishing) costs a whole frame too,
    and its own frame then reads."""
    kept = _timelines.get(order_id)
    previous = message.get("previous_event_id") if message is not None else None
    return (previous is not None and kept is not None and kept.last_event_id is not None
            and previous > kept.last_event_id)


# Only the parts of a step's own track (and the ledger sections its effect moved, read on
# their own): the message has the event and the order's state.
TRACK_ONLY = FramePlan(track=True)


def _detail_from_message(order_id: int, plan: FramePlan | None, message: dict) -> OrderDetail | None:
    """The frame's data built from the event's message on top of the timeline kept for the
    order (reading only the ledger sections the plan names), or None (read instead): no
    timeline kept, the kept one is not the one just before this event (a message lost, or a
    read that already saw later events), the plan needs the audit list, the buttons or more
    than the step's own track, or the event does not fold (see
    orders.selectors.ledger.order_detail_after_event)."""
    kept = _timelines.get(order_id)
    if kept is None or plan is None or replace(plan, ledger=frozenset()) != TRACK_ONLY:
        return None
    return order_detail_after_event(kept, message, ledger=plan.ledger)


class BoundedMap(dict):
    """A dict that forgets everything when a new key would take it past `bound` keys: a bound
    on a process's memory, not a cache policy (what is forgotten costs a read or a render).
    Only `map[key] = value` is bounded; nothing here writes it another way."""

    def __init__(self, bound: int = 20_000):
        super().__init__()
        self.bound = bound

    def __setitem__(self, key, value) -> None:
        if len(self) >= self.bound and key not in self:
            self.clear()
        super().__setitem__(key, value)


# The newest timeline for each order in this process, read or built from a message (only the
# reader thread touches it; renders on it run one after another, so the last one kept is the
# newest). A step's next event is added to it from its message (render_detail_frame), and the
# waterfall, redrawn after a burst of events, folds it instead of reading the order and all
# its events again: that read was more than half of the waterfall's render, and the frames of
# other orders' events queued behind it on the reader thread (bench/live_updates.py). Kept
# timelines are never changed: a fold makes a new one.
_timelines: BoundedMap = BoundedMap()


def _timeline_keep(timeline: SagaTimeline) -> None:
    _timelines[timeline.order.pk] = timeline


# What each order's summary and buttons were last rendered from, in this process (only the
# reader thread touches it): most events (a step starting, failing, retrying, succeeding)
# move neither, and every socket got both fresh when it connected.
_rendered_from: BoundedMap = BoundedMap()


def _state_moved(part: str, order: Order, state: tuple) -> bool:
    key = (part, order.pk)
    moved = _rendered_from.get(key) != state
    _rendered_from[key] = state
    return moved


# The operator buttons as last rendered, by everything their template reads (only the
# reader thread touches it): a step starting or a status moving re-checks which actions
# fit (a few queries), but the buttons are mostly the same as before, and their template
# was a tenth of the web process's CPU with 20 busy sagas (bench/live_updates.py).
_actions_html: BoundedMap = BoundedMap()


def render_actions(order: Order, permissions: frozenset[str]) -> str:
    """The operator buttons: they depend on the user, so they are rendered per permission set."""
    buttons = ActionButtons(order_actions(order, permissions))
    key = (order.pk, permissions, tuple(buttons.fitting.actions), buttons.may_act, order.number, order.customer_email,
           order.current_step, tuple(buttons.rollback_lines))
    html = _actions_html.get(key)
    if html is None:
        html = _actions_html[key] = render_to_string(
            "orders/partials/order_actions.html", {"actions": buttons, "order": order, "oob": True})
    return html


def render_row(order_id: int) -> str:
    order = order_row_get(order_id)
    if order is None:
        return ""
    return render_to_string("orders/partials/order_row.html", {"order": order_row_present(order), "oob": True})


def render_waterfall(order_id: int, after_event_id: int | None = None) -> str:
    """The saga's waterfall, out of band, including at least the event `after_event_id`:
    folded from the newest timeline a detail frame read when that holds it (no query),
    otherwise read (two queries: the order and its events)."""
    timeline = _timelines.get(order_id) if after_event_id is not None else None
    if timeline is not None and timeline.last_event_id is not None and timeline.last_event_id >= after_event_id:
        waterfall = saga_waterfall_build(timeline)
    else:
        waterfall = saga_waterfall(order_id)
    if waterfall is None:
        return ""
    return render_to_string("ops/charts/waterfall.html", {"waterfall": waterfall_present(waterfall), "oob": True})


def order_exists(order_id: int) -> bool:
    return Order.objects.filter(pk=order_id).exists()


# --- consumers ----------------------------------------------------------------------------

WATERFALL_REDRAW_SECONDS = 1.0


class OrderListConsumer(StaffConsumer):
    """ws/orders/: a row for every order a saga event touches."""

    async def connect(self):
        if not await self.authorize():
            return
        await self.join(OPS_GROUP)
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
            await self.refuse(CLOSE_NOT_FOUND)
            return
        await self.join(order_group(self.order_id))
        await self.accept()
        await self.send_safely(self._fresh_frame)

    async def _fresh_frame(self) -> str:
        def render():
            rendered = render_detail_frame(self.order_id)
            if rendered is None:
                return ""
            html, order, _ = rendered
            # The waterfall from the timeline this frame just read (any event id it holds).
            return html + render_actions(order, self.permissions) + render_waterfall(self.order_id, 0)

        return await database_read(render)

    # The order whose buttons the last event frame may have changed (set by _event_frame).
    _buttons_of: Order | None = None

    async def saga_event(self, message):
        # The event's frame goes out as soon as it is rendered, and the buttons it may have
        # changed follow in a frame of their own. Renders queue on the process's one reader
        # thread: in a burst, this order's buttons render came after the other orders' event
        # frames, and sent together with it, the event waited for all of them
        # (bench/live_updates.py). A command from a button shown a moment too long is
        # refused with its reason when it is checked under the order's lock.
        self._buttons_of = None
        await self.send_safely(lambda: self._event_frame(message))
        order, self._buttons_of = self._buttons_of, None
        if order is not None:
            event_id = message["event"]["id"]
            await self.send_safely(lambda: shared_renders.get(("actions", self.order_id, event_id, self.permissions),
                                                              render_actions, order, self.permissions))
        # The waterfall redraws every row and rescales its axis from all the saga's events,
        # so a burst of events gets one redraw, after the burst, and a busy saga one a
        # second: redrawn per event it was a fifth of the server's CPU with 20 busy sagas
        # (bench/live_updates.py), competing with the frames that carry the events.
        self._waterfall_after = message["event"]["id"]
        self.coalesce(self._send_waterfall, WATERFALL_REDRAW_SECONDS)

    async def _send_waterfall(self, requested_at: float) -> None:
        # Shared by every socket of the process on this order that saw the same last event:
        # a render keyed by it started after that event was committed, so it includes it.
        event_id = self._waterfall_after
        await self.send_safely(
            lambda: shared_renders.get(("waterfall", self.order_id, event_id), render_waterfall, self.order_id, event_id))

    async def _event_frame(self, message: dict) -> str:
        event = message["event"]
        event_id, kind, step = event["id"], event["kind"], event["step"]
        rendered = await shared_renders.get(("detail", self.order_id, event_id), render_detail_frame,
                                            self.order_id, event_id, kind, step, message)
        if rendered is None:
            return ""
        html, order, buttons_may_change = rendered
        if buttons_may_change:
            self._buttons_of = order
        return html
