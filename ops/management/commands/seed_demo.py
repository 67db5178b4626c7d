from decimal import Decimal

from django.core.management.base import BaseCommand

from orders.models import Product
from orders.services.catalog import product_create
from ops.roles import roles_ensure

DEMO_PRODUCTS = [
    ("MUG-01", "Enamel camping mug", "12.50", 200),
    ("TEE-01", "Organic cotton t-shirt", "24.00", 120),
    ("BAG-01", "Waxed canvas tote", "39.90", 60),
    ("LAMP-01", "Brass desk lamp", "89.00", 15),
    ("KNIFE-01", "Folding pocket knife", "54.00", 3),
]


class Command(BaseCommand):
    help = "Create the demo products and staff roles (idempotent)."

    def handle(self, *args, **options):
        roles_ensure()
        created = 0
        for sku, name, price, stock in DEMO_PRODUCTS:
            if not Product.objects.filter(sku=sku).exists():
                product_create(sku=sku, name=name, price=Decimal(price), stock=stock)
                created += 1
        self.stdout.write(f"Demo products ready ({created} created, {len(DEMO_PRODUCTS) - created} already there).")
