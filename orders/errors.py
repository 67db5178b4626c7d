"""Domain errors. The saga's retry policies name the non-retryable ones by class name
(Temporal turns an activity's exception into an ApplicationError of that type)."""


class OrderError(Exception):
    """Base for errors a person can read: the message is shown to staff as it is."""


class OrderInvalid(OrderError):
    """The order cannot be fulfilled as placed. Never retried."""


class OutOfStock(OrderError):
    """Not enough stock to reserve. Never retried: the saga compensates."""


class InventoryFailure(OrderError):
    """Confirming the sale failed in a way retrying will not fix."""


class PaymentDeclined(OrderError):
    """The card was declined. Never retried."""


class GatewayUnavailable(OrderError):
    """The payment gateway or carrier is down or timing out. Retried, then stuck."""


class ShippingRejected(OrderError):
    """The carrier refused the shipment. Never retried: the saga compensates."""


class NotificationFailed(OrderError):
    """The customer could not be notified. Retried a little, then a follow-up."""


class InfrastructureUnavailable(OrderError):
    """Our own database or Redis failed during a step. Never the customer's or the
    gateway's fault: retried, and the saga runs the step again instead of going stuck
    or opening a follow-up (orders.saga.activities classifies these)."""


NON_RETRYABLE_ERRORS = [
    OrderInvalid.__name__,
    OutOfStock.__name__,
    InventoryFailure.__name__,
    PaymentDeclined.__name__,
    ShippingRejected.__name__,
]
