"""The outside world: payment gateway, shipping carrier, customer notification.

Each is chosen by a dotted path in settings, so production swaps the sandbox for a
real client without touching the saga. The gateway and the carrier are loaded behind
their circuit breakers (orders.circuit_breaker), shared by every process.
"""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from ..circuit_breaker import BreakerGuarded, breaker_for
from ..metrics import Instrumented
from .base import Carrier, CustomerNotifier, PaymentGateway
from .spans import Traced


@cache
def _load(path: str):
    return import_string(path)()


@cache
def _guarded(path: str, breaker: str):
    # Counted, timed and traced outside the breaker, so calls it refuses show as errors in
    # the metrics and in the trace too.
    return Instrumented(Traced(BreakerGuarded(_load(path), breaker_for(breaker)), breaker), METRICS_SERVICE[breaker])


# The service label of the gateway's and the carrier's metrics (orders.metrics.OUTSIDE_*).
METRICS_SERVICE = {"payment": "gateway", "shipping": "carrier"}


def payment_gateway() -> PaymentGateway:
    return _guarded(settings.PAYMENT_GATEWAY, "payment")


def shipping_carrier() -> Carrier:
    return _guarded(settings.SHIPPING_CARRIER, "shipping")


def customer_notifier() -> CustomerNotifier:
    return _traced_notifier(settings.CUSTOMER_NOTIFIER)


@cache
def _traced_notifier(path: str):
    return Traced(_load(path), "notify")
