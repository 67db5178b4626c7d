"""Test data, built through the same services the app uses."""

import itertools
from decimal import Decimal

from orders.models import Product
from orders.services.catalog import product_create
from orders.services.ordering import LineRequest, order_create

_sku = itertools.count(1)


def make_product(*, price: str = "10.00", stock: int = 10, name: str | None = None) -> Product:
    n = next(_sku)
    return product_create(sku=f"SKU-{n}", name=name or f"Product {n}", price=Decimal(price), stock=stock)


AMSTERDAM = {"name": "Ada Lovelace", "line1": "Keizersgracht 1", "postcode": "1015 CJ", "city": "Amsterdam",
             "country": "NL", "phone": "+31 20 123 4567"}


def make_order(*, products: list[tuple[Product, int]] | None = None, fault_plan: dict | None = None,
               email: str = "ada@example.com", start_saga: bool = True, shipping_address: dict | None = None):
    if products is None:
        products = [(make_product(), 1)]
    return order_create(
        customer_name="Ada Lovelace",
        customer_email=email,
        lines=[LineRequest(product_id=p.pk, quantity=q) for p, q in products],
        fault_plan=fault_plan,
        start_saga=start_saga,
        shipping_address=shipping_address,
    )


# AMSTERDAM as the create form's fields (the name comes from the customer's).
SHIPPING_FORM = {("phone" if key == "phone" else f"ship_{key}"): value
                 for key, value in AMSTERDAM.items() if key != "name"}


def create_form_data(product, quantity: int = 1, fault_preset: str = "") -> dict:
    """What an operator posts to the create-order form for one line of `product`."""
    return {"customer_name": "Grace Hopper", "customer_email": "grace@example.com",
            "line-0-product": str(product.pk), "line-0-quantity": str(quantity), "fault_preset": fault_preset,
            **SHIPPING_FORM}
