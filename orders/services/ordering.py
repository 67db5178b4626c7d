"""Placing an order and validating it for the saga."""

import secrets
import string
from dataclasses import asdict, dataclass
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from ..addresses import AddressInvalid, ShippingAddress, address_clean
from ..errors import OrderInvalid
from ..faults import FaultPlanInvalid, fault_plan_clean
from ..locks import lock_order
from ..log_context import get_logger, order_bind
from ..models import Order, OrderLine, Product, SagaEvent
from ..status import OrderStatus, SagaStatus
from .events import saga_event_record
from .transactions import step_atomic

logger = get_logger(__name__)

@dataclass(frozen=True)
class LineRequest:
    product_id: int
    quantity: int


class OrderRejected(ValueError):
    """The order form's input cannot become an order; the message says why, per field."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def order_create(
    *,
    customer_name: str,
    customer_email: str,
    lines: list[LineRequest],
    fault_plan: dict | None = None,
    created_by=None,
    start_saga: bool = True,
    shipping_address: dict | ShippingAddress | None = None,
) -> Order:
    """Save an order with its lines and start its saga once the transaction commits.

    `shipping_address`: the keyword arguments of orders.addresses.address_clean (name,
    line1, line2, postcode, city, country, phone), or a cleaned ShippingAddress; checked
    here whatever the caller did. Raises OrderRejected with per-field messages (address
    ones keyed by the Order field: ship_postcode, phone, …); nothing is saved then.
    """
    errors: dict[str, str] = {}
    address_fields: dict[str, str] = {}
    if shipping_address is not None:
        raw = asdict(shipping_address) if isinstance(shipping_address, ShippingAddress) else shipping_address
        try:
            address_fields = address_clean(**raw).as_order_fields()
        except AddressInvalid as exc:
            errors.update(exc.errors)
        except TypeError as exc:
            errors["shipping_address"] = f"Incomplete address: {exc}"
    customer_name = (customer_name or "").strip()
    customer_email = (customer_email or "").strip()
    if not customer_name:
        errors["customer_name"] = "Enter the customer's name."
    try:
        validate_email(customer_email)
    except ValidationError:
        errors["customer_email"] = "Enter a valid email address."
    try:
        plan = fault_plan_clean(fault_plan)
    except FaultPlanInvalid as exc:
        errors["fault_plan"] = str(exc)
        plan = {}
    if plan and not settings.SANDBOX_FAULTS_ENABLED:
        errors["fault_plan"] = "Fault injection is switched off on this system."

    quantities: dict[int, int] = {}
    for line in lines:
        if line.quantity <= 0:
            errors["lines"] = "Every quantity must be at least 1."
        elif line.quantity > settings.MAX_LINE_QUANTITY:
            errors["lines"] = f"At most {settings.MAX_LINE_QUANTITY} of one product per order."
        quantities[line.product_id] = quantities.get(line.product_id, 0) + line.quantity
    if not quantities:
        errors["lines"] = "Add at least one product."
    products = Product.objects.in_bulk(list(quantities))
    missing = [pid for pid in quantities if pid not in products or not products[pid].active]
    if missing:
        errors["lines"] = "Some products are not for sale: " + ", ".join(map(str, missing))
    if errors:
        raise OrderRejected(errors)

    total = sum((products[pid].price * qty for pid, qty in quantities.items()), Decimal("0"))
    if total > settings.MAX_ORDER_TOTAL:
        raise OrderRejected({"lines": f"Order total {total} exceeds the limit of {settings.MAX_ORDER_TOTAL}."})

    with transaction.atomic():
        order = Order.objects.create(
            customer_name=customer_name,
            customer_email=customer_email,
            currency=settings.SHOP_CURRENCY,
            total=total,
            fault_plan=plan,
            created_by=created_by,
            **address_fields,
        )
        order.number = f"SO-{order.pk:06d}"
        order.workflow_id = order_workflow_id(order.pk)
        order.save(update_fields=["number", "workflow_id"])
        order_bind(order)
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product_id=pid, quantity=qty, unit_price=products[pid].price)
            for pid, qty in quantities.items()
        )
        if start_saga:
            from .saga import saga_start  # the saga module imports this one

            transaction.on_commit(lambda: saga_start(order_id=order.pk))
    logger.info("order_created", workflow_id=order.workflow_id, total=str(total), lines=len(quantities))
    return order


# Letters and digits only: ids and keys stay easy to split on '-' and ':'.
_WORKFLOW_ID_ALPHABET = string.ascii_letters + string.digits


def order_workflow_id(order_pk: int) -> str:
    """`order-<pk>-<random>`: the saga's workflow id, and through it every idempotency key
    (`<workflow id>:<step>`) and the delivery tracker's id. The random part keeps a restored
    database, or staging and production sharing a gateway account or a Temporal namespace,
    from ever reusing an old order's keys."""
    return f"order-{order_pk}-{''.join(secrets.choice(_WORKFLOW_ID_ALPHABET) for _ in range(10))}"


def order_validate(*, order_id: int, attempt: int) -> str:
    """First saga step: is the order still fulfillable as placed? Raises OrderInvalid.

    Locks: the order row. (No savepoint when nested: orders.services.transactions.step_atomic.)
    """
    with step_atomic():
        order = lock_order(order_id)
        if order.status != OrderStatus.PLACED:
            return f"already validated (order is {order.status})"  # a retry after the commit
        lines = list(order.lines.select_related("product"))
        problems = []
        if not lines:
            problems.append("the order has no lines")
        for line in lines:
            if not line.product.active:
                problems.append(f"{line.product.name} is no longer for sale")
            if line.quantity > settings.MAX_LINE_QUANTITY:
                problems.append(f"{line.quantity} x {line.product.name} is over the per-order limit")
        total = sum((line.line_total for line in lines), Decimal("0"))
        if total != order.total:
            problems.append(f"line total {total} does not match order total {order.total}")
        if order.total > settings.MAX_ORDER_TOTAL:
            problems.append(f"order total {order.total} is over the limit {settings.MAX_ORDER_TOTAL}")
        if problems:
            raise OrderInvalid("Order is invalid: " + "; ".join(problems))
        detail = f"{len(lines)} line(s), total {order.total} {order.currency}"
        saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step="validate", detail=detail, attempt=attempt,
                          status=OrderStatus.PROCESSING, saga_status=SagaStatus.RUNNING)
        return detail
