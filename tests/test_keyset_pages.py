"""Keyset pages (ops/keyset.py) on the order list: every sort, walked forwards with Next and
backwards from Last with Previous, shows every order exactly once and in the order of the
plain sorted query, ties included; and a deep page is one bounded query, like the first."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ops.keyset import PageRequest, encode_cursor, keyset_page
from ops.order_pages.selectors import LIST_SORTS, OrderListFilters, order_list, order_list_queryset
from orders.models import Order
from tests.factories import make_order, make_product

pytestmark = pytest.mark.django_db

PER_PAGE = 4


@pytest.fixture
def orders_with_ties():
    product = make_product(stock=1000)
    orders = [make_order(products=[(product, 1)], start_saga=False) for _ in range(23)]
    rng = random.Random(7)
    base = timezone.now() - timedelta(days=3)
    for order in orders:
        # Few distinct values, so most rows tie on the first key and the id decides.
        Order.objects.filter(pk=order.pk).update(
            created_at=base + timedelta(minutes=rng.choice([0, 5, 10])),
            total=Decimal(rng.choice(["10.00", "25.50", "99.99"])),
        )
    return orders


def _walk_forward(filters):
    seen, request = [], PageRequest()
    while True:
        page = order_list(filters, request, per_page=PER_PAGE)
        assert len(page.object_list) <= PER_PAGE
        seen.extend(o.pk for o in page.object_list)
        if not page.has_next:
            return seen
        request = PageRequest(after=page.next_cursor, number=page.next_number or 0)


def _walk_backward(filters):
    seen, request = [], PageRequest(last=True)
    while True:
        page = order_list(filters, request, per_page=PER_PAGE)
        seen[:0] = [o.pk for o in page.object_list]
        if not page.has_previous:
            return seen
        request = PageRequest(before=page.previous_cursor)


@pytest.mark.parametrize("sort", sorted(LIST_SORTS))
def test_every_sort_walks_every_order_once_in_order(orders_with_ties, sort):
    filters = OrderListFilters(sort=sort)
    expected = list(order_list_queryset(filters).values_list("pk", flat=True))
    assert len(expected) == 23
    assert _walk_forward(filters) == expected
    assert _walk_backward(filters) == expected


def test_page_labels_and_counts(orders_with_ties):
    filters = OrderListFilters()
    first = order_list(filters, PageRequest(), per_page=PER_PAGE)
    assert (first.label, first.first_index, first.last_index, first.count) == ("Page 1", 1, 4, 23)
    assert not first.has_previous and first.has_next
    second = order_list(filters, PageRequest(after=first.next_cursor, number=2), per_page=PER_PAGE)
    assert (second.label, second.first_index, second.last_index) == ("Page 2", 5, 8)
    last = order_list(filters, PageRequest(last=True), per_page=PER_PAGE)
    assert last.label == "Last page" and not last.has_next and len(last.object_list) == PER_PAGE
    back = order_list(filters, PageRequest(before=first.object_list[-1] and second.previous_cursor), per_page=PER_PAGE)
    assert [o.pk for o in back.object_list] == [o.pk for o in first.object_list] and back.label == "Page 1"


@pytest.mark.parametrize("cursor", ["", "!!", "W10", "WyJ4IiwxXQ", "WzEsMiwzLDRd", "bnVsbA", "x" * 600])
def test_a_bad_cursor_shows_the_first_page(orders_with_ties, cursor):
    filters = OrderListFilters()
    first = order_list(filters, PageRequest(), per_page=PER_PAGE)
    for request in (PageRequest(after=cursor), PageRequest(before=cursor)):
        page = order_list(filters, request, per_page=PER_PAGE)
        assert [o.pk for o in page.object_list] == [o.pk for o in first.object_list]


def test_a_deep_page_is_one_query_bounded_by_the_cursor(orders_with_ties):
    qs = order_list_queryset(OrderListFilters())
    ordering = LIST_SORTS["-created"]
    deepest = list(qs)[-PER_PAGE - 1]
    with CaptureQueriesContext(connection) as queries:
        page = keyset_page(qs, PageRequest(after=encode_cursor(deepest, ordering)), per_page=PER_PAGE)
        rows = list(page.object_list)
    assert len(rows) == PER_PAGE and not page.has_next
    assert len(queries) == 1
    sql = queries[0]["sql"].upper()
    assert "OFFSET" not in sql and "LIMIT 5" in sql
    # The first key bounds the scan (an index condition), not only the OR behind it.
    assert '"CREATED_AT" <=' in sql


def test_an_ordering_without_the_primary_key_is_refused():
    with pytest.raises(ValueError):
        keyset_page(Order.objects.all(), PageRequest(), ordering=("-created_at",))
