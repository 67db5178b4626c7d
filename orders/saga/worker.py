"""Building the Temporal workers: one for the saga's task queue, one for payments."""

import logging
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.core import mail
from django.template.loader import get_template
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from ordersite import tracing

from .. import adapters, broadcast, metrics
from .activities import ORDERS_QUEUE_ACTIVITIES, PAYMENTS_QUEUE_ACTIVITIES
from .delivery_tracker import DeliveryTrackingWorkflow
from .log_context import ActivityLogContext
from .order_saga import OrderSagaWorkflow
from .return_activities import ORDERS_QUEUE_ACTIVITIES as _with_return_activities  # noqa: F401 (registers them)
from .return_saga import ReturnSagaWorkflow

# On SIGTERM, running activities get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)

logger = logging.getLogger(__name__)

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
    # policies are constants, passed through so they are not re-executed every run. The
    # metrics (reached through the activities module's imports) must never be defined twice:
    # a second definition in the registry raises.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "orders.saga.shared", "orders.saga.policies", "orders.errors", "orders.metrics", "prometheus_client",
            # The tracing interceptor's workflow side keeps its spans in OpenTelemetry's context.
            "opentelemetry",
            # Never workflow code, but redis imports modules lazily (its connection pool, when
            # reset, imports its metrics recorder), and a finalizer may run that on a
            # workflow's thread: the whole package was then imported again inside the sandbox.
            "redis",
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


def temporal_runtime(address: str | None = None) -> Runtime | None:
    """A Temporal runtime whose core serves the SDK's own metrics (workflow and activity task
    latencies, poll results, slots, sticky cache...) for Prometheus on
    TEMPORAL_SDK_METRICS_ADDRESS; None (the default runtime) with metrics off or no address.
    Give it to Client.connect(runtime=...): the workers built on that client report there."""
    address = settings.TEMPORAL_SDK_METRICS_ADDRESS if address is None else address
    if not (settings.METRICS_ENABLED and address):
        return None
    host, port = metrics.parse_address(address, 9102)
    # Counters end in _total and durations are seconds, as Prometheus names them elsewhere.
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
            bind_address=f"{host}:{port}", counters_total_suffix=True, durations_as_seconds=True,
        )))
    except Exception as exc:  # the port is taken (see metrics.http_server_start): run on without
        logger.error("Temporal SDK metrics: cannot listen on %s:%s (%s); not served", host, port, exc)
        return None


def worker_metrics_start(address: str | None = None):
    """Serve the app's metrics of this worker process (steps, gateway and carrier calls) on
    WORKER_METRICS_ADDRESS; returns the HTTP server, or None when off."""
    address = settings.WORKER_METRICS_ADDRESS if address is None else address
    return metrics.http_server_start(address, default_port=9101)


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

    # Log context on every activity's lines; spans for workflows and activities when tracing is on.
    interceptors = [ActivityLogContext(), *tracing.worker_interceptors(client)]
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
                max_concurrent_workflow_tasks=settings.SAGA_WORKER_WORKFLOW_TASKS,
                max_concurrent_local_activities=settings.SAGA_WORKER_LOCAL_ACTIVITIES,
                interceptors=interceptors,
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
                interceptors=interceptors,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            )
        )
    return workers
