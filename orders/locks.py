"""Every row lock the app takes, in one place, always in primary-key order.

Taking locks in one fixed order (order row first, then products by id) is what keeps
concurrent sagas from deadlocking each other. Call these inside transaction.atomic().
On SQLite, select_for_update is a no-op; IMMEDIATE transactions serialise writers instead.
"""

from .models import Order, Product, Return


def lock_order(order_id: int) -> Order:
    return Order.objects.select_for_update().get(pk=order_id)


def lock_products(product_ids) -> dict[int, Product]:
    products = Product.objects.select_for_update().filter(pk__in=sorted(set(product_ids))).order_by("pk")
    return {p.pk: p for p in products}


def lock_return(return_id: int) -> Return:
    """A return's row, taken after its order's (lock_order first): its state moves under it."""
    return Return.objects.select_for_update().get(pk=return_id)
