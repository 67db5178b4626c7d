"""What the metrics cost the saga: p50 end-to-end latency with instrumentation on and off, in one run.

    .venv/bin/python bench/instrumentation_cost.py [--sequential 5] [--rounds 12] [--strict]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_metrics]

The same process shape as bench/saga_latency.py (its helpers: a dev server of its own, the
database set up and flushed, sagas placed as the web view places them and awaited one after
another). "On" is what production runs: settings.METRICS_ENABLED (every recording helper of
orders/metrics.py and ops/metrics.py) and the Temporal SDK's Prometheus metrics, on the
workers' client runtime. "Off" is METRICS_ENABLED false and the SDK's default runtime
(no metrics), on task queues of its own. Blocks alternate (off, on, off, on...) so that
drift on a shared machine falls on both. Prints p50/p95/mean for both, and the cost at p50
next to the aim (< 5 %); --strict exits 1 when it is missed. Short blocks (5 sagas) spread
a busy machine's swings over both modes; the recording calls are also timed alone, which
no load can blur.

METRICS_ENABLED is the switch "instrumentation off": tracing can join it later.
"""

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.saga_latency import configure, percentile  # noqa: E402

AIM_COST = 0.05  # p50 with metrics at most 5 % above p50 without


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(args, server) -> dict[str, list[float]]:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from temporalio.client import Client

    from orders.saga.worker import build_workers, temporal_runtime
    from tests.factories import make_order, make_product

    settings.TEMPORAL_ADDRESS = server.address
    settings.PAYMENTS_MAX_CONCURRENCY = 64  # the executor's threads: the saga is measured, not the rate limit
    settings.METRICS_ENABLED = True
    suffix = uuid.uuid4().hex[:6]
    queues = {"off": (f"orders-off-{suffix}", f"payments-off-{suffix}"),
              "on": (f"orders-on-{suffix}", f"payments-on-{suffix}")}
    plain_client = await Client.connect(server.address)
    runtime = temporal_runtime(f"127.0.0.1:{free_port()}")
    assert runtime is not None, "the Temporal SDK's metrics runtime could not start"
    metered_client = await Client.connect(server.address, runtime=runtime)
    executor = ThreadPoolExecutor(max_workers=64)
    workers = []
    for mode, client in (("off", plain_client), ("on", metered_client)):
        workers += build_workers(client, executor=executor, orders_queue=queues[mode][0],
                                 payments_queue=queues[mode][1])
    runs = [asyncio.create_task(w.run()) for w in workers]

    product = await sync_to_async(make_product)(price="9.50", stock=10_000_000)
    create = sync_to_async(lambda: make_order(products=[(product, 1)]), thread_sensitive=False)

    async def one_saga() -> float:
        started = time.perf_counter()
        order = await create()  # commits, then starts the workflow (as the web view does)
        result = await plain_client.get_workflow_handle(order.workflow_id).result()
        assert result == "completed", result
        return time.perf_counter() - started

    def use(mode: str) -> None:
        settings.METRICS_ENABLED = mode == "on"
        settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = queues[mode]

    latencies: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for mode in ("off", "on"):  # warm up both: connections, caches, the sandbox's imports
            use(mode)
            for _ in range(3):
                await one_saga()
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                use(mode)
                latencies[mode] += [await one_saga() for _ in range(args.sequential)]
    finally:
        settings.METRICS_ENABLED = True
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
    return latencies


def recording_cost_per_saga(repeat: int = 2000) -> float:
    """Seconds the app's own recording calls take for one happy-path saga, timed alone (no
    Temporal, no database): what the saga pays for them whatever the machine's load."""
    from django.conf import settings

    from orders import metrics
    from orders.metrics import Instrumented

    class Adapter:
        def charge(self):
            return None

    settings.METRICS_ENABLED = True
    gateway = Instrumented(Adapter(), "gateway")
    steps = ("validate", "reserve", "charge", "confirm", "ship", "notify")
    started = time.perf_counter()
    for _ in range(repeat):
        for step in steps:
            metrics.step_attempt_observe(step=step, compensation=False, outcome="succeeded", seconds=0.01)
        gateway.charge()  # the charge and the carrier's booking
        gateway.charge()
        metrics.saga_finished(outcome="completed", seconds=0.2)
    return (time.perf_counter() - started) / repeat


async def main(args) -> None:
    from django.conf import settings

    from tests.temporal_server import DevServer

    server = DevServer().start()
    try:
        latencies = await measure(args, server)
    finally:
        server.stop()

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"database: {engine}; sagas per mode: {len(latencies['on'])} ({args.rounds} alternating blocks of "
          f"{args.sequential}); load average {os.getloadavg()[0]:.1f}")
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}")
    labels = {"off": "metrics off (METRICS_ENABLED=0)", "on": "metrics on (app + Temporal SDK)"}
    for mode in ("off", "on"):
        lat = latencies[mode]
        print(f"{labels[mode]:34}{percentile(lat, 50) * 1000:9.1f}{percentile(lat, 95) * 1000:9.1f}"
              f"{statistics.mean(lat) * 1000:9.1f}")
    cost = percentile(latencies["on"], 50) / percentile(latencies["off"], 50) - 1
    print(f"instrumentation cost at p50: {cost * 100:+.1f} % (aim below {AIM_COST * 100:.0f} %)")
    recording = recording_cost_per_saga()
    print(f"the app's recording calls alone: {recording * 1e6:.0f} us per saga "
          f"({recording / percentile(latencies['off'], 50) * 100:.3f} % of the p50 without)")
    if cost >= AIM_COST:
        print("aim missed")
        if args.strict:
            sys.stdout.flush()
            os._exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=5, help="sagas per block")
    parser.add_argument("--rounds", type=int, default=12, help="alternating off/on blocks")
    parser.add_argument("--database-url", help="a dedicated database (flushed); default: a SQLite file in var/bench/")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the cost at p50 is 5 % or more")
    arguments = parser.parse_args()
    if arguments.sequential < 1 or arguments.rounds < 1:
        parser.error("--sequential and --rounds must be at least 1")
    if arguments.database_url:
        configure(arguments.database_url)
    else:
        db = ROOT / "var" / "bench" / "instrumentation_cost.sqlite3"
        db.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        configure(f"sqlite:///{db}")
    asyncio.run(main(arguments))
    sys.stdout.flush()
    os._exit(0)  # the Temporal client can crash at interpreter exit (known SDK issue)
