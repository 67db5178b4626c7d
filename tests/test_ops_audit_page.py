"""The audit log page: newest first with links, its filters, and bad filters reported."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from .test_ops_data import audit_row, followup_order, shelf, stuck_order

pytestmark = pytest.mark.django_db


def test_audit_log_newest_first_with_links(client_as, staff_user):
    product = shelf()
    ana, bo = staff_user("operator", username="ana"), staff_user("support", username="bo")
    first = audit_row(stuck_order(product), ana, action="retry", outcome="applied", days_ago=3)
    second = audit_row(followup_order(product).order, bo, action="resend", outcome="failed", reason="customer asked")
    body = client_as("viewer").get(reverse("ops:audit")).content.decode()
    assert re.findall(r'<tr id="audit-(\d+)">', body) == [str(second.pk), str(first.pk)]
    assert f'href="{reverse("orders:detail", args=[first.order_id])}"' in body
    assert "customer asked" in body and "ana" in body and "resend notification" in body


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"action": "retry"}, {"a"}),
        ({"outcome": "failed"}, {"b"}),
        ({"actor": "ANA"}, {"a", "c"}),
        ({"order": "{b_number}"}, {"b"}),
        ({"order": "{b_short}"}, {"b"}),
        ({"date_from": "{five_days_ago}", "date_to": "{two_days_ago}"}, {"a"}),
        ({"date_from": "{today}"}, {"b", "c"}),
        ({"action": "compensate", "actor": "ana"}, {"c"}),
    ],
)
def test_audit_log_filters(client_as, staff_user, params, expected):
    product = shelf()
    ana, bo = staff_user("operator", username="ana"), staff_user("support", username="bo")
    rows = {
        "a": audit_row(stuck_order(product), ana, action="retry", outcome="applied", days_ago=3),
        "b": audit_row(followup_order(product).order, bo, action="resend", outcome="failed"),
        "c": audit_row(stuck_order(product), ana, action="compensate", outcome="sent"),
    }
    today = timezone.now().date()
    values = {
        "b_number": rows["b"].order.number, "b_short": str(rows["b"].order_id),
        "five_days_ago": str(today - timedelta(days=5)), "two_days_ago": str(today - timedelta(days=2)),
        "today": str(today),
    }
    query = {k: v.format(**values) for k, v in params.items()}
    body = client_as("viewer").get(reverse("ops:audit"), query).content.decode()
    shown = set(re.findall(r'<tr id="audit-(\d+)">', body))
    assert shown == {str(rows[key].pk) for key in expected}


def test_audit_log_reports_bad_filters_and_ignores_them(client_as, staff_user):
    audit_row(stuck_order(), staff_user("operator"))
    client = client_as("viewer")
    body = client.get(reverse("ops:audit"), {"date_from": "yesterday", "action": "explode"}).content.decode()
    assert "Enter a date as dd.mm.yyyy." in body
    assert "Select a valid choice. explode is not one of the available choices." in body
    assert len(re.findall(r'<tr id="audit-', body)) == 1  # the bad filters narrow nothing

    body = client.get(reverse("ops:audit"), {"date_from": "2020-01-02", "date_to": "2020-01-01"}).content.decode()
    assert "The end date is before the start date." in body
    assert len(re.findall(r'<tr id="audit-', body)) == 1  # only the valid start date applies
