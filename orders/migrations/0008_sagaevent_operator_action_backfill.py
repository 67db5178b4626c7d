"""Point existing saga events at the operator command that caused them.

Before SagaEvent.operator_action existed, pages joined them by text: a signal event says
"(action #N)", and an ignored command's event has the same detail as the command's
outcome_detail (matched in order, per order). The same rules fill the key once.
"""

import re
from collections import defaultdict

from django.db import migrations

ACTION_ID = re.compile(r"\(action #(\d+)\)")


def backfill(apps, schema_editor):
    SagaEvent = apps.get_model("orders", "SagaEvent")
    OperatorAction = apps.get_model("orders", "OperatorAction")
    db = schema_editor.connection.alias
    events = SagaEvent.objects.using(db).filter(kind__in=["signal", "ignored"], operator_action__isnull=True)
    order_ids = set(events.values_list("order_id", flat=True).distinct())
    for order_id in sorted(order_ids):
        actions = list(OperatorAction.objects.using(db).filter(order_id=order_id).order_by("id")
                       .values_list("id", "outcome", "outcome_detail"))
        known = {pk for pk, _, _ in actions}
        ignored = defaultdict(list)
        for pk, outcome, detail in actions:
            if outcome == "ignored":
                ignored[detail].append(pk)
        for event_id, kind, detail in events.filter(order_id=order_id).order_by("id").values_list("id", "kind", "detail"):
            action_id = None
            if kind == "signal":
                match = ACTION_ID.search(detail)
                action_id = int(match.group(1)) if match and int(match.group(1)) in known else None
            elif ignored.get(detail):
                action_id = ignored[detail].pop(0)
            if action_id is not None:
                SagaEvent.objects.using(db).filter(pk=event_id).update(operator_action_id=action_id)


class Migration(migrations.Migration):

    dependencies = [
        ('orders', '0007_operatoraction_table'),
    ]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
