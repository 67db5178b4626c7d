"""The order a log line is about, bound once where the order is known (contextvars).

Services bind it when they load or create an order; every line written afterwards in the
same request, activity or Celery task carries `order_id` and `order_number` (and
django-structlog hands a request's context on to the Celery tasks it queues), so one order
can be followed across web, worker and Celery by `order_id`.
"""

import contextlib

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars


def order_bind(order) -> None:
    """Bind the order for the rest of the current context (a request, an activity, a task)."""
    bind_contextvars(order_id=order.pk, order_number=order.number or None)


@contextlib.contextmanager
def order_scope(order_id: int, number: str | None = None):
    """Bind an order for a block only (a loop over many orders), restoring what was bound."""
    with bound_contextvars(order_id=order_id, order_number=number):
        yield


def get_logger(name: str):
    return structlog.stdlib.get_logger(name)
