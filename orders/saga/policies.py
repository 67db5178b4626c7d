"""Timeouts and retry policies of every saga step and compensation, in one place.

No Django imports: the workflow reads this inside the sandbox.
"""

from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy

from ..errors import NON_RETRYABLE_ERRORS
from .shared import RetrySettings, StepName


@dataclass(frozen=True)
class StepPolicy:
    # Attempts before the saga stops guessing and waits for an operator (stuck).
    max_attempts: int
    start_to_close: timedelta
    # Steps that only touch our own database run as local activities: a few ms each
    # instead of ~50 ms of task dispatch on the server.
    local: bool = False
    # Steps that call out heartbeat in the background while the call runs, so a dead
    # worker is noticed within this (not at start_to_close) and its attempt retried.
    heartbeat: timedelta | None = None
    # What sagas started before PATCH_STEP_HEARTBEATS scheduled (workflows.py).
    legacy_heartbeat: timedelta | None = None


# Short enough that a killed worker costs seconds; long enough for a loaded machine to
# get one heartbeat through (activities beat every HEARTBEAT_TIMEOUT / 4).
HEARTBEAT_TIMEOUT = timedelta(seconds=5)

STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.VALIDATE: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=10), local=True),
    StepName.RESERVE: StepPolicy(max_attempts=5, start_to_close=timedelta(seconds=10), local=True),
    StepName.CHARGE: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30), heartbeat=HEARTBEAT_TIMEOUT),
    StepName.CONFIRM: StepPolicy(max_attempts=5, start_to_close=timedelta(seconds=10), local=True),
    StepName.SHIP: StepPolicy(max_attempts=5, start_to_close=timedelta(minutes=10), heartbeat=HEARTBEAT_TIMEOUT,
                              legacy_heartbeat=timedelta(seconds=10)),
    StepName.NOTIFY: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30), heartbeat=HEARTBEAT_TIMEOUT),
}

# The return saga's steps that act (orders.saga.return_saga). The refund goes stuck after
# its attempts, like a charge; the restock only touches our database.
RETURN_RESTOCK_POLICY = StepPolicy(max_attempts=5, start_to_close=timedelta(seconds=10), local=True)
RETURN_REFUND_POLICY = StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30))
RETURN_NOTIFY_POLICY = StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30))


def return_step_retry_policy(policy: StepPolicy, retry: RetrySettings) -> RetryPolicy:
    initial = timedelta(seconds=retry.initial_interval_seconds)
    return RetryPolicy(initial_interval=initial, backoff_coefficient=2.0, maximum_interval=initial * 20,
                       maximum_attempts=policy.max_attempts, non_retryable_error_types=NON_RETRYABLE_ERRORS)


# An attempt lost to a worker crash (heartbeat or start-to-close timeout) is not the
# gateway's failure: when a step's last attempt was lost, the saga runs the step again,
# this many times, before it calls the step stuck. Attempts that failed because our own
# database or Redis was down (InfrastructureUnavailable) rerun without limit: nobody
# outside failed, and staff could do nothing the saga cannot.
LOST_ATTEMPT_RERUNS = 3
# The pause before such a rerun doubles from the step's initial retry interval up to this.
LOST_ATTEMPT_MAX_PAUSE = timedelta(seconds=60)

# Compensations retry a bounded number of times (a refused one does not retry); one that
# cannot complete leaves the saga compensation_stuck for an operator's retry_compensation.
COMPENSATION_MAX_ATTEMPTS = 6
COMPENSATION_TIMEOUT = timedelta(seconds=60)
BOOKKEEPING_TIMEOUT = timedelta(seconds=10)


def step_retry_policy(step: StepName, retry: RetrySettings) -> RetryPolicy:
    initial = timedelta(seconds=retry.initial_interval_seconds)
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=2.0,
        maximum_interval=initial * 20,
        maximum_attempts=STEP_POLICIES[step].max_attempts,
        non_retryable_error_types=NON_RETRYABLE_ERRORS,
    )


def compensation_retry_policy(retry: RetrySettings, *, bounded: bool = True) -> RetryPolicy:
    """`bounded=False` is what sagas started before PATCH_BOUNDED_COMPENSATIONS ran: retry forever."""
    initial = timedelta(seconds=retry.initial_interval_seconds)
    return RetryPolicy(
        initial_interval=initial, backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60),
        maximum_attempts=COMPENSATION_MAX_ATTEMPTS if bounded else 0,
    )


def lost_attempt_pause(step: StepName, retry: RetrySettings, rerun: int) -> timedelta:
    pause = timedelta(seconds=retry.initial_interval_seconds) * 2 ** max(rerun - 1, 0)
    return min(pause, LOST_ATTEMPT_MAX_PAUSE)


# Bookkeeping (local activities writing the read model) retries a bounded number of times
# (about 40 s at the default interval); then the saga says so (log, SagaStatus search
# attribute "bookkeeping_failing") and tries again after a durable pause, until it succeeds.
BOOKKEEPING_MAX_ATTEMPTS = 8


def bookkeeping_retry_policy(retry: RetrySettings | None = None) -> RetryPolicy:
    initial = timedelta(milliseconds=200)
    if retry is not None:
        initial = min(initial, timedelta(seconds=retry.initial_interval_seconds))
    return RetryPolicy(initial_interval=initial, maximum_interval=timedelta(seconds=10),
                       maximum_attempts=BOOKKEEPING_MAX_ATTEMPTS)


def bookkeeping_pause(retry: RetrySettings) -> timedelta:
    """How long the saga waits (a durable timer) before trying failed bookkeeping again."""
    return timedelta(seconds=60 * retry.initial_interval_seconds)
