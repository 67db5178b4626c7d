"""Reads behind the order pages and sockets: the list, the detail, the saga timeline,
the operator buttons that fit, and the customer's view of an order.

Every selector runs a fixed number of queries whatever the number of rows, events or
lines; the page tests hold them to it.
"""

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from ops.models import OperatorAction
from ops.services import ACTION_PERMISSIONS, operator_action_check

from .models import (
    FollowUp,
    NotificationAttempt,
    Order,
    OrderLine,
    Payment,
    Product,
    Reservation,
    SagaEvent,
)
from .saga.shared import STEP_LABELS, StepName
from .temporal_client import workflow_ui_url
from .status import STUCK_SAGA_STATUSES, TERMINAL_SAGA_STATUSES, OrderStatus, SagaStatus

Kind = SagaEvent.Kind

# --- the order list ---------------------------------------------------------------------

# Sort keys offered by the list; each ends with the primary key so pages never overlap.
LIST_SORTS = {
    "-created": ("-created_at", "-id"),
    "created": ("created_at", "id"),
    "-total": ("-total", "-id"),
    "total": ("total", "id"),
    "status": ("status", "-created_at", "-id"),
    "-status": ("-status", "-created_at", "-id"),
}
DEFAULT_SORT = "-created"
# Counting every match of a broad filter over 100,000 orders costs more than the page
# itself; above this many the list says "more than N" instead of counting on.
COUNT_CAP = 1000
_ORDER_NUMBER = re.compile(r"^(?:so-?)?0*(\d{1,12})$", re.IGNORECASE)
_WHOLE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class OrderListFilters:
    status: str = ""
    saga_status: str = ""
    step: str = ""
    stuck: bool = False
    needs_followup: bool = False
    date_from: date | None = None
    date_to: date | None = None
    q: str = ""
    sort: str = DEFAULT_SORT


@dataclass
class OrderListPage:
    orders: list[Order]
    number: int
    per_page: int
    has_next: bool
    # How many orders match, or None past COUNT_CAP (shown as "more than COUNT_CAP").
    total: int | None
    count_cap: int = COUNT_CAP

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def first_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.orders else 0

    @property
    def last_index(self) -> int:
        return (self.number - 1) * self.per_page + len(self.orders)


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, datetime.min.time()))


def order_list_queryset(filters: OrderListFilters) -> QuerySet[Order]:
    """Orders matching the filters, sorted; only the columns the list shows are loaded."""
    qs = Order.objects.only(
        "id", "number", "customer_name", "customer_email", "currency", "total", "status",
        "saga_status", "current_step", "created_at", "last_event_at", "stuck_since",
    )
    if filters.status:
        qs = qs.filter(status=filters.status)
    saga_statuses = {s for s in (filters.saga_status,) if s}
    if filters.stuck:
        saga_statuses.update(STUCK_SAGA_STATUSES)
    if filters.needs_followup:
        saga_statuses.add(SagaStatus.NEEDS_FOLLOWUP)
    if len(saga_statuses) == 1:
        qs = qs.filter(saga_status=saga_statuses.pop())
    elif saga_statuses:
        qs = qs.filter(saga_status__in=saga_statuses)
    if filters.step:
        qs = qs.filter(current_step=filters.step)
    if filters.date_from:
        qs = qs.filter(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    q = filters.q.strip()
    if q:
        number = _ORDER_NUMBER.match(q)
        if number:
            # An order number is unique: an exact lookup, not a scan.
            qs = qs.filter(number=f"SO-{int(number.group(1)):06d}")
        elif _WHOLE_EMAIL.match(q):
            # A whole address is an exact lookup on the (customer_email, created_at) index, as
            # typed or lower-cased; anything partial falls through to the scan below.
            qs = qs.filter(customer_email__in={q, q.lower()})
        else:
            qs = qs.filter(Q(customer_name__icontains=q) | Q(customer_email__icontains=q))
    return qs.order_by(*LIST_SORTS.get(filters.sort, LIST_SORTS[DEFAULT_SORT]))


_STATUS_LABELS = {value: str(label) for value, label in OrderStatus.choices}
_SAGA_STATUS_LABELS = {value: str(label) for value, label in SagaStatus.choices}
_STEP_LABELS = {s.value: label for s, label in STEP_LABELS.items()}


def _with_row_labels(order: Order) -> Order:
    """Plain-string labels for a list row: get_FOO_display() per cell is a third of the
    page's rendering time at 50 rows (it rebuilds the choices dict on every call)."""
    order.status_label = _STATUS_LABELS.get(order.status, order.status)
    order.saga_status_label = _SAGA_STATUS_LABELS.get(order.saga_status, order.saga_status)
    order.current_step_label = _STEP_LABELS.get(order.current_step, order.current_step)
    return order


def order_list(filters: OrderListFilters, *, page: int = 1, per_page: int = 50) -> OrderListPage:
    """One page of the list: two queries (the rows, and a count capped at COUNT_CAP)."""
    page = max(1, page)
    qs = order_list_queryset(filters)
    offset = (page - 1) * per_page
    # One row more than the page tells whether there is a next page without counting.
    rows = [_with_row_labels(order) for order in qs[offset : offset + per_page + 1]]
    has_next = len(rows) > per_page
    rows = rows[:per_page]
    if not has_next and (rows or page == 1):
        # Everything that matches is on this page or before it: no count needed.
        total = offset + len(rows)
    else:
        matched = qs.order_by()[: COUNT_CAP + 1].count()
        total = matched if matched <= COUNT_CAP else None
    return OrderListPage(orders=rows, number=page, per_page=per_page, has_next=has_next, total=total,
                         count_cap=COUNT_CAP)


def order_row_get(order_id: int) -> Order | None:
    """One list row, for the live list."""
    order = order_list_queryset(OrderListFilters()).filter(pk=order_id).first()
    return _with_row_labels(order) if order else None


# --- the saga timeline ------------------------------------------------------------------

COMPENSATION_LABELS = {
    StepName.RESERVE.value: "Release reservation",
    StepName.CHARGE.value: "Refund payment",
    StepName.CONFIRM.value: "Restock inventory",
    StepName.SHIP.value: "Cancel shipment",
}

# How each state reads, and the badge tone it gets (the text always says the state).
STATE_LABELS = {
    "pending": ("not started", ""),
    "running": ("running", "info"),
    "retrying": ("retrying", "warn"),
    "failed": ("failed", "bad"),
    "stuck": ("stuck: waiting for an operator", "bad"),
    "succeeded": ("succeeded", "ok"),
    "compensating": ("being undone", "warn"),
    "compensated": ("undone", "info"),
    "followup": ("needs follow-up", "warn"),
    "resolved": ("resolved by staff", "ok"),
    "skipped": ("not run", ""),
}
STEP_LABEL_BY_VALUE = {s.value: label for s, label in STEP_LABELS.items()}
_ACTION_ID = re.compile(r"\(action #(\d+)\)")


@dataclass
class TimelineEvent:
    id: int
    step: str
    kind: str
    kind_label: str
    detail: str
    attempt: int
    created_at: datetime
    # Who asked for it, for signals and ignored commands (from the audit log).
    actor: str = ""
    reason: str = ""

    @property
    def time_label(self) -> str:
        # Formatted here: the template's date filter costs more than the rest of the row.
        return timezone.localtime(self.created_at).strftime("%H:%M:%S.%f")[:12]

    @property
    def iso_time(self) -> str:
        return self.created_at.isoformat()

    @property
    def operator(self) -> bool:
        return self.kind in (Kind.SIGNAL, Kind.IGNORED)


@dataclass
class StepTrack:
    """One step (or one compensation) and what happened to it, in order."""

    step: str
    label: str
    number: int = 0
    state: str = "pending"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str = ""
    events: list[TimelineEvent] = field(default_factory=list)

    @property
    def state_label(self) -> str:
        return STATE_LABELS.get(self.state, (self.state, ""))[0]

    @property
    def tone(self) -> str:
        return STATE_LABELS.get(self.state, (self.state, ""))[1]

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def duration_ms(self) -> int | None:
        duration = self.duration
        return None if duration is None else int(duration.total_seconds() * 1000)


@dataclass
class SagaTimeline:
    order: Order
    steps: list[StepTrack]
    # Compensations in the order they ran (the reverse of the steps they undo).
    compensations: list[StepTrack]
    # Saga-level events that belong to no step: finished, could not start.
    saga_events: list[TimelineEvent]
    event_count: int
    last_event_id: int | None

    @property
    def terminal(self) -> bool:
        return self.order.saga_status in TERMINAL_SAGA_STATUSES

    def step_track(self, step: str) -> StepTrack | None:
        return next((track for track in self.steps if track.step == step), None)

    def forward_track_of(self, event_id: int) -> StepTrack | None:
        """The forward step whose track holds this event, or None (a compensation, a
        saga-level event, or not loaded): the socket then re-renders the whole timeline."""
        for track in self.steps:
            if any(event.id == event_id for event in track.events):
                return track
        return None


def _actor_lookup(actions: list[OperatorAction]):
    """Match signal and ignored events to the audit rows that caused them."""
    by_id = {a.pk: a for a in actions}
    ignored: dict[str, list[OperatorAction]] = {}
    for action in sorted(actions, key=lambda a: a.pk):
        if action.outcome == OperatorAction.Outcome.IGNORED:
            ignored.setdefault(action.outcome_detail, []).append(action)

    def lookup(event: SagaEvent) -> OperatorAction | None:
        if event.kind == Kind.SIGNAL:
            match = _ACTION_ID.search(event.detail)
            return by_id.get(int(match.group(1))) if match else None
        if event.kind == Kind.IGNORED:
            candidates = ignored.get(event.detail)
            return candidates.pop(0) if candidates else None
        return None

    return lookup


def saga_timeline_build(order: Order, events: list[SagaEvent], actions: list[OperatorAction]) -> SagaTimeline:
    """Fold the event log into one track per step plus a reverse track of compensations."""
    steps = {s.value: StepTrack(step=s.value, label=STEP_LABELS[s], number=i) for i, s in enumerate(StepName, 1)}
    compensations: dict[str, StepTrack] = {}
    saga_events: list[TimelineEvent] = []
    actor_of = _actor_lookup(actions)
    kind_labels = dict(Kind.choices)

    for event in events:
        action = actor_of(event)
        item = TimelineEvent(
            id=event.pk, step=event.step, kind=event.kind, kind_label=kind_labels.get(event.kind, event.kind),
            detail=event.detail, attempt=event.attempt, created_at=event.created_at,
            actor=(action.actor.get_username() if action and action.actor else ""),
            reason=(action.reason if action else ""),
        )
        if event.step not in steps:
            saga_events.append(item)
            continue
        undoing = event.kind in (Kind.COMPENSATING, Kind.COMPENSATED)
        # A failure after the step's compensation began is the compensation failing.
        if undoing or (event.kind in (Kind.FAILED, Kind.STUCK) and event.step in compensations):
            track = compensations.get(event.step)
            if track is None:
                track = compensations[event.step] = StepTrack(
                    step=event.step, label=COMPENSATION_LABELS.get(event.step, f"Undo {event.step}")
                )
            _advance(track, event, item)
        else:
            _advance(steps[event.step], event, item)

    for step, undo in compensations.items():
        steps[step].state = "compensated" if undo.state == "succeeded" else "compensating"
    for track in compensations.values():
        if track.state == "succeeded":
            track.state = "compensated"
        elif track.state == "running":
            track.state = "compensating"
    if order.saga_status in TERMINAL_SAGA_STATUSES:
        # Steps the saga never reached are "not run", not "not started yet".
        for track in steps.values():
            if track.state == "pending":
                track.state = "skipped"
    return SagaTimeline(
        order=order,
        steps=list(steps.values()),
        compensations=list(compensations.values()),
        saga_events=saga_events,
        event_count=len(events),
        last_event_id=events[-1].pk if events else None,
    )


def _advance(track: StepTrack, event: SagaEvent, item: TimelineEvent) -> None:
    track.events.append(item)
    kind = event.kind
    if kind in (Kind.STARTED, Kind.RETRYING, Kind.COMPENSATING):
        track.state = "retrying" if event.attempt > 1 else "running"
        track.attempts = max(track.attempts, event.attempt)
        track.started_at = track.started_at or event.created_at
        track.finished_at = None
    elif kind == Kind.FAILED:
        track.state = "failed"
        track.attempts = max(track.attempts, event.attempt)
        track.last_error = event.detail
    elif kind == Kind.STUCK:
        track.state = "stuck"
        track.last_error = event.detail
    elif kind in (Kind.SUCCEEDED, Kind.COMPENSATED):
        track.state = "succeeded"
        track.attempts = max(track.attempts, event.attempt)
        track.started_at = track.started_at or event.created_at
        track.finished_at = event.created_at
    elif kind == Kind.FOLLOWUP:
        track.state = "followup"
        track.last_error = event.detail
    elif kind == Kind.SIGNAL and event.detail.startswith("resolved") and track.state == "followup":
        track.state = "resolved"


def saga_timeline(order: Order) -> SagaTimeline:
    """The timeline of one order: its events in one query, its audit rows in another."""
    events = list(SagaEvent.objects.filter(order_id=order.pk).order_by("id"))
    actions = list(OperatorAction.objects.filter(order_id=order.pk).select_related("actor"))
    return saga_timeline_build(order, events, actions)


# --- operator buttons -------------------------------------------------------------------

ACTION_COPY = {
    # action: (button label, what happens, confirmation question)
    "retry": ("Retry step", "runs the failed step again",
              "Retry the {step} step of {number}? The saga runs the failed step again."),
    "compensate": ("Compensate", "rolls back every completed step and ends the order as failed",
                   ("Compensate {number}? Every completed step is undone (refund, restock, release) "
                    "and the order ends as failed.")),
    "cancel": ("Cancel order", "stops the saga and undoes what it did",
               "Cancel {number}? The saga stops and undoes every completed step; the customer is not charged."),
    "resend": ("Resend notification", "tries to notify the customer again",
               "Resend the notification for {number} to {email}?"),
    "resolved": ("Mark follow-up resolved", "closes the follow-up: staff reached the customer another way",
                 "Mark the follow-up of {number} as resolved? The saga finishes without notifying again."),
    "retry_compensation": ("Retry compensation", "runs the compensations that could not complete again",
                           "Retry the stuck compensation of {number}? The saga runs the undo that failed again."),
}
ACTION_ORDER = ("retry", "retry_compensation", "compensate", "cancel", "resend", "resolved")


@dataclass
class ActionOption:
    action: str
    label: str
    explanation: str
    confirm: str
    danger: bool


@dataclass
class OrderActions:
    order: Order
    options: list[ActionOption]
    # Whether this user could act on some order at all (viewers never see buttons).
    may_act: bool


def user_action_permissions(user) -> frozenset[str]:
    """The operator-action permissions a user holds (what the buttons depend on)."""
    if user is None or not user.is_authenticated:
        return frozenset()
    return frozenset(p for p in set(ACTION_PERMISSIONS.values()) if user.has_perm(p))


def order_actions(order: Order, permissions: frozenset[str]) -> OrderActions:
    """The operator actions this order's state allows and the permissions cover."""
    options = []
    for action in ACTION_ORDER:
        if ACTION_PERMISSIONS[action] not in permissions:
            continue
        if operator_action_check(order, action) is not None:
            continue
        label, explanation, confirm = ACTION_COPY[action]
        step_label = STEP_LABEL_BY_VALUE.get(order.current_step, order.current_step or "current")
        options.append(ActionOption(
            action=action, label=label, explanation=explanation,
            confirm=confirm.format(step=step_label.lower(), number=order.number, email=order.customer_email),
            danger=action in ("compensate", "cancel"),
        ))
    return OrderActions(order=order, options=options, may_act=bool(permissions))


# --- the order detail -------------------------------------------------------------------


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
    whole ledger and the audit rows).

    The live socket asks only for what a saga event can have changed: `ledger` may name the
    sections to load (stock, payments, shipment, notify), and without `audit` the operator
    actions are read only if the events include operator commands. A step's progress is then
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
    events = list(SagaEvent.objects.filter(order_id=order.pk).order_by("id"))
    actions = []
    if audit or any(e.kind in (Kind.SIGNAL, Kind.IGNORED) for e in events):
        actions = list(OperatorAction.objects.filter(order_id=order.pk).select_related("actor").order_by("id"))
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
        operator_actions=sorted(actions, key=lambda a: a.pk, reverse=True),
        timeline=saga_timeline_build(order, events, actions),
    )


def order_for_actions(order_id: int) -> Order | None:
    return Order.objects.filter(pk=order_id).first()


# --- the create form ----------------------------------------------------------------------


def products_for_sale() -> list[Product]:
    """Active products for the order form's picker, with price and stock."""
    return list(Product.objects.filter(active=True).only("id", "sku", "name", "price", "on_hand").order_by("name", "id"))


# --- the customer's page ----------------------------------------------------------------


@dataclass
class CustomerStage:
    label: str
    state: str  # done, current, upcoming

    @property
    def state_label(self) -> str:
        return {"done": "Done", "current": "In progress", "upcoming": "Not yet"}[self.state]


@dataclass
class CustomerLine:
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


@dataclass
class CustomerOrderStatus:
    """The order as the customer sees it: no errors, fault plans or internal ids."""

    number: str
    placed_at: datetime
    currency: str
    total: Decimal
    headline: str
    message: str
    outcome: str  # in_progress, done, unsuccessful
    stages: list[CustomerStage]
    lines: list[CustomerLine]
    confirmation_sent: bool


_PUBLIC_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what secrets.token_urlsafe makes


def order_by_public_token(token: str) -> Order | None:
    if not _PUBLIC_TOKEN.match(token or ""):
        return None  # not a token we could have issued (and no NUL bytes for Postgres)
    return Order.objects.filter(public_token=token).first()


def customer_order_status(order: Order) -> CustomerOrderStatus:
    """Say where the order is in the customer's words, from its status and saga events."""
    done = set(
        SagaEvent.objects.filter(order_id=order.pk, kind__in=[Kind.SUCCEEDED, Kind.COMPENSATED])
        .values_list("step", "kind")
    )
    lines = [
        CustomerLine(name=line.product.name, quantity=line.quantity, unit_price=line.unit_price,
                     line_total=line.line_total)
        for line in order.lines.select_related("product").order_by("id")
    ]
    charged = ("charge", Kind.SUCCEEDED) in done
    refunded = charged and ("charge", Kind.COMPENSATED) in done
    shipped = ("ship", Kind.SUCCEEDED) in done and ("ship", Kind.COMPENSATED) not in done
    delivered = order.status == OrderStatus.DELIVERED
    notified = ("notify", Kind.SUCCEEDED) in done

    not_charged = "We've refunded your payment in full." if refunded else "You have not been charged."
    outcome = "in_progress"
    if order.status == OrderStatus.REJECTED:
        headline, message, outcome = "We couldn't accept your order", not_charged, "unsuccessful"
    elif order.status == OrderStatus.CANCELLED:
        headline, message, outcome = "Your order was cancelled", not_charged, "unsuccessful"
    elif order.status == OrderStatus.FAILED or order.saga_status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
        outcome = "unsuccessful"
        headline = "We couldn't complete your order"
        if order.saga_status == SagaStatus.COMPENSATING:
            message = "We're reversing it now; any payment taken will be refunded in full."
        else:
            message = not_charged
    elif delivered:
        headline, message, outcome = "Delivered", "Your order has arrived. Thank you for shopping with us.", "done"
    elif shipped:
        headline = "Packed and handed to the carrier"
        message = "Your parcel is on its way."
    elif charged:
        headline, message = "Payment taken", "We're packing your order."
    else:
        headline, message = "We've received your order", "We're checking it and will take payment shortly."

    stages = [
        CustomerStage("We've received your order", "done"),
        CustomerStage("Payment taken", "done" if charged and not refunded else "upcoming"),
        CustomerStage("Packed and handed to the carrier", "done" if shipped else "upcoming"),
        CustomerStage("Delivered", "done" if delivered else "upcoming"),
    ]
    if outcome == "in_progress":
        for stage in stages:
            if stage.state == "upcoming":
                stage.state = "current"
                break
    return CustomerOrderStatus(
        number=order.number, placed_at=order.created_at, currency=order.currency, total=order.total,
        headline=headline, message=message, outcome=outcome, stages=stages, lines=lines,
        confirmation_sent=notified,
    )
