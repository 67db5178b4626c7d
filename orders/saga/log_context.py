"""Log context for activities: every line an activity writes (ours, Django's, the
adapters') carries its workflow id, run id, activity name, attempt and order.

A worker interceptor binds them (structlog contextvars) around each activity; temporalio
copies the context into the thread that runs a synchronous activity, so they reach the
services and adapters too. Workflow code logs through `workflow.logger`, whose records
carry the workflow's ids as extras (ordersite.logging_config.add_temporal_extras).
"""

from typing import Any

from structlog.contextvars import bound_contextvars
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor


def activity_log_context(info: activity.Info, arg: Any = None) -> dict:
    """The ids of one activity execution, as log fields."""
    # Steps run again by an operator's retry go on counting attempts (StepInput.attempt_offset),
    # as the saga's events do: the attempt in the log is the one staff see on the page.
    offset = getattr(arg, "attempt_offset", 0) or 0
    context = {
        "workflow_id": info.workflow_id,
        "run_id": info.workflow_run_id,
        "activity": info.activity_type,
        "attempt": offset + info.attempt,
    }
    order_id = getattr(arg, "order_id", None)
    if order_id is not None:
        context["order_id"] = order_id
    step = getattr(arg, "step", None)
    if step is not None:
        context["step"] = getattr(step, "value", step)
    return context


class ActivityLogContext(Interceptor):
    """Worker interceptor: binds activity_log_context around every activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        arg = input.args[0] if input.args else None
        # Each activity runs in its own asyncio task, so the binding ends with it.
        with bound_contextvars(**activity_log_context(activity.info(), arg)):
            return await super().execute_activity(input)
