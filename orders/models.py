"""The shop's data: products and stock, orders, and the ledgers the saga writes.

Every row that moves money or stock carries an idempotency key derived from the
workflow id and the step, unique in the database, so that a retried or replayed
activity can never charge, refund or move stock twice.
"""

import secrets
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from .addresses import COUNTRIES
from .saga.shared import EVENT_KIND_LABELS, EventKind
from .status import OrderStatus, SagaStatus, Step


def new_public_token() -> str:
    return secrets.token_urlsafe(24)


class Product(models.Model):
    """Stock is split three ways; on_hand + reserved + sold == received always holds."""

    sku = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    active = models.BooleanField(default=True)
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)
    sold = models.PositiveIntegerField(default=0)
    # Everything ever put on the shelf: the sum the three counters must add up to.
    received = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(received=F("on_hand") + F("reserved") + F("sold")),
                name="product_stock_conserved",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"


class Order(models.Model):
    number = models.CharField(max_length=20, unique=True, blank=True)
    customer_name = models.CharField(max_length=200)
    customer_email = models.EmailField(db_index=True)
    # Where the parcel goes and how to reach the customer (orders.addresses validates them).
    # Blank on orders placed before addresses were taken.
    ship_name = models.CharField(max_length=200, blank=True)
    ship_line1 = models.CharField(max_length=200, blank=True)
    ship_line2 = models.CharField(max_length=200, blank=True)
    ship_postcode = models.CharField(max_length=20, blank=True)
    ship_city = models.CharField(max_length=100, blank=True)
    ship_country = models.CharField(max_length=2, blank=True, choices=sorted(COUNTRIES.items()))
    phone = models.CharField(max_length=32, blank=True)
    currency = models.CharField(max_length=3, default="EUR")
    total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.PLACED)
    saga_status = models.CharField(max_length=20, choices=SagaStatus.choices, default=SagaStatus.PENDING)
    current_step = models.CharField(max_length=20, choices=Step.choices, blank=True)
    # Why the saga is stuck or failed, in words staff can act on.
    last_error = models.TextField(blank=True)
    stuck_since = models.DateTimeField(null=True, blank=True)
    workflow_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    public_token = models.CharField(max_length=64, unique=True, default=new_public_token, editable=False)
    # Sandbox fault injection chosen at creation (see orders.faults); empty in production.
    fault_plan = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Indexed in Meta (order_created), with the saga status alongside.
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the saga last recorded anything: the stalled-saga sweeper looks for old values.
    last_event_at = models.DateTimeField(null=True, blank=True)
    # The newest saga event's id, set with last_event_at: each event's broadcast names the one
    # before it, so a live page holding the timeline up to that one can add the event without
    # reading (ops/order_pages/consumers.py). A plain integer, not a foreign key: nothing
    # joins on it, and an event row needs no constraint back to its order. Null on orders
    # with no event, and on those whose events predate it (their next event names none).
    last_event_id = models.BigIntegerField(null=True, blank=True)
    # The money books of the order, kept by the payment and return services under the
    # order's row lock: what the gateway took, what went back, and what open returns are
    # about to give back. The CHECK below is what stops refunds exceeding the charge,
    # whichever form or path asked for them.
    charged_total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    refunded_total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    refund_pending_total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(refunded_total__gte=0) & Q(refund_pending_total__gte=0)
                & Q(charged_total__gte=F("refunded_total") + F("refund_pending_total")),
                name="order_refunds_within_charge",
            ),
        ]
        indexes = [
            models.Index(fields=["saga_status", "last_event_at"], name="order_saga_status_last_event"),
            models.Index(fields=["status", "-created_at"], name="order_status_created"),
            models.Index(fields=["saga_status", "-created_at"], name="order_saga_status_created"),
            models.Index(fields=["customer_email", "-created_at"], name="order_email_created"),
            # Serves every created_at range and sort; covering the saga status makes the
            # dashboard's orders-per-hour chart an index-only scan on Postgres.
            models.Index(fields=["created_at"], include=["saga_status"], name="order_created"),
            # Stuck orders only (a few in a hundred): the dashboard's charts of their age and
            # of the money they hold read this small index alone.
            models.Index(fields=["stuck_since"], include=["saga_status", "current_step", "currency", "total", "id"],
                         name="order_stuck_since",
                         condition=Q(saga_status__in=[SagaStatus.STUCK, SagaStatus.COMPENSATION_STUCK])),
        ]

    def __str__(self) -> str:
        return self.number or f"order {self.pk}"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="orderline_quantity_positive"),
            models.UniqueConstraint(fields=["order", "product"], name="orderline_one_per_product"),
        ]

    def __str__(self) -> str:
        # The admin's inline rows are titled by this: "2 × Widget", not "OrderLine object (10)".
        return f"{self.quantity} × {self.product.name}"

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class StockMovement(models.Model):
    """One row per stock move the saga made; the key makes each move happen once."""

    class Kind(models.TextChoices):
        RESERVE = "reserve", "reserved"
        RELEASE = "release", "released"
        CONFIRM = "confirm", "sold"
        RESTOCK = "restock", "restocked"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="stock_movements")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="movements")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    quantity = models.PositiveIntegerField()
    idempotency_key = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key", "product"], name="stockmovement_once_per_key"),
        ]


class Reservation(models.Model):
    """What an order holds of a product, and where that stock went afterwards."""

    class State(models.TextChoices):
        HELD = "held"
        RELEASED = "released"
        CONFIRMED = "confirmed"
        RESTOCKED = "restocked"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="reservations")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.HELD)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="reservation_one_per_product"),
        ]
        indexes = [
            # Stock held now (in-flight and stuck orders), a sliver of all reservations: the
            # dashboard's stock-held-by-stuck-orders chart reads it without the sold ones.
            models.Index(fields=["order"], include=["quantity"], name="reservation_held", condition=Q(state="held")),
        ]


class Payment(models.Model):
    """The money ledger: charges and refunds, each once per idempotency key."""

    class Kind(models.TextChoices):
        CHARGE = "charge"
        REFUND = "refund"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    idempotency_key = models.CharField(max_length=150, unique=True)
    gateway_reference = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
        ]


class Shipment(models.Model):
    class State(models.TextChoices):
        BOOKING = "booking"
        BOOKED = "booked"
        CANCELLED = "cancelled"
        DELIVERED = "delivered"
        # The tracker's other ends: the parcel came back to the shop, or staff reported it lost.
        RETURNED = "returned"
        LOST = "lost"

    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="shipment")
    state = models.CharField(max_length=10, choices=State.choices, default=State.BOOKING)
    carrier_reference = models.CharField(max_length=100, blank=True)
    parcels_total = models.PositiveIntegerField(default=0)
    parcels_booked = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=150, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When the delivery tracker ended (delivered, returned, lost, or given up): a booked
    # shipment without it still has a tracker running.
    tracking_ended_at = models.DateTimeField(null=True, blank=True)

    @property
    def tracking_number(self) -> str:
        """What the carrier knows the shipment by (its webhooks name it so)."""
        return self.carrier_reference


class CarrierEvent(models.Model):
    """What the carrier told us about a parcel (POST /webhooks/carrier/), stored once per
    event id: a duplicate delivery of the same webhook finds its row and does nothing more."""

    class Event(models.TextChoices):
        IN_TRANSIT = "in_transit", "in transit"
        OUT_FOR_DELIVERY = "out_for_delivery", "out for delivery"
        DELIVERED = "delivered"
        DELIVERY_FAILED = "delivery_failed", "delivery failed"
        RETURNED = "returned", "returned to sender"

    event_id = models.CharField(max_length=100, unique=True)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="carrier_events")
    tracking_number = models.CharField(max_length=150)
    event = models.CharField(max_length=20, choices=Event.choices)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [models.Index(fields=["order", "occurred_at"], name="carrierevent_order_occurred")]

    def __str__(self) -> str:
        return f"{self.event} of {self.tracking_number} ({self.event_id})"


class NotificationAttempt(models.Model):
    """Our ledger of customer notifications. The key names the message (saga, step and
    outcome, e.g. `order-42:notify:confirmed`): it is sent once, whatever the retries;
    failed attempts are rows too and never block a later send."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="notifications")
    succeeded = models.BooleanField()
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    # Blank only on rows from before keys existed.
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"], condition=Q(succeeded=True) & ~Q(idempotency_key=""),
                name="notification_sent_once_per_key",
            ),
        ]


class EmailHandoff(models.Model):
    """What the email adapter handed to Django's mail backend, per message key, committed
    outside any saga transaction so that it survives our crash (orders.adapters.email)."""

    message_id = models.CharField(max_length=200, unique=True)
    recipient = models.CharField(max_length=254)
    started_at = models.DateTimeField(auto_now_add=True)
    # Set once the backend accepted the message; empty if we died during the hand-over.
    handed_at = models.DateTimeField(null=True, blank=True)


class FollowUp(models.Model):
    """Something staff must do for an order: a customer we could not notify (reach them
    another way or resend), one we could not tell that their order failed or was cancelled,
    or a delivery gone wrong (kind)."""

    class State(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Kind(models.TextChoices):
        NOTIFY = "notify", "customer not notified"
        # The delivery tracker's: past the shipment's deadline, or the carrier could not deliver.
        DELIVERY_OVERDUE = "delivery_overdue", "delivery overdue"
        DELIVERY_FAILED = "delivery_failed", "delivery failed"
        # Staff reported the parcel lost: what is owed to the customer now.
        REFUND_DUE = "refund_due", "lost parcel: refund due"
        RESHIP_DUE = "reship_due", "lost parcel: re-ship due"
        # The mailer refused to tell an undone order's customer how it ended (failed,
        # cancelled): the saga has ended, staff reach the customer another way.
        OUTCOME_UNTOLD = "outcome_untold", "customer not told the order ended"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="followups")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.NOTIFY)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    reason = models.TextField()
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    notes = models.TextField(blank=True)
    resolution = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # At most one open follow-up per order and kind, so a replayed step cannot open two.
            models.UniqueConstraint(fields=["order", "kind"], condition=Q(state="open"),
                                    name="followup_one_open_per_order_kind"),
        ]


class OperatorAction(models.Model):
    """A command staff sent to an order's saga (retry, compensate, cancel, resend, resolve):
    who asked, why, and what came of it. The signal carries this row's id, so the saga acts
    once per row, and the saga event it causes points back here (SagaEvent.operator_action).

    Who may send which command is a staff concern (ops.permissions); this is the record.
    """

    class Action(models.TextChoices):
        RETRY = "retry"
        COMPENSATE = "compensate"
        CANCEL = "cancel"
        RESEND = "resend", "resend notification"
        RESOLVED = "resolved", "resolve follow-up"
        RETRY_COMPENSATION = "retry_compensation", "retry compensation"
        # On a shipped order, to its delivery tracker (not the saga, which has finished).
        MARK_DELIVERED = "mark_delivered", "mark delivered"
        LOST_REFUND = "lost_refund", "report lost, refund"
        LOST_RESHIP = "lost_reship", "report lost, re-ship"
        # Returns and refunds (orders.services.returns): the row also names its return.
        RETURN_OPEN = "return_open", "open a return"
        PARCEL_RECEIVED = "parcel_received", "mark returned parcel received"
        REFUND = "refund", "goodwill refund"
        RETURN_RETRY = "return_retry", "retry return refund"
        RETURN_ABANDON = "return_abandon", "give up return refund"

    class Outcome(models.TextChoices):
        REQUESTED = "requested"  # audit row written, signal not yet sent
        SENT = "sent"  # Temporal accepted the signal; the saga has not acted yet
        APPLIED = "applied"
        IGNORED = "ignored"  # the saga's state did not fit the command by the time it arrived
        FAILED = "failed"  # the signal could not be delivered

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="operator_actions")
    action = models.CharField(max_length=20, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.REQUESTED)
    outcome_detail = models.TextField(blank=True)
    # The return a return command is about (open, received, refund, retry, give up).
    return_request = models.ForeignKey(
        "Return", null=True, blank=True, on_delete=models.SET_NULL, related_name="operator_actions"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["order", "-created_at"], name="opaction_order_created")]

    def __str__(self) -> str:
        return f"{self.action} on {self.order} by {self.actor} ({self.outcome})"


class SagaEvent(models.Model):
    """Append-only log of what the saga did; the timeline pages read only this."""

    Kind = models.TextChoices(
        "Kind", [(k.name, (k.value, EVENT_KIND_LABELS.get(k, k.value))) for k in EventKind]
    )

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    step = models.CharField(max_length=20, choices=Step.choices, blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    detail = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    # Who wrote it, once: a replayed bookkeeping activity or a re-run attempt carries the
    # same key and writes nothing new (see orders.services.events.saga_event_record).
    idempotency_key = models.CharField(max_length=255, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The operator command this event answers (a signal applied or ignored), if any.
    operator_action = models.ForeignKey(
        OperatorAction, null=True, blank=True, on_delete=models.SET_NULL, related_name="saga_events"
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["order", "id"], name="sagaevent_order_id"),
            # The dashboard's charts count the last 24 hours of events by step and kind
            # (ops/charts/selectors.py): covering, so that is an index-only scan on Postgres.
            models.Index(fields=["created_at"], include=["step", "kind"], name="sagaevent_created"),
        ]

    def __str__(self) -> str:
        return f"{self.order_id} {self.step} {self.kind}"


class Return(models.Model):
    """Goods coming back (or a goodwill refund with none), run by its own saga
    (orders.saga.return_saga): wait for the parcel, restock, refund, tell the customer.

    `amount` is what the return refunds (its lines, plus shipping when asked); while the
    return is open it is counted in the order's refund_pending_total, so two returns can
    never promise together more than was charged.
    """

    class Kind(models.TextChoices):
        RETURN = "return", "return"
        GOODWILL = "goodwill", "refund without a return"

    class State(models.TextChoices):
        AWAITING_PARCEL = "awaiting_parcel", "waiting for the parcel"
        RECEIVED = "received", "parcel received"
        REFUNDING = "refunding", "refunding"
        STUCK = "stuck", "stuck: waiting for an operator"
        # terminal:
        REFUNDED = "refunded", "refunded"
        EXPIRED = "expired", "parcel never arrived"
        ABANDONED = "abandoned", "refund given up"

    TERMINAL_STATES = (State.REFUNDED, State.EXPIRED, State.ABANDONED)
    OPEN_STATES = (State.AWAITING_PARCEL, State.RECEIVED, State.REFUNDING, State.STUCK)

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="returns")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.RETURN)
    state = models.CharField(max_length=20, choices=State.choices, default=State.AWAITING_PARCEL)
    reason = models.TextField()
    include_shipping = models.BooleanField(default=False)
    shipping_amount = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    workflow_id = models.CharField(max_length=150, unique=True)
    # The refund's key at the gateway: starts with the order's workflow id, so the books
    # (ours, the gateway's, reconciliation's) file it under its order.
    refund_key = models.CharField(max_length=150, unique=True)
    # When the parcel must have arrived; the saga gives up waiting then (None: no parcel).
    deadline = models.DateTimeField(null=True, blank=True)
    received_source = models.CharField(max_length=20, blank=True)
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="return_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"return {self.pk} of {self.order}"

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN_STATES


class ReturnLine(models.Model):
    """Some of one order line coming back; `sellable` items go back on the shelf."""

    return_request = models.ForeignKey(Return, on_delete=models.CASCADE, related_name="lines")
    order_line = models.ForeignKey(OrderLine, on_delete=models.PROTECT, related_name="return_lines")
    quantity = models.PositiveIntegerField()
    sellable = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="returnline_quantity_positive"),
            models.UniqueConstraint(fields=["return_request", "order_line"], name="returnline_one_per_line"),
        ]

    @property
    def amount(self) -> Decimal:
        return self.order_line.unit_price * self.quantity
