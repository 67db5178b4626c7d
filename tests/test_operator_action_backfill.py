"""Saga events recorded before SagaEvent.operator_action existed get their command from
the old text join (orders migration 0007): "(action #N)" in a signal's detail, and an
ignored command's outcome_detail, matched in order."""

import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection

from orders.models import OperatorAction, SagaEvent

from .factories import make_order

pytestmark = pytest.mark.django_db

backfill = importlib.import_module("orders.migrations.0008_sagaevent_operator_action_backfill").backfill


def test_backfill_links_old_events_to_their_commands(staff_user):
    order, other = make_order(), make_order()
    alice = staff_user("operator", username="alice")
    retry = OperatorAction.objects.create(order=order, action="retry", actor=alice, outcome="applied")
    why = "compensate ignored: the saga is not stuck"
    first, second = (OperatorAction.objects.create(order=order, action="compensate", actor=alice, outcome="ignored",
                                                   outcome_detail=why) for _ in range(2))
    elsewhere = OperatorAction.objects.create(order=other, action="compensate", actor=alice, outcome="ignored",
                                              outcome_detail=why)
    events = SagaEvent.objects.bulk_create([
        SagaEvent(order=order, step="charge", kind="signal", detail=f"retry requested (action #{retry.pk}): back"),
        SagaEvent(order=order, step="charge", kind="ignored", detail=why),
        SagaEvent(order=order, step="charge", kind="ignored", detail=why),
        SagaEvent(order=order, step="charge", kind="signal", detail="retry requested (action #999999)"),
        SagaEvent(order=order, step="charge", kind="failed", detail=f"(action #{retry.pk})"),
        SagaEvent(order=other, step="charge", kind="ignored", detail=why),
    ])

    backfill(apps, SimpleNamespace(connection=connection))

    linked = dict(SagaEvent.objects.filter(pk__in=[e.pk for e in events]).values_list("pk", "operator_action_id"))
    assert [linked[e.pk] for e in events] == [retry.pk, first.pk, second.pk, None, None, elsewhere.pk]
