"""The dashboard's figures are rendered once per change of their data (ops/dashboard.py):
a second look costs a few index lookups, and any change staff would see shows at once."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orders.models import FollowUp

from .test_ops_data import followup_order, record_event, shelf, stuck_order

pytestmark = pytest.mark.django_db


def _home(client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse("ops:home"))
    assert response.status_code == 200
    return response.content.decode(), len(ctx.captured_queries)


def _count(page: str, name: str) -> int:
    return int(re.search(rf'data-count="{name}">(\d+)<', page).group(1))


def test_second_look_reads_the_figures_from_the_cache(client_as):
    client = client_as("viewer")
    product = shelf()
    stuck_order(product)
    first, first_queries = _home(client)
    second, second_queries = _home(client)
    assert _count(first, "stuck") == _count(second, "stuck") == 1
    # The counts' GROUP BY and the charts' aggregates (10 queries) are not run again;
    # the session, the user and the data version (3) are.
    assert second_queries <= first_queries - 8, (first_queries, second_queries)


def test_a_saga_event_shows_at_once(client_as):
    client = client_as("viewer")
    product = shelf()
    stuck_order(product)
    assert _count(_home(client)[0], "stuck") == 1
    second = stuck_order(product, step="ship")
    page = _home(client)[0]
    assert _count(page, "stuck") == 2
    # An event that changes no count still reaches the recent activity.
    before = page.count("from a test")
    record_event(second, step="ship", kind="failed")
    assert _home(client)[0].count("from a test") == before + 1


def test_a_follow_up_resolved_without_an_event_shows_at_once(client_as):
    client = client_as("viewer")
    followup = followup_order(shelf())
    assert _count(_home(client)[0], "followups") == 1
    # No saga event, no new row: only the follow-ups' open count moves.
    FollowUp.objects.filter(pk=followup.pk).update(state=FollowUp.State.RESOLVED, resolution="resolved")
    assert _count(_home(client)[0], "followups") == 0
