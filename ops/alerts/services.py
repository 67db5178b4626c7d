"""Writes of ops.alerts: one check opens, refreshes and resolves incidents, writes the
messages they call for to the outbox, then delivers the outbox channel by channel.

Why an outbox: a message is written (with its incidents marked as sent) in one transaction
before any channel is tried, and each channel's state is saved as soon as it took the
message. So a channel that failed is retried on the next check, one that succeeded is never
sent again, and the rate limit counts what was decided, not what happened to get through.
One check runs at a time (ops.tasks.alerts_check holds a Redis lock).
"""

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ..models import AlertIncident, AlertMessage
from . import notifier, presenters
from .conditions import Condition, alert_conditions

logger = logging.getLogger(__name__)

Delivery = AlertMessage.Delivery
# Undelivered messages tried per check, oldest first (at most ALERTS_MAX_PER_HOUR are written an hour).
DELIVER_BATCH = 200


@dataclass
class CheckResult:
    conditions: int = 0
    opened: int = 0
    resolved: int = 0
    messages: int = 0
    delivered: int = 0
    failed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def incidents_sync(*, conditions: list[Condition], now: datetime) -> tuple[int, int]:
    """Open an incident for each new condition, refresh the open ones still seen, resolve the
    open ones no longer seen. Returns (opened, resolved). Reads only open incidents (few)."""
    found = {(c.kind, c.key): c for c in conditions}
    with transaction.atomic():
        open_incidents = {(i.kind, i.key): i for i in AlertIncident.objects.filter(resolved_at=None)}
        new = [
            AlertIncident(kind=c.kind, key=c.key, order_id=c.order_id, title=c.title[:300], detail=c.detail,
                          url=c.url[:500], opened_at=now, last_seen_at=now)
            for ident, c in found.items() if ident not in open_incidents
        ]
        seen, changed = [], []
        for ident, incident in open_incidents.items():
            condition = found.get(ident)
            if condition is None:
                continue
            seen.append(incident.pk)
            # Rewritten only when the words moved on (a newer error, a newer reconciliation run):
            # an outage with thousands of stuck sagas must not rewrite thousands of rows a minute.
            words = (condition.title[:300], condition.detail, condition.url[:500])
            if words != (incident.title, incident.detail, incident.url):
                incident.title, incident.detail, incident.url = words
                changed.append(incident)
        gone = [i.pk for ident, i in open_incidents.items() if ident not in found]
        AlertIncident.objects.bulk_create(new)
        AlertIncident.objects.bulk_update(changed, ["title", "detail", "url"], batch_size=500)
        AlertIncident.objects.filter(pk__in=seen).update(last_seen_at=now)
        AlertIncident.objects.filter(pk__in=gone, resolved_at=None).update(resolved_at=now)
    return len(new), len(gone)


def _channels_on() -> dict[str, str]:
    return {
        name: (Delivery.PENDING if configured() else Delivery.OFF)
        for name, (configured, _send) in notifier.CHANNELS.items()
    }


def _message_write(*, now: datetime, incidents: list[AlertIncident], content: dict, summary: bool,
                   states: dict[str, str]) -> AlertMessage:
    message = AlertMessage.objects.create(
        created_at=now, summary=summary, subject=content["subject"], text=content["text"], blocks=content["blocks"],
        webhook_state=states[notifier.WEBHOOK], email_state=states[notifier.EMAIL],
    )
    message.incidents.set(incidents)
    return message


def alert_messages_queue(*, now: datetime) -> int:
    """Write the messages that open incidents call for; returns how many.

    Due: never sent, or last sent ALERTS_REPEAT_MINUTES ago and still open. Within the
    hour's budget (ALERTS_MAX_PER_HOUR messages) each gets its own message; beyond it, all
    but one of the remaining slots go to single incidents and the last to one summary of
    the rest. With no slot left they stay due, for the next check after the hour frees one:
    every incident is mentioned, none lost. With no channel configured nothing is written.
    """
    states = _channels_on()
    if Delivery.PENDING not in states.values():
        return 0
    repeat_before = now - timedelta(minutes=settings.ALERTS_REPEAT_MINUTES)
    with transaction.atomic():
        due = list(
            AlertIncident.objects.select_for_update()
            .filter(resolved_at=None).filter(Q(last_sent_at=None) | Q(last_sent_at__lte=repeat_before))
            # Never-sent incidents before repeats, so a full hour's budget goes to news first.
            .order_by(F("last_sent_at").asc(nulls_first=True), "opened_at", "id")
        )
        if not due:
            return 0
        sent_this_hour = AlertMessage.objects.filter(created_at__gt=now - timedelta(hours=1)).count()
        budget = settings.ALERTS_MAX_PER_HOUR - sent_this_hour
        if budget <= 0:
            logger.warning("alerts: %d incidents wait, the limit of %d messages an hour is reached",
                           len(due), settings.ALERTS_MAX_PER_HOUR)
            return 0
        singles, rest = (due, []) if len(due) <= budget else (due[:budget - 1], due[budget - 1:])
        for incident in singles:
            content = presenters.incident_message(incident, repeat=incident.sends > 0)
            _message_write(now=now, incidents=[incident], content=content, summary=False, states=states)
        if rest:
            _message_write(now=now, incidents=rest, content=presenters.summary_message(rest), summary=True,
                           states=states)
        for incident in due:
            incident.last_sent_at, incident.sends = now, incident.sends + 1
        AlertIncident.objects.bulk_update(due, ["last_sent_at", "sends"])
    return len(singles) + (1 if rest else 0)


def alert_messages_deliver(*, now: datetime) -> tuple[int, int]:
    """Try every pending channel of every undelivered message, oldest first. Returns
    (deliveries that went out, that failed). A channel that fails is not tried again in this
    check (it is down: one timeout per check, not one per message); its messages stay pending
    until ALERTS_SEND_MAX_ATTEMPTS checks have failed them, then are kept as failed."""
    delivered = failed = 0
    down: set[str] = set()
    pending = AlertMessage.objects.filter(
        Q(webhook_state=Delivery.PENDING) | Q(email_state=Delivery.PENDING)
    ).order_by("id")[:DELIVER_BATCH]
    for message in pending:
        errors = []
        for name, (configured, send) in notifier.CHANNELS.items():
            field = f"{name}_state"
            if getattr(message, field) != Delivery.PENDING or name in down:
                continue
            if not configured():  # the channel was switched off since the message was written
                setattr(message, field, Delivery.OFF)
                message.save(update_fields=[field])
                continue
            try:
                send(message)
            except notifier.SendFailed as exc:
                down.add(name)
                errors.append(f"{name}: {exc}")
                failed += 1
                logger.warning("alerts: message %s not sent by %s: %s", message.pk, name, exc)
                continue
            # Saved at once, so a failure on the next channel (or a crash) never resends this one.
            setattr(message, field, Delivery.SENT)
            message.sent_at = now
            message.save(update_fields=[field, "sent_at"])
            delivered += 1
        if errors:
            message.attempts += 1
            message.last_error = "; ".join(errors)[:2000]
            fields = ["attempts", "last_error"]
            if message.attempts >= settings.ALERTS_SEND_MAX_ATTEMPTS:
                for name in notifier.CHANNELS:
                    if getattr(message, f"{name}_state") == Delivery.PENDING:
                        setattr(message, f"{name}_state", Delivery.FAILED)
                        fields.append(f"{name}_state")
                logger.error("alerts: message %s given up after %d attempts: %s", message.pk, message.attempts,
                             message.last_error)
            message.save(update_fields=fields)
    return delivered, failed


def alerts_check(*, now: datetime | None = None) -> CheckResult:
    """One check: find the conditions, sync the incidents, queue and deliver the messages.

    `now` is the check's clock (tests move it past the repeat interval or the hour).
    Locks: the due incidents' rows while their messages are written.
    """
    now = now or timezone.now()
    conditions = alert_conditions(now=now)
    opened, resolved = incidents_sync(conditions=conditions, now=now)
    queued = alert_messages_queue(now=now)
    delivered, failed = alert_messages_deliver(now=now)
    return CheckResult(conditions=len(conditions), opened=opened, resolved=resolved, messages=queued,
                       delivered=delivered, failed=failed)
