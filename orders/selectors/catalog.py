"""Products as the shop offers them."""

from ..models import Product


def products_for_sale() -> list[Product]:
    """Active products for the order form's picker, with price and stock."""
    return list(Product.objects.filter(active=True).only("id", "sku", "name", "price", "on_hand").order_by("name", "id"))
