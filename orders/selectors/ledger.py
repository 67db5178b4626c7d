"""An order with everything it holds: lines, the ledgers the saga wrote (stock, payments,
shipment, notifications), follow-ups, the commands staff sent, and its saga timeline."""

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Prefetch

from ..models import FollowUp, NotificationAttempt, OperatorAction, Order, OrderLine, Payment, Reservation
from ..temporal_client import workflow_ui_url
from .timeline import SagaTimeline, saga_events_with_commands, saga_timeline_build


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
        prefetches.append(Prefetch("reservations", queryset=Reservation.objects.select_related("product").order_by("id")))
    if "payments" in sections:
        prefetches.append(Prefetch("payments", queryset=Payment.objects.order_by("id")))
    if "notify" in sections:
        prefetches += [
            Prefetch("notifications", queryset=NotificationAttempt.objects.order_by("id")),
            Prefetch("followups", queryset=FollowUp.objects.select_related("claimed_by").order_by("id")),
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
        money=MoneySummary(
            charged=sum((p.amount for p in payments if p.kind == Payment.Kind.CHARGE), Decimal(0)),
            refunded=sum((p.amount for p in payments if p.kind == Payment.Kind.REFUND), Decimal(0)),
        ),
        shipment=shipment,
        notifications=list(order.notifications.all()) if "notify" in sections else [],
        followups=list(order.followups.all()) if "notify" in sections else [],
        operator_actions=actions,
        timeline=saga_timeline_build(order, events),
    )
