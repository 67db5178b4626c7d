"""What the workflow, its activities and the app exchange. No Django imports here:
this module is loaded inside the workflow sandbox.
"""

from dataclasses import dataclass, field
from enum import Enum


class StepName(str, Enum):
    VALIDATE = "validate"
    RESERVE = "reserve"
    CHARGE = "charge"
    CONFIRM = "confirm"
    SHIP = "ship"
    NOTIFY = "notify"


STEP_LABELS = {
    StepName.VALIDATE: "Validate order",
    StepName.RESERVE: "Reserve inventory",
    StepName.CHARGE: "Charge payment",
    StepName.CONFIRM: "Confirm inventory",
    StepName.SHIP: "Arrange shipping",
    StepName.NOTIFY: "Notify customer",
}

# What undoing each step is called, for events and pages.
COMPENSATION_LABELS = {
    StepName.RESERVE: "Release reservation",
    StepName.CHARGE: "Refund payment",
    StepName.CONFIRM: "Restock inventory",
    StepName.SHIP: "Cancel shipment",
}

# Steps a staff cancellation may still undo: once shipping is arranged it is too late.
CANCELLABLE_STEPS = (StepName.VALIDATE, StepName.RESERVE, StepName.CHARGE, StepName.CONFIRM)


class SagaState(str, Enum):
    """What the saga is doing; the order's saga_status column takes these values."""

    PENDING = "pending"
    RUNNING = "running"
    STUCK = "stuck"
    NEEDS_FOLLOWUP = "needs_followup"
    COMPENSATING = "compensating"
    # A compensation could not complete (bounded retries, or refused): waits for an
    # operator's retry_compensation; the other compensations have run.
    COMPENSATION_STUCK = "compensation_stuck"
    # terminal:
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


TERMINAL_SAGA_STATES = (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.REJECTED, SagaState.CANCELLED)
# Waiting for an operator: the stuck queue and the dashboard count both.
STUCK_SAGA_STATES = (SagaState.STUCK, SagaState.COMPENSATION_STUCK)


class EventKind(str, Enum):
    """Kinds of saga event rows (orders.models.SagaEvent.kind)."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    STUCK = "stuck"
    SIGNAL = "signal"
    IGNORED = "ignored"
    FOLLOWUP = "followup"
    FINISHED = "finished"


EVENT_KIND_LABELS = {
    EventKind.SIGNAL: "signal received",
    EventKind.IGNORED: "command ignored",
    EventKind.FOLLOWUP: "follow-up opened",
    EventKind.FINISHED: "saga finished",
}


class OperatorCommandName(str, Enum):
    RETRY = "retry"
    COMPENSATE = "compensate"
    CANCEL = "cancel"
    RESEND = "resend"
    RESOLVED = "resolved"
    RETRY_COMPENSATION = "retry_compensation"


def delivery_workflow_id(saga_workflow_id: str) -> str:
    """The delivery tracker's workflow id, from its saga's (`order-42-k3Xf...` -> `delivery-42-k3Xf...`),
    so it carries the saga's random part too. An old-style `order-42` gives `delivery-42` as before."""
    if saga_workflow_id.startswith("order-"):
        return "delivery-" + saga_workflow_id.removeprefix("order-")
    return f"delivery-of-{saga_workflow_id}"


@dataclass
class RetrySettings:
    """Carried in the workflow input so a history always replays with the policy it ran with."""

    initial_interval_seconds: float = 1.0
    stuck_auto_compensate_seconds: float | None = None


@dataclass
class SagaInput:
    order_id: int
    payments_task_queue: str
    retry: RetrySettings = field(default_factory=RetrySettings)
    delivery_check_interval_seconds: float = 6 * 3600
    delivery_checks_per_run: int = 20
    # The shipment's deadline, and how long past it the tracker waits for staff (issue 8).
    delivery_deadline_seconds: float = 7 * 86400
    delivery_give_up_seconds: float = 30 * 86400


@dataclass
class StepInput:
    order_id: int
    step: StepName
    idempotency_key: str
    # Attempts of this step made by earlier runs of its activity (a rerun after a lost
    # worker, an operator's retry, a resend): events number attempts across runs.
    attempt_offset: int = 0


@dataclass
class OutcomeNotice:
    """Tell the customer how a saga that did not complete ended ("failed" or "cancelled")."""

    order_id: int
    outcome: str
    # The notify step's key (`<workflow id>:notify`); the message's is `<that>:<outcome>`.
    idempotency_key: str


@dataclass
class StepResult:
    detail: str = ""


@dataclass
class SagaTransition:
    """A workflow-level fact for the read model: stuck, compensating, finished, a signal."""

    order_id: int
    kind: str  # an EventKind value, or "" to change the saga status without an event
    step: str = ""
    detail: str = ""
    saga_status: str = ""  # a SagaState value; terminal ones also settle the order's status
    action_id: int | None = None
    action_outcome: str = ""
    # Unique per fact (the saga derives it): a replayed bookkeeping activity writes nothing
    # new. Empty in histories from before keys.
    key: str = ""


@dataclass
class OperatorCommand:
    """A signal's payload: the audit row's id makes it act at most once."""

    action_id: int
    reason: str = ""


@dataclass
class DeliveryInput:
    order_id: int
    check_interval_seconds: float
    checks_per_run: int
    checks_done: int = 0
    # Issue 8 ("tracker-ends"): carried across continue-as-new. The deadline is set by the
    # first run (unix seconds) from deadline_seconds; after it the tracker opens an overdue
    # follow-up and waits give_up_seconds more for staff or the carrier, then ends.
    deadline_seconds: float = 7 * 86400
    give_up_seconds: float = 30 * 86400
    deadline_at: float | None = None
    overdue_reported: bool = False
    shipped_notified: bool = False


@dataclass
class DeliveryCheck:
    order_id: int
    source: str = "carrier"


@dataclass
class DeliveryStatus:
    delivered: bool
    returned: bool = False


@dataclass
class DeliveredSignal:
    source: str = "carrier"
    action_id: int | None = None


class DeliveryOutcome(str, Enum):
    """How a delivery tracker ends (issue 8: every tracker ends)."""

    DELIVERED = "delivered"
    RETURNED = "returned"
    LOST_REFUND = "lost_refund"  # staff reported it lost; the customer is owed a refund
    LOST_RESHIP = "lost_reship"  # staff reported it lost; a new parcel is owed
    GIVEN_UP = "given_up"  # nobody decided within the give-up time after the deadline


# Staff commands the tracker takes (signal names; OperatorAction.Action values too).
DELIVERY_COMMANDS = (DeliveryOutcome.DELIVERED, DeliveryOutcome.LOST_REFUND, DeliveryOutcome.LOST_RESHIP)
MARK_DELIVERED_SIGNAL = "mark_delivered"


@dataclass
class CarrierEventSignal:
    """A carrier webhook event, passed on by orders.services.carrier_events once it is stored."""

    event_id: str
    event: str  # in_transit, out_for_delivery, delivered, delivery_failed, returned
    occurred_at: str = ""


@dataclass
class DeliveryEnd:
    """The tracker's last write: the shipment's end, the order's status, the command answered."""

    order_id: int
    outcome: str  # a DeliveryOutcome value
    source: str
    key: str
    action_id: int | None = None


@dataclass
class DeliveryFollowUp:
    order_id: int
    kind: str  # FollowUp.Kind value: delivery_overdue, delivery_failed
    reason: str
    key: str


@dataclass
class DeliveryNotice:
    """A customer email about the parcel: shipped (with tracking number) or delivered."""

    order_id: int
    outcome: str  # "shipped" or "delivered"


# --- returns (orders.saga.return_saga) ------------------------------------------------


class ReturnStep(str, Enum):
    """The return saga's steps, as SagaEvent.step values on the order's timeline. Not
    StepName members: the order saga's step tracks stay its own; these show as the
    timeline's saga-level events."""

    RETURN = "return"  # the return as a whole: opened, signals, stuck, finished
    PARCEL = "return_parcel"
    RESTOCK = "return_restock"
    REFUND = "return_refund"
    NOTIFY = "return_notify"


RETURN_STEP_LABELS = {
    ReturnStep.RETURN: "Return",
    ReturnStep.PARCEL: "Returned parcel",
    ReturnStep.RESTOCK: "Restock returned items",
    ReturnStep.REFUND: "Refund",
    ReturnStep.NOTIFY: "Tell the customer (refund)",
}


class ReturnCommandName(str, Enum):
    RETRY = "return_retry"  # run the stuck refund again
    ABANDON = "return_abandon"  # give the refund up: the return ends without one


def return_workflow_id(saga_workflow_id: str, return_pk: int) -> str:
    """`order-42-k3Xf...` and return 7 -> `return-42-k3Xf...-r7`: derived from the return, and
    carrying the order's random part like every id and key of the order."""
    return f"return-{saga_workflow_id.removeprefix('order-')}-r{return_pk}"


@dataclass
class ReturnInput:
    return_id: int
    order_id: int
    payments_task_queue: str
    # None: a refund without a return (goodwill): nothing to wait for, nothing to restock.
    parcel_deadline_seconds: float | None
    retry: RetrySettings = field(default_factory=RetrySettings)


@dataclass
class ReturnStepInput:
    return_id: int
    step: str  # a ReturnStep value
    attempt_offset: int = 0


@dataclass
class ReturnTransition:
    """A return-level fact for the read model (an event on the order's timeline and the
    return's state), like SagaTransition for the order saga."""

    return_id: int
    kind: str  # an EventKind value
    step: str = ReturnStep.RETURN.value
    detail: str = ""
    return_state: str = ""  # a Return.State value, or "" to leave it
    action_id: int | None = None
    action_outcome: str = ""
    key: str = ""
    source: str = ""  # who reported the parcel back (carrier, staff), with return_state received


@dataclass
class ParcelReceived:
    """The returned parcel is back: the carrier's `returned` event, or staff."""

    source: str = "carrier"
    action_id: int | None = None
