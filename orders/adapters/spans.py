"""A span around every call to the outside world (gateway, carrier, mailer), when tracing
is on: `payment.charge`, `shipping.book_parcel`, `notify.send`..., with the order and the
idempotency key, and the error if the call failed. Off, a call costs one boolean check."""

import functools

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ordersite.tracing import tracing_on

_tracer = trace.get_tracer("orders.adapters")


def _call_attributes(service: str, operation: str, args: tuple, kwargs: dict) -> dict:
    attributes = {"peer.service": service, "ordersite.operation": operation}
    # Requests are dataclasses (ChargeRequest, Notification) or keyword arguments.
    request = args[0] if args else None
    order_id = kwargs.get("order_id", getattr(request, "order_id", None))
    key = kwargs.get("shipment_key", getattr(request, "idempotency_key", None))
    if key is None and isinstance(request, str):
        key = request  # lookups take the key itself
    if order_id is not None:
        attributes["ordersite.order_id"] = int(order_id)
    if key:
        attributes["ordersite.idempotency_key"] = str(key)
    return attributes


class Traced:
    """An adapter whose every public method runs in a client span named `<service>.<method>`."""

    def __init__(self, adapter, service: str):
        self._adapter = adapter
        self.service = service

    def __getattr__(self, name: str):
        attr = getattr(self._adapter, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def traced(*args, **kwargs):
            if not tracing_on():
                return attr(*args, **kwargs)
            # start_as_current_span records an exception and marks the span as failed.
            with _tracer.start_as_current_span(f"{self.service}.{name}", kind=SpanKind.CLIENT,
                                               attributes=_call_attributes(self.service, name, args, kwargs)):
                return attr(*args, **kwargs)

        return traced

    def __repr__(self) -> str:
        return f"Traced({self._adapter!r}, {self.service})"
