"""Products and stock that staff and admins manage (outside any saga)."""

from decimal import Decimal

from django.db import transaction

from ..locks import lock_products
from ..models import Product


def product_create(*, sku: str, name: str, price: Decimal, stock: int = 0, active: bool = True) -> Product:
    if price <= 0:
        raise ValueError("price must be positive")
    if stock < 0:
        raise ValueError("stock cannot be negative")
    return Product.objects.create(sku=sku, name=name, price=price, active=active, on_hand=stock, received=stock)


def product_restock(*, product_id: int, quantity: int) -> Product:
    """Put new goods on the shelf: the one change that grows a product's total stock.

    Locks: the product row.
    """
    if quantity <= 0:
        raise ValueError("restock quantity must be positive")
    with transaction.atomic():
        product = lock_products([product_id])[product_id]
        product.on_hand += quantity
        product.received += quantity
        product.save(update_fields=["on_hand", "received"])
    return product


def product_deactivate(*, product_id: int) -> None:
    Product.objects.filter(pk=product_id).update(active=False)
