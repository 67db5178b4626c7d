"""The outside world: payment gateway, shipping carrier, customer notification.

Each is chosen by a dotted path in settings, so production swaps the sandbox for a
real client without touching the saga.
"""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from .base import Carrier, CustomerNotifier, PaymentGateway


@cache
def _load(path: str):
    return import_string(path)()


def payment_gateway() -> PaymentGateway:
    return _load(settings.PAYMENT_GATEWAY)


def shipping_carrier() -> Carrier:
    return _load(settings.SHIPPING_CARRIER)


def customer_notifier() -> CustomerNotifier:
    return _load(settings.CUSTOMER_NOTIFIER)
