"""A sandbox mail provider that dedupes by idempotency key, as provider APIs that take one do.

Its book (SandboxEmail) is what it sent: a key is sent once, whatever we ask, and
`sent_lookup` answers from the book, so a notify step whose answer was lost finds out.
A copy of each message also goes through Django's email backend (the console in dev),
for people to read; the book, not that copy, is what counts as sent.
(Dev and tests only; moves to the `sandbox` app with the other sandbox adapters.)
"""

import logging

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction

from ..errors import NotificationFailed
from ..faults import fault_for, order_fault_plan
from ..models import SandboxEmail, SandboxOutage
from .base import Notification, message_id_header
from .sandbox import sandbox_fail_transiently

logger = logging.getLogger(__name__)


class SandboxNotifier:
    def send(self, notification: Notification) -> None:
        if SandboxOutage.objects.filter(service="notify", active=True).exists():
            raise NotificationFailed("mail service unavailable (sandbox outage)")
        fault = fault_for(order_fault_plan(notification.order_id), "notify")
        if fault.kind == "fail":
            raise NotificationFailed(f"mail server refused the message to {notification.to} (sandbox fault)")
        if fault.kind == "transient":
            sandbox_fail_transiently(
                "notify", f"notify-order-{notification.order_id}", fault.count, NotificationFailed
            )
        key = notification.idempotency_key
        try:
            with transaction.atomic():
                SandboxEmail.objects.create(
                    message_id=key, to=notification.to, subject=notification.subject[:300], body=notification.body
                )
        except IntegrityError:
            return  # sent before: a provider that dedupes sends nothing again
        sender = settings.DEFAULT_FROM_EMAIL
        try:
            EmailMessage(
                notification.subject, notification.body, sender, [notification.to],
                headers={"Message-ID": message_id_header(key, sender)},
            ).send(fail_silently=False)
        except Exception:
            logger.warning("sandbox mailer: could not show the copy of %s", key, exc_info=True)

    def sent_lookup(self, idempotency_key: str) -> bool:
        return SandboxEmail.objects.filter(message_id=idempotency_key).exists()
