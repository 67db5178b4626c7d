"""Building the Temporal workers: one for the saga's task queue, one for payments."""

import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.core import mail
from django.template.loader import get_template
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from .. import adapters, broadcast
from .activities import ORDERS_QUEUE_ACTIVITIES, PAYMENTS_QUEUE_ACTIVITIES
from .delivery_tracker import DeliveryTrackingWorkflow
from .order_saga import OrderSagaWorkflow
from .return_activities import ORDERS_QUEUE_ACTIVITIES as _with_return_activities  # noqa: F401 (registers them)
from .return_saga import ReturnSagaWorkflow

# On SIGTERM, running activities get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)

WORKFLOWS = [OrderSagaWorkflow, DeliveryTrackingWorkflow, ReturnSagaWorkflow]


def workflow_runner(sandboxed: bool | None = None) -> WorkflowRunner:
    """The sandbox (settings.WORKFLOW_SANDBOX, on by default) re-imports the workflow modules
    for every workflow run; without it the workflows run as plain code, kept deterministic
    by the replay tests only. bench/saga_latency.py measures both."""
    if not (settings.WORKFLOW_SANDBOX if sandboxed is None else sandboxed):
        return UnsandboxedWorkflowRunner()
    _cache_workflow_bytecode()
    # The dataclasses and enums the workflow exchanges come from the real modules, so
    # values crossing the sandbox boundary are the same classes on both sides; the
    # policies are constants, passed through so they are not re-executed every run.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "orders.saga.shared", "orders.saga.policies", "orders.errors",
        )
    )


def _cache_workflow_bytecode() -> None:
    # The sandbox imports order_saga.py afresh for every workflow run. Where
    # PYTHONDONTWRITEBYTECODE is set (these machines, some containers) there is no .pyc, so
    # each run compiled the module from source again (5 ms for order_saga.py, per saga and
    # per tracker). Bytecode goes to the var dir, not next to the sources.
    if sys.dont_write_bytecode:
        sys.pycache_prefix = sys.pycache_prefix or str(settings.VAR_DIR / "pycache")
        sys.dont_write_bytecode = False


def import_at_start() -> None:
    """Import (and connect) now what activities and broadcasts would load lazily: an import
    in another thread while the workflow sandbox has swapped modules has crashed."""
    broadcast.publisher_start()
    adapters.payment_gateway(), adapters.shipping_carrier(), adapters.customer_notifier()
    mail.get_connection(), get_template("orders/email/order_confirmed.txt")
    get_template("orders/email/return_refunded.txt"), get_template("orders/email/order_outcome.txt")


def build_workers(
    client: Client,
    *,
    orders_queue: str | None = None,
    payments_queue: str | None = None,
    queues: tuple[str, ...] = ("orders", "payments"),
    executor: ThreadPoolExecutor | None = None,
    activity_overrides: Mapping[str, Callable] | None = None,
    sandboxed: bool | None = None,
) -> list[Worker]:
    """Workers for the queues asked for ('orders' runs workflows and the activities that
    touch only our database or the carrier; 'payments' runs charges and refunds).

    `activity_overrides` maps an activity's name to a replacement, itself an
    @activity.defn registered under that same name (tests simulate crashes so).
    """
    import_at_start()
    executor = executor or ThreadPoolExecutor(max_workers=32, thread_name_prefix="activity")
    overrides = dict(activity_overrides or {})
    unknown = overrides.keys() - ORDERS_QUEUE_ACTIVITIES.keys() - PAYMENTS_QUEUE_ACTIVITIES.keys()
    if unknown:
        raise ValueError(f"no activity to replace named {', '.join(sorted(unknown))}")

    def with_overrides(activities: dict[str, Callable]) -> list[Callable]:
        return [overrides.get(name, fn) for name, fn in activities.items()]

    workers = []
    if "orders" in queues:
        workers.append(
            Worker(
                client,
                task_queue=orders_queue or settings.SAGA_TASK_QUEUE,
                workflows=WORKFLOWS,
                activities=with_overrides(ORDERS_QUEUE_ACTIVITIES),
                activity_executor=executor,
                workflow_runner=workflow_runner(sandboxed),
                max_concurrent_activities=24,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            )
        )
    if "payments" in queues:
        workers.append(
            Worker(
                client,
                task_queue=payments_queue or settings.PAYMENTS_TASK_QUEUE,
                activities=with_overrides(PAYMENTS_QUEUE_ACTIVITIES),
                activity_executor=executor,
                # The gateway is rate limited: this bounds charges in flight per worker.
                max_concurrent_activities=settings.PAYMENTS_MAX_CONCURRENCY,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            )
        )
    return workers
