"""Reads behind the staff order pages: the order list (filters, search, sorts, pages) and
which operator actions fit an order for a user. Data only: labels and copy are in
ops.order_pages.presenters.
"""

import re
from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Q, QuerySet

from orders.models import Order
from orders.services.commands import OrderFacts, operator_action_check
from orders.status import STUCK_SAGA_STATUSES, SagaStatus

from ..dates import day_start
from ..keyset import COUNT_CAP, PAGE_SIZE, KeysetPage, PageRequest, keyset_page
from ..services import ACTION_PERMISSIONS

# --- the order list ---------------------------------------------------------------------

# Sort keys offered by the list; each ends with the primary key so pages never overlap.
LIST_SORTS = {
    "-created": ("-created_at", "-id"),
    "created": ("created_at", "id"),
    "-total": ("-total", "-id"),
    "total": ("total", "id"),
    "status": ("status", "-created_at", "-id"),
    "-status": ("-status", "-created_at", "-id"),
}
DEFAULT_SORT = "-created"
_ORDER_NUMBER = re.compile(r"^(?:so-?)?0*(\d{1,12})$", re.IGNORECASE)
_WHOLE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class OrderListFilters:
    status: str = ""
    saga_status: str = ""
    step: str = ""
    stuck: bool = False
    needs_followup: bool = False
    date_from: date | None = None
    date_to: date | None = None
    q: str = ""
    sort: str = DEFAULT_SORT


def order_list_queryset(filters: OrderListFilters) -> QuerySet[Order]:
    """Orders matching the filters, sorted; only the columns the list shows are loaded."""
    qs = Order.objects.only(
        "id", "number", "customer_name", "customer_email", "currency", "total", "status",
        "saga_status", "current_step", "created_at", "last_event_at", "stuck_since",
    )
    if filters.status:
        qs = qs.filter(status=filters.status)
    saga_statuses = {s for s in (filters.saga_status,) if s}
    if filters.stuck:
        saga_statuses.update(STUCK_SAGA_STATUSES)
    if filters.needs_followup:
        saga_statuses.add(SagaStatus.NEEDS_FOLLOWUP)
    if len(saga_statuses) == 1:
        qs = qs.filter(saga_status=saga_statuses.pop())
    elif saga_statuses:
        qs = qs.filter(saga_status__in=saga_statuses)
    if filters.step:
        qs = qs.filter(current_step=filters.step)
    if filters.date_from:
        qs = qs.filter(created_at__gte=day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(created_at__lt=day_start(filters.date_to + timedelta(days=1)))
    q = filters.q.strip()
    if q:
        number = _ORDER_NUMBER.match(q)
        if number:
            # An order number is unique: an exact lookup, not a scan.
            qs = qs.filter(number=f"SO-{int(number.group(1)):06d}")
        elif _WHOLE_EMAIL.match(q):
            # A whole address is an exact lookup on the (customer_email, created_at) index, as
            # typed or lower-cased; anything partial falls through to the scan below.
            qs = qs.filter(customer_email__in={q, q.lower()})
        else:
            qs = qs.filter(Q(customer_name__icontains=q) | Q(customer_email__icontains=q))
    return qs.order_by(*LIST_SORTS.get(filters.sort, LIST_SORTS[DEFAULT_SORT]))


def order_list(filters: OrderListFilters, page: PageRequest, *, per_page: int = PAGE_SIZE) -> KeysetPage:
    """One page of the list by keyset (ops.keyset): the rows in one query, and a count
    capped at COUNT_CAP only when the template shows it."""
    return keyset_page(order_list_queryset(filters), page, per_page=per_page, count_cap=COUNT_CAP)


def order_row_get(order_id: int) -> Order | None:
    """One list row, for the live list."""
    return order_list_queryset(OrderListFilters()).filter(pk=order_id).first()


# --- operator actions -------------------------------------------------------------------

# The order the buttons come in.
ACTION_ORDER = ("retry", "retry_compensation", "compensate", "cancel", "resend", "resolved",
                "mark_delivered", "lost_refund", "lost_reship")


@dataclass
class OrderActions:
    order: Order
    # The actions this order's state allows and the user's permissions cover, in ACTION_ORDER.
    actions: list[str]
    # Whether this user could act on some order at all (viewers never see buttons).
    may_act: bool


def user_action_permissions(user) -> frozenset[str]:
    """The operator-action permissions a user holds (what the buttons depend on)."""
    if user is None or not user.is_authenticated:
        return frozenset()
    return frozenset(p for p in set(ACTION_PERMISSIONS.values()) if user.has_perm(p))


def order_actions(order: Order, permissions: frozenset[str]) -> OrderActions:
    """The operator actions this order's state allows and the permissions cover."""
    facts = OrderFacts(order)
    actions = [
        action for action in ACTION_ORDER
        if ACTION_PERMISSIONS[action] in permissions and operator_action_check(order, action, facts) is None
    ]
    return OrderActions(order=order, actions=actions, may_act=bool(permissions))


def order_for_actions(order_id: int) -> Order | None:
    return Order.objects.filter(pk=order_id).first()
