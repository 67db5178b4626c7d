"""Customer notification by email, through Django's configured email backend.

SMTP has no idempotency key, so exactly once cannot be promised; the window is made as
small as it can be. Before handing a message to the backend we commit an EmailHandoff row
for its key, and once the backend has accepted it we stamp `handed_at` (each write commits
on its own, outside the saga's transaction, so it survives our crash). `sent_lookup` says
"sent" only for a stamped key. The one window left: the backend accepted the message and
our process died before the stamp committed (milliseconds). Then the retry sends it again
with the same Message-ID, which receiving mail systems use to drop duplicates; a hand-over
interrupted earlier (the common case: while talking to the mail server) is simply retried.
"""

import logging

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone

from ..errors import NotificationFailed
from ..models import EmailHandoff
from .base import Notification, message_id_header

logger = logging.getLogger(__name__)


class EmailNotifier:
    def send(self, notification: Notification) -> None:
        key = notification.idempotency_key
        handoff, created = EmailHandoff.objects.get_or_create(message_id=key, defaults={"recipient": notification.to})
        if handoff.handed_at is not None:
            return  # the backend already has it
        if not created:
            logger.warning("handing email %s to the mail backend again: an earlier hand-over did not finish", key)
        sender = settings.DEFAULT_FROM_EMAIL
        message = EmailMessage(
            notification.subject, notification.body, sender, [notification.to],
            headers={"Message-ID": message_id_header(key, sender)},
        )
        try:
            message.send(fail_silently=False)
        except Exception as exc:  # SMTP errors come in many classes; staff need the message
            raise NotificationFailed(f"could not send email to {notification.to}: {exc}") from exc
        EmailHandoff.objects.filter(pk=handoff.pk).update(handed_at=timezone.now())

    def sent_lookup(self, idempotency_key: str) -> bool:
        return EmailHandoff.objects.filter(message_id=idempotency_key, handed_at__isnull=False).exists()
