"""Customer notification by email, through Django's configured email backend."""

from django.core.mail import send_mail

from ..errors import NotificationFailed
from .base import Notification


class EmailNotifier:
    def send(self, notification: Notification) -> None:
        try:
            send_mail(notification.subject, notification.body, None, [notification.to], fail_silently=False)
        except Exception as exc:  # SMTP errors come in many classes; staff need the message
            raise NotificationFailed(f"could not send email to {notification.to}: {exc}") from exc
