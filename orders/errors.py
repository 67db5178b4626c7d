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


class ServiceCircuitOpen(GatewayUnavailable):
    """The service's circuit breaker is open (orders.circuit_breaker): the call was not
    made, or it was the call that opened the circuit or a probe that failed (then its
    __cause__ is the service's error, and like any unavailable call it may have acted:
    the idempotency key covers the retry). Retryable, and not the step's failure: the saga
    waits `retry_after` seconds (the cool-off left, or a moment while a probe is in
    flight) without counting the attempt."""

    def __init__(self, service: str, label: str, *, retry_after: float, probing: bool = False):
        self.service = service
        self.label = label
        self.retry_after = max(retry_after, 0.0)
        self.probing = probing
        super().__init__(self.waiting_detail)

    @property
    def waiting_detail(self) -> str:
        when = "a probe is in flight" if self.probing else f"next probe in {self.retry_after:.0f} s"
        return f"waiting: {self.label[:1].lower()}{self.label[1:]} down (circuit open), {when}"


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
    RefundRefused.__name__,
    CancelRefused.__name__,
]

# Retryable errors that are not the step's failure: a saga whose step ends on one of these
# runs the step again instead of counting it toward stuck (the workflow's classification of
# lost attempts should consult this list).
NOT_COUNTED_TOWARD_STUCK = [
    ServiceCircuitOpen.__name__,
]
