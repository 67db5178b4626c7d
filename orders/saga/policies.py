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
    heartbeat: timedelta | None = None


STEP_POLICIES: dict[StepName, StepPolicy] = {
    StepName.VALIDATE: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=10), local=True),
    StepName.RESERVE: StepPolicy(max_attempts=5, start_to_close=timedelta(seconds=10), local=True),
    StepName.CHARGE: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30)),
    StepName.CONFIRM: StepPolicy(max_attempts=5, start_to_close=timedelta(seconds=10), local=True),
    StepName.SHIP: StepPolicy(max_attempts=5, start_to_close=timedelta(minutes=10), heartbeat=timedelta(seconds=10)),
    StepName.NOTIFY: StepPolicy(max_attempts=3, start_to_close=timedelta(seconds=30)),
}

# Compensations must finish eventually: they retry without limit, backing off to a minute.
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


def compensation_retry_policy(retry: RetrySettings) -> RetryPolicy:
    initial = timedelta(seconds=retry.initial_interval_seconds)
    return RetryPolicy(initial_interval=initial, backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60))


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
