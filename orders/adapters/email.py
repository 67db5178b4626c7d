"""Customer notification by email, through Django's configured email backend."""

from django.core.mail import send_mail

from ..errors import NotificationFailed
from ..faults import fault_for, order_fault_plan
from .base import Notification
from .sandbox import sandbox_fail_transiently


class EmailNotifier:
    def send(self, notification: Notification) -> None:
        fault = fault_for(order_fault_plan(notification.order_id), "notify")
        if fault.kind == "fail":
            raise NotificationFailed(f"mail server refused the message to {notification.to} (sandbox fault)")
        if fault.kind == "transient":
            sandbox_fail_transiently(
                "notify", f"notify-order-{notification.order_id}", fault.count, NotificationFailed
            )
        try:
            send_mail(notification.subject, notification.body, None, [notification.to], fail_silently=False)
        except Exception as exc:  # SMTP errors come in many classes; staff need the message
            raise NotificationFailed(f"could not send email to {notification.to}: {exc}") from exc
