"""What an irreversible operator action would do to an order, read from the ledgers at that
moment, and what the saga's rollback did do. Data only: the wording is the pages'.

A rollback (compensate, cancel) undoes what the ledgers say was done: the money charged and
not yet refunded, stock sold (restocked) or held (released), parcels booked and not yet
cancelled. The saga sends the customer no email when it rolls back (only the notify step
does), so a rollback's preview says so rather than promising one.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, Sum

from ..models import Order, Payment, Reservation, Shipment


@dataclass(frozen=True)
class StockLine:
    product: str
    quantity: int


@dataclass
class RollbackPreview:
    """What compensating or cancelling an order would undo, from its ledgers now."""

    order_id: int
    number: str
    currency: str
    refund: Decimal = Decimal("0")  # charged and not yet refunded
    restock: list[StockLine] = field(default_factory=list)  # sold: goes back on the shelf
    release: list[StockLine] = field(default_factory=list)  # held: the reservation is let go
    parcels_to_cancel: int = 0
    emails: int = 0  # the rollback sends the customer none

    @property
    def charged(self) -> bool:
        return self.refund > 0

    @property
    def items_to_restock(self) -> int:
        return sum(line.quantity for line in self.restock)

    @property
    def items_to_release(self) -> int:
        return sum(line.quantity for line in self.release)

    @property
    def nothing_to_undo(self) -> bool:
        return not (self.refund or self.restock or self.release or self.parcels_to_cancel)


@dataclass
class RollbackOutcome:
    """What a finished rollback did, from the ledgers after it."""

    refunded: Decimal = Decimal("0")
    currency: str = ""
    restocked: int = 0
    released: int = 0
    parcels_cancelled: int = 0
    emails_sent: int = 0

    @property
    def nothing_undone(self) -> bool:
        return not (self.refunded or self.restocked or self.released or self.parcels_cancelled)


@dataclass(frozen=True)
class BulkRollbackPreview:
    """The sum of the previews of many orders (a bulk compensate)."""

    orders: int
    refunds: dict[str, Decimal]  # per currency
    charged_orders: int
    items_to_restock: int
    items_to_release: int
    parcels_to_cancel: int
    emails: int


def _money(order_ids: Iterable[int]) -> dict[int, Decimal]:
    """Charged minus refunded, per order. One query."""
    rows = (Payment.objects.filter(order_id__in=order_ids).values("order_id")
            .annotate(charged=Sum("amount", filter=Q(kind=Payment.Kind.CHARGE)),
                      refunded=Sum("amount", filter=Q(kind=Payment.Kind.REFUND))))
    return {row["order_id"]: (row["charged"] or Decimal("0")) - (row["refunded"] or Decimal("0")) for row in rows}


def rollback_previews(order_ids: list[int]) -> dict[int, RollbackPreview]:
    """The preview of each order that exists, in four queries whatever the number of orders."""
    orders = Order.objects.filter(pk__in=order_ids).only("id", "number", "currency")
    previews = {o.pk: RollbackPreview(order_id=o.pk, number=o.number, currency=o.currency) for o in orders}
    for order_id, left in _money(previews).items():
        previews[order_id].refund = max(left, Decimal("0"))
    reservations = (Reservation.objects.filter(order_id__in=previews,
                                               state__in=(Reservation.State.HELD, Reservation.State.CONFIRMED))
                    .select_related("product").order_by("order_id", "id"))
    for reservation in reservations:
        line = StockLine(product=reservation.product.name, quantity=reservation.quantity)
        preview = previews[reservation.order_id]
        (preview.release if reservation.state == Reservation.State.HELD else preview.restock).append(line)
    shipments = Shipment.objects.filter(order_id__in=previews,
                                        state__in=(Shipment.State.BOOKING, Shipment.State.BOOKED))
    for order_id, booked in shipments.values_list("order_id", "parcels_booked"):
        previews[order_id].parcels_to_cancel = booked
    return previews


def rollback_preview(order_id: int) -> RollbackPreview | None:
    return rollback_previews([order_id]).get(order_id)


def bulk_rollback_preview(order_ids: list[int]) -> BulkRollbackPreview:
    previews = rollback_previews(order_ids).values()
    refunds: dict[str, Decimal] = {}
    for preview in previews:
        if preview.refund:
            refunds[preview.currency] = refunds.get(preview.currency, Decimal("0")) + preview.refund
    return BulkRollbackPreview(
        orders=len(previews),
        refunds=dict(sorted(refunds.items())),
        charged_orders=sum(1 for p in previews if p.charged),
        items_to_restock=sum(p.items_to_restock for p in previews),
        items_to_release=sum(p.items_to_release for p in previews),
        parcels_to_cancel=sum(p.parcels_to_cancel for p in previews),
        emails=sum(p.emails for p in previews),
    )


def rollback_outcome(order: Order) -> RollbackOutcome:
    """What the rollback of a finished order did: refunds, stock back, parcels cancelled."""
    refunded = (Payment.objects.filter(order_id=order.pk, kind=Payment.Kind.REFUND)
                .aggregate(total=Sum("amount"))["total"]) or Decimal("0")
    stock = dict(Reservation.objects.filter(order_id=order.pk).values_list("state").annotate(total=Sum("quantity")))
    shipment = Shipment.objects.filter(order_id=order.pk, state=Shipment.State.CANCELLED).first()
    return RollbackOutcome(
        refunded=refunded, currency=order.currency,
        restocked=stock.get(Reservation.State.RESTOCKED, 0),
        released=stock.get(Reservation.State.RELEASED, 0),
        parcels_cancelled=shipment.parcels_booked if shipment else 0,
        emails_sent=0,
    )


def oldest_stuck_since(statuses: Iterable[str]) -> datetime | None:
    """When the longest-waiting stuck saga got stuck."""
    return (Order.objects.filter(saga_status__in=list(statuses), stuck_since__isnull=False)
            .order_by("stuck_since").values_list("stuck_since", flat=True).first())



@dataclass(frozen=True)
class BulkRollbackOutcome:
    """What the rollbacks of many orders have done so far, from the ledgers."""

    refunded: dict[str, Decimal]  # per currency
    restocked: int
    released: int
    parcels_cancelled: int

    @property
    def nothing_undone(self) -> bool:
        return not (self.refunded or self.restocked or self.released or self.parcels_cancelled)


def bulk_rollback_outcome(order_ids) -> BulkRollbackOutcome:
    """`order_ids`: ids, or a queryset of them (a subquery). Three aggregate queries."""
    refunded = dict(Payment.objects.filter(order_id__in=order_ids, kind=Payment.Kind.REFUND).order_by()
                    .values_list("currency").annotate(total=Sum("amount")))
    stock = dict(Reservation.objects.filter(order_id__in=order_ids,
                                            state__in=(Reservation.State.RESTOCKED, Reservation.State.RELEASED))
                 .order_by().values_list("state").annotate(total=Sum("quantity")))
    parcels = (Shipment.objects.filter(order_id__in=order_ids, state=Shipment.State.CANCELLED)
               .aggregate(total=Sum("parcels_booked"))["total"]) or 0
    return BulkRollbackOutcome(
        refunded=dict(sorted(refunded.items())),
        restocked=stock.get(Reservation.State.RESTOCKED, 0),
        released=stock.get(Reservation.State.RELEASED, 0),
        parcels_cancelled=parcels,
    )
