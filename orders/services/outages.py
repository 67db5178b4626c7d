"""A saga step waiting for an outside service that is known to be down (its circuit is open)."""

from django.db import transaction

from ..locks import lock_order
from ..models import SagaEvent
from .events import saga_event_record


def saga_step_waiting(*, order_id: int, step: str, attempt: int, detail: str, compensation: bool = False) -> None:
    """Record that the step waits ("waiting: payment gateway down (circuit open), next probe in 30 s").

    Not a failed attempt: no 'failed' event and the order's last error is left alone, so
    staff read it as the service's outage, not the order's problem. Takes the order's row lock.
    """
    with transaction.atomic():
        order = lock_order(order_id)
        prefix = "Compensation " if compensation else ""
        saga_event_record(order, kind=SagaEvent.Kind.RETRYING, step=step, detail=f"{prefix}{detail}", attempt=attempt)
