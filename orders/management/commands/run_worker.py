import asyncio
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand
from temporalio.client import Client

from orders.saga.worker import build_workers, import_at_start, temporal_runtime, worker_metrics_start
from ordersite import tracing

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the Temporal workers for the order saga (task queues 'orders' and 'payments')."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues", default="orders,payments",
            help="Comma-separated: orders, payments (default both). Production runs payments separately.",
        )

    def handle(self, *args, queues: str, **options):
        wanted = tuple(q.strip() for q in queues.split(",") if q.strip())
        unknown = set(wanted) - {"orders", "payments"}
        if unknown:
            self.stderr.write(f"Unknown queue(s): {', '.join(sorted(unknown))}. Use orders and/or payments.")
            raise SystemExit(2)
        # Before any workflow runs: see orders.saga.worker.import_at_start.
        import_at_start()
        tracing.tracing_start(service="worker")
        asyncio.run(self._run(wanted))

    async def _run(self, queues):
        # Metrics: ours on WORKER_METRICS_ADDRESS, the SDK's on TEMPORAL_SDK_METRICS_ADDRESS
        # (README "Metrics"); a port already taken fails the start loudly.
        worker_metrics_start()
        runtime = temporal_runtime()
        client = await Client.connect(settings.TEMPORAL_ADDRESS, namespace=settings.TEMPORAL_NAMESPACE,
                                      interceptors=tracing.temporal_interceptors(),
                                      **({"runtime": runtime} if runtime else {}))
        workers = build_workers(client, queues=queues)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        names = ", ".join(w.task_queue for w in workers)
        self.stdout.write(f"Temporal workers polling {names} at {settings.TEMPORAL_ADDRESS}", ending="\n")
        self.stdout.flush()
        runs = [asyncio.create_task(w.run()) for w in workers]
        await stop.wait()
        # Graceful: stop polling, let running activities finish (up to the graceful timeout).
        self.stdout.write("Shutting down workers...")
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
        self.stdout.write("Workers stopped.")
