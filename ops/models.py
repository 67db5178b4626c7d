"""What only staff surfaces need: their permissions, and the records of the background
jobs (stalled-saga flags, reconciliation runs, bulk operations).

The record of each command sent to a saga (OperatorAction) is the domain's: orders.models.
"""

from django.conf import settings
from django.db import models

from orders.models import OperatorAction, Order


class StaffPermissions(models.Model):
    """The staff permissions that belong to no table: who may operate sagas and who may work
    the follow-up queue (`ops.operate_saga`, `ops.work_followups`). Roles (ops.roles) are made
    of these and of the models' own view permissions. No table: it only owns the codenames.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("operate_saga", "Can retry, compensate or cancel sagas"),
            ("work_followups", "Can resend notifications and resolve follow-ups"),
        ]


# --- background operations (Celery): stalled-saga flags, reconciliation, bulk actions ----


class StallFlag(models.Model):
    """A saga whose order has shown no event for too long, and what Temporal said about it.

    One open flag per order (cleared_at is null); it clears itself once the order records
    a newer event than `order_last_event_at`, and stays as history afterwards.
    """

    class Kind(models.TextChoices):
        NO_POLLER = "no_poller", "no worker polling"
        ACTIVITY_RETRYING = "activity_retrying", "activity retrying"
        WORKFLOW_TASK_FAILING = "workflow_task_failing", "workflow task failing"
        BACKLOG = "backlog", "waiting for a busy worker"
        ACTIVITY_RUNNING = "activity_running", "activity still running"
        IDLE = "idle", "workflow waiting on nothing"
        TERMINATED = "terminated", "terminated outside the app"
        TIMED_OUT = "timed_out", "workflow timed out"
        WORKFLOW_CLOSED = "workflow_closed", "workflow closed, order open"
        WORKFLOW_MISSING = "workflow_missing", "no workflow"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="stall_flags")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    detail = models.TextField()
    workflow_status = models.CharField(max_length=20, blank=True)
    task_queue = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    # The order's last_event_at when flagged: any newer event means the saga moved again.
    order_last_event_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)
    clear_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["order"], condition=models.Q(cleared_at=None), name="stallflag_one_open_per_order"
            ),
        ]
        indexes = [
            # Open flags are few; a partial index keeps reading them cheap however long the history.
            models.Index(fields=["checked_at"], condition=models.Q(cleared_at=None), name="stallflag_open_checked"),
        ]

    def __str__(self) -> str:
        return f"{self.order} {self.kind}"


class SweepRun(models.Model):
    """One pass of the stalled-saga sweeper: shows staff that beat is alive, and its cost."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    candidates = models.PositiveIntegerField(default=0)
    described = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    cleared = models.PositiveIntegerField(default=0)
    restarted = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["-started_at"], name="sweeprun_started")]


class ReconciliationRun(models.Model):
    """One check of the design's invariants across all orders; its findings are Discrepancy rows."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "nightly schedule"
        MANUAL = "manual", "requested by staff"

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    orders_checked = models.PositiveIntegerField(default=0)
    products_checked = models.PositiveIntegerField(default=0)
    workflows_checked = models.PositiveIntegerField(null=True, blank=True)
    discrepancy_count = models.PositiveIntegerField(default=0)
    # Kinds with more findings than are stored (RECONCILIATION_MAX_PER_KIND), and how many.
    overflow = models.JSONField(default=dict, blank=True)
    # The Temporal checks could not run (the database checks still did).
    workflow_check_error = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The alerts check reads the latest finished run every minute.
        indexes = [models.Index(fields=["state", "-finished_at"], name="reconrun_state_finished")]

    @property
    def clean(self) -> bool:
        return self.state == self.State.FINISHED and self.discrepancy_count == 0 and not self.workflow_check_error

    def __str__(self) -> str:
        return f"reconciliation #{self.pk} ({self.state})"


class Discrepancy(models.Model):
    class Kind(models.TextChoices):
        STOCK_DRIFT = "stock_drift", "stock counters disagree with the stock ledger"
        MONEY_MISMATCH = "money_mismatch", "money does not balance"
        DUPLICATE_EFFECT = "duplicate_effect", "effect recorded more than once"
        SAGA_INCONSISTENT = "saga_inconsistent", "finished saga disagrees with its ledger"
        ORPHAN_WORKFLOW = "orphan_workflow", "open workflow without an open order"
        MISSING_WORKFLOW = "missing_workflow", "open order without a running workflow"
        # Our ledger against the outside world's books (the gateway's, the carrier's), by key.
        MONEY_AT_GATEWAY = "money_at_gateway", "money held at the gateway for an order that did not go through"
        GATEWAY_UNRECORDED = "gateway_unrecorded", "charge or refund at the gateway that we never recorded"
        GATEWAY_MISMATCH = "gateway_mismatch", "our ledger and the gateway disagree on a key"
        PARCEL_NOT_CANCELLED = "parcel_not_cancelled", "parcels still booked for an order that did not go through"

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="discrepancies")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    product = models.ForeignKey("orders.Product", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    workflow_id = models.CharField(max_length=200, blank=True)
    detail = models.TextField()

    class Meta:
        ordering = ["kind", "id"]
        indexes = [models.Index(fields=["run", "kind", "id"], name="discrepancy_run_kind")]


class BulkOperation(models.Model):
    """Retry or compensate many stuck sagas: one item (and one audit row) per order."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"

    action = models.CharField(max_length=20, choices=[
        (OperatorAction.Action.RETRY.value, OperatorAction.Action.RETRY.label),
        (OperatorAction.Action.COMPENSATE.value, OperatorAction.Action.COMPENSATE.label),
    ])
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    # Set when the operator chose "all stuck at step X" rather than a list of orders.
    step = models.CharField(max_length=20, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def remaining(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def step_label(self) -> str:
        from orders.status import Step

        return Step(self.step).label if self.step in Step.values else self.step

    def __str__(self) -> str:
        return f"bulk {self.action} #{self.pk} ({self.done + self.failed}/{self.total})"


class BulkOperationItem(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"  # claimed: the audit row and signal may exist (a crash here is recovered)
        DONE = "done"
        FAILED = "failed"

    operation = models.ForeignKey(BulkOperation, on_delete=models.CASCADE, related_name="items")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    operator_action = models.ForeignKey(
        "orders.OperatorAction", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.TextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["operation", "order"], name="bulkitem_once_per_order"),
        ]
        indexes = [models.Index(fields=["operation", "state", "id"], name="bulkitem_operation_state")]


# --- alerts (ops.alerts): incidents staff are told about, and the messages that told them ---


class AlertIncident(models.Model):
    """One occurrence of a condition staff must hear about (a stuck saga, say), from the check
    that first saw it to the one that no longer did.

    At most one open incident per kind and key (resolved_at is null), so however many checks
    see the same stuck saga, staff are told about it once (and again after the repeat interval).
    """

    class Kind(models.TextChoices):
        SAGA_STUCK = "saga_stuck", "saga stuck"
        COMPENSATION_STUCK = "compensation_stuck", "compensation stuck"
        SAGA_FLAGGED = "saga_flagged", "saga flagged by the sweeper"
        FOLLOWUP_OVERDUE = "followup_overdue", "follow-up waiting too long"
        RECONCILIATION = "reconciliation", "reconciliation discrepancy"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    # What the incident is about within its kind: an order id, a follow-up id, a discrepancy kind.
    key = models.CharField(max_length=100)
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    title = models.CharField(max_length=300)
    detail = models.TextField(blank=True)
    # Absolute link to the page staff act on (PUBLIC_BASE_URL + the order or queue URL).
    url = models.CharField(max_length=500, blank=True)
    opened_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    # When it was last put in a message (null: never yet, e.g. no channel configured or over the rate limit).
    last_sent_at = models.DateTimeField(null=True, blank=True)
    sends = models.PositiveIntegerField(default=0)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "key"], condition=models.Q(resolved_at=None), name="alertincident_one_open_per_key"
            ),
        ]
        indexes = [models.Index(fields=["-opened_at", "-id"], name="alertincident_opened")]

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title}"


class AlertMessage(models.Model):
    """A message about one incident (or a summary of many), written before it is sent: an
    outbox. Each channel's state is kept apart, so a channel that failed is retried on the
    next check and one that succeeded is never sent again."""

    class Delivery(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed", "failed (gave up)"
        OFF = "off", "channel not configured"

    created_at = models.DateTimeField()
    summary = models.BooleanField(default=False)
    incidents = models.ManyToManyField(AlertIncident, related_name="messages")
    subject = models.CharField(max_length=300)
    text = models.TextField()
    blocks = models.JSONField(default=list)
    webhook_state = models.CharField(max_length=10, choices=Delivery.choices)
    email_state = models.CharField(max_length=10, choices=Delivery.choices)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The rate limit counts the last hour's messages.
            models.Index(fields=["created_at"], name="alertmessage_created"),
            # Undelivered messages are few; a partial index keeps finding them cheap.
            models.Index(
                fields=["id"], name="alertmessage_pending",
                condition=models.Q(webhook_state="pending") | models.Q(email_state="pending"),
            ),
        ]

    def __str__(self) -> str:
        return self.subject
