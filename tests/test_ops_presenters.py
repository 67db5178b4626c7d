"""The queue rows' presenters (ops/presenters.py) print what the template filters they
replaced printed: the queues' times and excerpts, the stuck queue's holdings."""

import unicodedata
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.template import Context, Template

from ops.presenters import error_excerpt, held_label, time_title_strings
from orders.selectors.preview import RollbackPreview, StockLine


def filtered(source: str, **context) -> str:
    return Template(source).render(Context(context))


@pytest.mark.parametrize("error", [
    "", "Gateway timeout", "x" * 200, "x" * 201, "é" * 250,
    # Combining accents do not count towards truncatechars' length.
    "e\u0301" * 100, "e\u0301" * 150, "a" * 199 + "e\u0301" * 3,
])
def test_error_excerpt_is_truncatechars_200(error):
    expected = filtered("{{ error|truncatechars:200 }}", error=error)
    # truncatechars NFC-normalises what it returns; the shorter path keeps the text as stored.
    assert unicodedata.normalize("NFC", error_excerpt(error)) == expected


def preview(refund="0", restock=(), release=()):
    return RollbackPreview(order_id=1, number="ORD-1", currency="EUR", refund=Decimal(refund),
                           restock=[StockLine(product="Widget", quantity=q) for q in restock],
                           release=[StockLine(product="Widget", quantity=q) for q in release])


@pytest.mark.parametrize("rollback", [
    None, preview(), preview("20.00", restock=[2]), preview("0", release=[1]), preview("5.50", restock=[1], release=[2]),
])
def test_held_label_is_what_the_cell_said(rollback):
    order = SimpleNamespace(rollback=rollback, currency="EUR")
    # The stuck queue's holdings cell before it was presented in Python.
    expected = filtered(
        "{% with held=order.rollback %}{% if held.charged %}{{ held.refund }} {{ order.currency }} charged"
        "{% else %}not charged{% endif %} · {% if held.items_to_restock or held.items_to_release %}"
        "{{ held.items_to_restock|add:held.items_to_release }} item"
        "{{ held.items_to_restock|add:held.items_to_release|pluralize }} of stock held{% else %}no stock held"
        "{% endif %}{% endwith %}", order=order)
    assert held_label(order) == expected


@pytest.mark.parametrize("moment", [
    datetime(2026, 1, 15, 8, 30, 5, 123456, tzinfo=dt_timezone.utc),  # winter: CET
    datetime(2026, 7, 1, 23, 59, 59, tzinfo=dt_timezone.utc),  # summer, the next local day: CEST
])
def test_time_and_title_are_the_date_filters(moment):
    assert time_title_strings(moment) == (
        filtered("{{ t|date:'c' }}", t=moment), filtered("{{ t|date:'Y-m-d H:i:s T' }}", t=moment))
    # The follow-up queue's "opened" title has no seconds.
    assert time_title_strings(moment, "%Y-%m-%d %H:%M %Z")[1] == filtered("{{ t|date:'Y-m-d H:i T' }}", t=moment)
    assert time_title_strings(None) == ("", "") == (filtered("{{ t|date:'c' }}", t=None),) * 2
