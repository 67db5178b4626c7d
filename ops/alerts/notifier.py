"""The outside world of alerts: a chat webhook and the staff's mailboxes.

Each send either returns (the channel took the message) or raises SendFailed with words
for the admin's outbox list; the caller keeps the message pending and tries again on the
next check. Nothing here touches the database.
"""

import json
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail

from . import presenters

WEBHOOK = "webhook"
EMAIL = "email"


class SendFailed(Exception):
    pass


def webhook_configured() -> bool:
    return bool(settings.ALERTS_WEBHOOK_URL)


def email_configured() -> bool:
    return bool(settings.ALERTS_EMAIL_TO)


def webhook_send(message) -> None:
    """POST the Slack-compatible JSON; any 2xx answer is delivery (Slack answers 200 "ok")."""
    body = json.dumps(presenters.webhook_payload(message)).encode()
    request = urllib.request.Request(
        settings.ALERTS_WEBHOOK_URL, data=body, method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "ordersite-alerts"},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.ALERTS_WEBHOOK_TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise SendFailed(f"webhook answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SendFailed(f"webhook unreachable: {reason}") from exc
    if not 200 <= status < 300:
        raise SendFailed(f"webhook answered HTTP {status}")


def email_send(message) -> None:
    try:
        send_mail(message.subject, message.text, settings.DEFAULT_FROM_EMAIL, settings.ALERTS_EMAIL_TO,
                  fail_silently=False)
    except Exception as exc:  # SMTP errors, refused connections, a misconfigured backend: all retried
        raise SendFailed(f"email not sent: {type(exc).__name__}: {exc}") from exc


CHANNELS = {
    WEBHOOK: (webhook_configured, webhook_send),
    EMAIL: (email_configured, email_send),
}
