"""Stock moves made by the saga: reserve, release, confirm (sell), restock.

Each move is recorded as StockMovement rows under the step's idempotency key (unique per
product), in the same transaction as the counters, so a retried activity finds its
earlier rows and moves nothing twice. Counters keep on_hand + reserved + sold == received.
"""

from ..errors import InventoryFailure, OutOfStock
from ..faults import fault_for
from ..locks import lock_order, lock_products
from ..models import Order, Reservation, SagaEvent, StockMovement
from .events import saga_event_record
from .transactions import step_atomic


def _already_done(key: str) -> bool:
    return StockMovement.objects.filter(idempotency_key=key).exists()


def inventory_reserve(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Hold stock for every line, or nothing at all. Raises OutOfStock.

    Locks: the order row, then its products by id.
    (No savepoint when nested: orders.services.transactions.step_atomic.)
    """
    with step_atomic():
        order = lock_order(order_id)
        if _already_done(idempotency_key):
            return "already reserved"
        lines = list(order.lines.all())
        products = lock_products(line.product_id for line in lines)
        short = [
            f"{products[line.product_id].name} (wanted {line.quantity}, {products[line.product_id].on_hand} left)"
            for line in lines
            if products[line.product_id].on_hand < line.quantity
        ]
        if short:
            raise OutOfStock("Not enough stock: " + "; ".join(short))
        for line in lines:
            product = products[line.product_id]
            product.on_hand -= line.quantity
            product.reserved += line.quantity
            product.save(update_fields=["on_hand", "reserved"])
            Reservation.objects.create(order=order, product=product, quantity=line.quantity)
            StockMovement.objects.create(
                order=order, product=product, kind=StockMovement.Kind.RESERVE,
                quantity=line.quantity, idempotency_key=idempotency_key,
            )
        detail = ", ".join(f"{line.quantity} x {products[line.product_id].name}" for line in lines)
        saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step="reserve", detail=f"Reserved {detail}", attempt=attempt)
        return detail


def _move_reservations(
    *, order_id: int, idempotency_key: str, attempt: int, step: str, event_kind: str,
    from_state: str, to_state: str, movement: str, counters: tuple[str, str], verb: str,
) -> str:
    """Move every reservation of the order in one state to another, shifting stock counters
    (counters[0] -> counters[1]) and logging one movement per product under the key.
    (No savepoint when nested: orders.services.transactions.step_atomic.)"""
    with step_atomic():
        order = lock_order(order_id)
        if _already_done(idempotency_key):
            return f"already {verb}"
        reservations = list(order.reservations.filter(state=from_state))
        products = lock_products(r.product_id for r in reservations)
        source, target = counters
        for reservation in reservations:
            product = products[reservation.product_id]
            setattr(product, source, getattr(product, source) - reservation.quantity)
            setattr(product, target, getattr(product, target) + reservation.quantity)
            product.save(update_fields=[source, target])
            reservation.state = to_state
            reservation.save(update_fields=["state", "updated_at"])
            StockMovement.objects.create(
                order=order, product=product, kind=movement,
                quantity=reservation.quantity, idempotency_key=idempotency_key,
            )
        moved = sum(r.quantity for r in reservations)
        detail = f"{verb.capitalize()} {moved} item(s)" if reservations else f"Nothing {verb}"
        saga_event_record(order, kind=event_kind, step=step, detail=detail, attempt=attempt)
        return detail


def reservation_release(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Compensation of reserve: held stock goes back on the shelf. Stock already sold is
    left to inventory_restock. Locks: the order row, then its products by id."""
    return _move_reservations(
        order_id=order_id, idempotency_key=idempotency_key, attempt=attempt, step="reserve",
        event_kind=SagaEvent.Kind.COMPENSATED, from_state=Reservation.State.HELD,
        to_state=Reservation.State.RELEASED, movement=StockMovement.Kind.RELEASE,
        counters=("reserved", "on_hand"), verb="released",
    )


def inventory_confirm(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Turn the reservation into a sale. Raises InventoryFailure (sandbox fault).
    Locks: the order row, then its products by id."""
    plan = Order.objects.values_list("fault_plan", flat=True).get(pk=order_id)
    if fault_for(plan, "inventory").kind == "fail":
        raise InventoryFailure("Warehouse system rejected the stock confirmation (sandbox fault)")
    return _move_reservations(
        order_id=order_id, idempotency_key=idempotency_key, attempt=attempt, step="confirm",
        event_kind=SagaEvent.Kind.SUCCEEDED, from_state=Reservation.State.HELD,
        to_state=Reservation.State.CONFIRMED, movement=StockMovement.Kind.CONFIRM,
        counters=("reserved", "sold"), verb="sold",
    )


def inventory_restock(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Compensation of confirm: sold items go back on the shelf.
    Locks: the order row, then its products by id."""
    return _move_reservations(
        order_id=order_id, idempotency_key=idempotency_key, attempt=attempt, step="confirm",
        event_kind=SagaEvent.Kind.COMPENSATED, from_state=Reservation.State.CONFIRMED,
        to_state=Reservation.State.RESTOCKED, movement=StockMovement.Kind.RESTOCK,
        counters=("sold", "on_hand"), verb="restocked",
    )
