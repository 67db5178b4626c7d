"""The audit log of operator actions: who asked what of which saga, and what came of it."""

from django.conf import settings
from django.db import models

from orders.models import Order


class OperatorAction(models.Model):
    class Action(models.TextChoices):
        RETRY = "retry"
        COMPENSATE = "compensate"
        CANCEL = "cancel"
        RESEND = "resend", "resend notification"
        RESOLVED = "resolved", "resolve follow-up"

    class Outcome(models.TextChoices):
        REQUESTED = "requested"  # audit row written, signal not yet sent
        SENT = "sent"  # Temporal accepted the signal; the saga has not acted yet
        APPLIED = "applied"
        IGNORED = "ignored"  # the saga's state did not fit the command by the time it arrived
        FAILED = "failed"  # the signal could not be delivered

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="operator_actions")
    action = models.CharField(max_length=20, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.REQUESTED)
    outcome_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["order", "-created_at"], name="opaction_order_created")]
        permissions = [
            ("operate_saga", "Can retry, compensate or cancel sagas"),
            ("work_followups", "Can resend notifications and resolve follow-ups"),
        ]

    def __str__(self) -> str:
        return f"{self.action} on {self.order} by {self.actor} ({self.outcome})"
