"""How a workflow tells an activity's lost attempt from its failure: the order saga's steps
and outcome email, the return saga's refund and email, the delivery tracker's emails.

Pure functions of the error, no workflow state: the workflows import this module passed
through the sandbox (it would otherwise run again for every workflow run).
"""

from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

from ..errors import NOT_COUNTED_TOWARD_STUCK, InfrastructureUnavailable


def error_cause(err: Exception) -> BaseException:
    """What the activity raised: the cause an ActivityError wraps; a local activity's error itself."""
    return (err.cause or err) if isinstance(err, ActivityError) else err


def lost_attempt(err: Exception) -> str | None:
    """Why the last attempt was lost rather than failed: "worker" (it timed out: the
    worker died or hung), "infrastructure" (our database or Redis), "circuit" (the service's
    circuit breaker is open: the saga waits for its probe), or None (a real failure)."""
    cause = error_cause(err)
    if isinstance(cause, TimeoutError) and cause.type in (TimeoutType.HEARTBEAT, TimeoutType.START_TO_CLOSE):
        return "worker"
    if isinstance(cause, ApplicationError):
        if cause.type == InfrastructureUnavailable.__name__:
            return "infrastructure"
        if cause.type in NOT_COUNTED_TOWARD_STUCK:
            return "circuit"
    return None
