"""How alerts read: titles, links, the Slack-compatible webhook payload and the email.

The webhook payload is Slack's incoming-webhook format (also taken by Mattermost, Rocket.Chat
and Microsoft Teams' Slack-compatible connectors): {"text": ..., "blocks": [...]}. `text` is
the whole message in plain words with its link (what notifications and chat clients without
blocks show); `blocks` is the same as sections with mrkdwn links. The README shows an example.
"""

from datetime import UTC, datetime
from itertools import groupby

from django.conf import settings
from django.urls import reverse

from orders.saga.shared import COMPENSATION_LABELS, STEP_LABELS, StepName

from ..models import AlertIncident, Discrepancy

Kind = AlertIncident.Kind

# Where staff work each kind of incident as a whole: the summary message links these.
QUEUE_URL_NAMES = {
    Kind.SAGA_STUCK: "ops:stuck",
    Kind.COMPENSATION_STUCK: "ops:stuck",
    Kind.SAGA_FLAGGED: "background:flags",
    Kind.FOLLOWUP_OVERDUE: "ops:followups",
    Kind.RECONCILIATION: "background:reconciliation_list",
}


def absolute_url(path: str) -> str:
    return settings.PUBLIC_BASE_URL.rstrip("/") + path


def order_url(order_id: int) -> str:
    return absolute_url(reverse("orders:detail", args=[order_id]))


def reconciliation_url(run_id: int) -> str:
    return absolute_url(reverse("background:reconciliation_detail", args=[run_id]))


def queue_url(kind: str) -> str:
    return absolute_url(reverse(QUEUE_URL_NAMES[kind]))


def _order_name(order) -> str:
    return f"Order {order.number or order.pk}"


def _step_label(step: str, *, compensation: bool = False) -> str:
    try:
        name = StepName(step)
    except ValueError:
        return step or "an unknown step"
    labels = COMPENSATION_LABELS if compensation else STEP_LABELS
    return labels.get(name, STEP_LABELS[name]).lower()


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def stuck_title(order, kind: str) -> str:
    if kind == Kind.COMPENSATION_STUCK:
        return f"{_order_name(order)}: compensation stuck at {_step_label(order.current_step, compensation=True)}"
    return f"{_order_name(order)} stuck at {_step_label(order.current_step)}"


def flagged_title(flag) -> str:
    return f"{_order_name(flag.order)} flagged by the sweeper: {flag.get_kind_display()}"


def followup_title(followup) -> str:
    return f"{_order_name(followup.order)}: customer not notified, follow-up open since {_utc(followup.created_at)}"


def reconciliation_title(run, kind: str, count: int) -> str:
    noun = "finding" if count == 1 else "findings"
    return f"Reconciliation run #{run.pk}: {count} {noun}: {Discrepancy.Kind(kind).label}"


# --- messages ---------------------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped as its docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _kind_label(kind: str) -> str:
    label = Kind(kind).label
    return label[0].upper() + label[1:]


def incident_message(incident: AlertIncident, *, repeat: bool) -> dict:
    """subject, text and blocks (the webhook payload's two fields; the email is subject and text) of one incident."""
    label = _kind_label(incident.kind)
    still = f"Still open since {_utc(incident.opened_at)}" if repeat else f"Open since {_utc(incident.opened_at)}"
    every = f"repeated every {settings.ALERTS_REPEAT_MINUTES:g} min while open"
    detail = incident.detail.strip()[:1500]
    text = f"{label}: {incident.title}" + (f"\n{detail}" if detail else "") + f"\n{incident.url}\n{still} ({every})"
    section = f"*{_mrkdwn(label)}*: <{incident.url}|{_mrkdwn(incident.title)}>"
    if detail:
        section += "\n>" + _mrkdwn(detail).replace("\n", "\n>")
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": section}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{still} · {every}"}]},
    ]
    subject = f"[alert] {'Still open: ' if repeat else ''}{incident.title}"
    return {"subject": subject[:300], "text": text, "blocks": blocks}


def summary_message(incidents: list[AlertIncident]) -> dict:
    """One message for the incidents over the hourly limit: how many of each kind, with the
    queue to work them in and the first few by name, so none goes unmentioned."""
    limit = settings.ALERTS_MAX_PER_HOUR
    total = len(incidents)
    head = f"{total} more alert{'s' if total != 1 else ''} (over the limit of {limit} messages an hour)"
    lines, sections = [head + ":"], []
    by_kind = groupby(sorted(incidents, key=lambda i: (list(Kind.values).index(i.kind), i.pk)), key=lambda i: i.kind)
    for kind, group in by_kind:
        group = list(group)
        url = queue_url(kind)
        lines.append(f"- {len(group)} × {Kind(kind).label}: {url}")
        names = [f"<{i.url}|{_mrkdwn(i.title)}>" for i in group[:5]]
        more = f"\n… and {len(group) - 5} more" if len(group) > 5 else ""
        sections.append({"type": "section", "text": {
            "type": "mrkdwn",
            "text": f"*<{url}|{len(group)} × {_mrkdwn(Kind(kind).label)}>*\n" + "\n".join(names) + more,
        }})
    text = "\n".join(lines)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(head)}*"}}, *sections]
    return {"subject": f"[alert] {head}"[:300], "text": text, "blocks": blocks}


def webhook_payload(message) -> dict:
    return {"text": message.text, "blocks": message.blocks}
