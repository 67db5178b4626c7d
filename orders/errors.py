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


class RefundRefused(OrderError):
    """The gateway refused the refund for good (the charge disputed, the card closed).
    Never retried: the compensation cannot complete without staff."""


class CancelRefused(OrderError):
    """The carrier refused to cancel the shipment (already handed over). Never retried:
    the compensation cannot complete without staff."""


class NotificationFailed(OrderError):
    """The customer could not be notified. Retried a little, then a follow-up."""


NON_RETRYABLE_ERRORS = [
    OrderInvalid.__name__,
    OutOfStock.__name__,
    InventoryFailure.__name__,
    PaymentDeclined.__name__,
    ShippingRejected.__name__,
    RefundRefused.__name__,
    CancelRefused.__name__,
]
