"""An order with everything it holds: lines, the ledgers the saga wrote (stock, payments,
shipment, notifications), follow-ups, the commands staff sent, and its saga timeline."""

import copy
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Prefetch

from ..models import FollowUp, NotificationAttempt, OperatorAction, Order, OrderLine, Payment, Reservation, Shipment
from ..temporal_client import workflow_ui_url
from .timeline import SagaTimeline, TimelineEvent, saga_events_with_commands, saga_timeline_build, saga_timeline_fold


@dataclass
class MoneySummary:
    charged: Decimal
    refunded: Decimal

    @property
    def net(self) -> Decimal:
        return self.charged - self.refunded


@dataclass
class OrderDetail:
    order: Order
    lines: list[OrderLine]
    reservations: list[Reservation]
    payments: list[Payment]
    money: MoneySummary
    shipment: object | None
    notifications: list[NotificationAttempt]
    followups: list[FollowUp]
    operator_actions: list[OperatorAction]
    timeline: SagaTimeline

    @property
    def temporal_url(self) -> str:
        return workflow_ui_url(self.order.workflow_id or "")


LEDGER_SECTIONS = frozenset({"stock", "payments", "shipment", "notify"})


# How the ledger sections' rows are read, with the order (order_detail's prefetches) or on
# their own (order_detail_after_event): one definition, so a live frame built either way
# shows the same rows in the same order.
def _reservations():
    return Reservation.objects.select_related("product").order_by("id")


def _payments():
    return Payment.objects.order_by("id")


def _notifications():
    return NotificationAttempt.objects.order_by("id")


def _followups():
    return FollowUp.objects.select_related("claimed_by").order_by("id")


def order_detail(order_id: int, *, lines: bool = True, ledger: bool | frozenset[str] = True,
                 audit: bool = True) -> OrderDetail | None:
    """Everything the detail page shows, in a fixed number of queries (8 with lines, the
    whole ledger and the commands).

    The live socket asks only for what a saga event can have changed: `ledger` may name the
    sections to load (stock, payments, shipment, notify), and without `audit` the list of
    commands is not read (the timeline's events bring their own). A step's progress is then
    2 queries: the order and its events.
    """
    sections = LEDGER_SECTIONS if ledger is True else frozenset(ledger or ())
    qs = Order.objects.all()
    prefetches = []
    if lines:
        qs = qs.select_related("created_by")
        prefetches.append(Prefetch("lines", queryset=OrderLine.objects.select_related("product").order_by("id")))
    if "shipment" in sections:
        qs = qs.select_related("shipment")
    if "stock" in sections:
        prefetches.append(Prefetch("reservations", queryset=_reservations()))
    if "payments" in sections:
        prefetches.append(Prefetch("payments", queryset=_payments()))
    if "notify" in sections:
        prefetches += [
            Prefetch("notifications", queryset=_notifications()),
            Prefetch("followups", queryset=_followups()),
        ]
    # order_by(): a lookup by key needs no ORDER BY (the model's default ordering costs compile time).
    order = next(iter(qs.prefetch_related(*prefetches).filter(pk=order_id).order_by()[:1]), None)
    if order is None:
        return None
    events = saga_events_with_commands(order.pk)
    actions = []
    if audit:
        actions = list(OperatorAction.objects.filter(order_id=order.pk).select_related("actor").order_by("-id"))
    payments = list(order.payments.all()) if "payments" in sections else []
    shipment = None
    if "shipment" in sections:
        try:
            shipment = order.shipment
        except Order.shipment.RelatedObjectDoesNotExist:
            pass
    return OrderDetail(
        order=order,
        lines=list(order.lines.all()) if lines else [],
        reservations=list(order.reservations.all()) if "stock" in sections else [],
        payments=payments,
        money=_money(payments),
        shipment=shipment,
        notifications=list(order.notifications.all()) if "notify" in sections else [],
        followups=list(order.followups.all()) if "notify" in sections else [],
        operator_actions=actions,
        timeline=saga_timeline_build(order, events),
    )


def _money(payments: list[Payment]) -> MoneySummary:
    return MoneySummary(
        charged=sum((p.amount for p in payments if p.kind == Payment.Kind.CHARGE), Decimal(0)),
        refunded=sum((p.amount for p in payments if p.kind == Payment.Kind.REFUND), Decimal(0)),
    )


def _ledger_sections_read(order_id: int, sections: frozenset[str]) -> dict:
    """The ledger sections named, read on their own (a query each; notify two), as
    order_detail reads them with the order: OrderDetail's fields by name."""
    parts: dict = {}
    if "stock" in sections:
        parts["reservations"] = list(_reservations().filter(order_id=order_id))
    if "payments" in sections:
        parts["payments"] = list(_payments().filter(order_id=order_id))
        parts["money"] = _money(parts["payments"])
    if "shipment" in sections:
        parts["shipment"] = Shipment.objects.filter(order_id=order_id).order_by().first()
    if "notify" in sections:
        parts["notifications"] = list(_notifications().filter(order_id=order_id))
        parts["followups"] = list(_followups().filter(order_id=order_id))
    return parts


def order_detail_after_event(timeline: SagaTimeline, message: dict,
                             ledger: frozenset[str] = frozenset()) -> OrderDetail | None:
    """What order_detail(order_id, lines=False, ledger=ledger, audit=False) reads right
    after the event of `message` (a saga.event broadcast, orders.services.events.
    saga_event_record) committed, built from `timeline` and the message: no query for the
    order and its events, only one per ledger section named (a step's effect: the stock it
    reserved, the money it took...).

    Only when `timeline` is the order's timeline just before that event (its newest event is
    the one the message names as previous) and the event folds into it (saga_timeline_fold);
    otherwise None, and the caller reads. The order is a copy of the timeline's with the
    saga state of the message: of what the detail page shows, only that and the events change
    after the first event (the customer, address and total are set when the order is placed).
    """
    previous = message.get("previous_event_id")
    if previous is None or timeline.last_event_id != previous:
        return None  # a message lost or not yet seen, an order's first event, or a page's first frame
    raw, state = message["event"], message["order"]
    event = TimelineEvent(id=raw["id"], step=raw["step"], kind=raw["kind"], detail=raw["detail"],
                          attempt=raw["attempt"], created_at=datetime.fromisoformat(raw["created_at"]))
    order = copy.copy(timeline.order)  # the kept timeline's order stays as it was read
    order.status, order.saga_status = state["status"], state["saga_status"]
    order.current_step, order.last_error = state["current_step"], state["last_error"]
    order.stuck_since = datetime.fromisoformat(state["stuck_since"]) if state.get("stuck_since") else None
    order.last_event_at, order.last_event_id = event.created_at, event.id
    folded = saga_timeline_fold(timeline, order, event)
    if folded is None:
        return None
    parts = {"reservations": [], "payments": [], "money": _money([]), "shipment": None, "notifications": [],
             "followups": [], **_ledger_sections_read(order.pk, ledger)}
    return OrderDetail(order=order, lines=[], operator_actions=[], timeline=folded, **parts)
