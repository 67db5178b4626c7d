"""What each part of the order saga's shape costs, with none of our services behind it.

    .venv/bin/python bench/saga_shape.py --database-url postgres://postgres@127.0.0.1:5432/bench_saga
        [--concurrent 150] [--rounds 2]

bench/saga_latency.py measures the saga's floor: its own workflows with every activity a
no-op. This takes the floor apart. Each variant runs in a process of its own, with a dev
server of its own, the bare workflow (six no-op activities, the issue's yardstick) measured
alternately with it in the same process:

- the floor as it is;
- without the delivery tracker it starts (a child workflow per order, which outlives the saga);
- without the saga's own search-attribute upserts (CurrentStep per step, SagaStatus at the
  end; the TemporalChangeVersion upserts the SDK adds with each patch marker stay);
- without either.

The variants patch the workflow code in their process (so they run without the sandbox,
which would import it afresh): an analysis of where the cost lies, never a way to run the
saga. Prints orders/s and CPU per saga (worker process, dev server) for each, next to the
bare workflow's from the same process. The database is flushed first, as saga_latency.py does.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "floor": (),
    "floor without the tracker": ("tracker",),
    "floor without the upserts": ("upserts",),
    "floor without either": ("tracker", "upserts"),
}


def without(parts: tuple[str, ...]) -> None:
    """Take parts of the saga's shape away, in this process only."""
    from temporalio import workflow

    from orders.saga.order_saga import OrderSagaWorkflow

    if "upserts" in parts:
        workflow.upsert_search_attributes = lambda *args, **kwargs: None
    if "tracker" in parts:
        async def no_tracker(self) -> None:
            return None

        OrderSagaWorkflow._start_delivery_tracking = no_tracker


async def measure_variant(args) -> dict:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from temporalio.client import Client
    from temporalio.worker import Worker

    from bench.cpu import cpu_snapshot, cpu_spent
    from bench.saga_latency import BareWorkflow, floor_activities, noop
    from orders.saga.worker import build_workers
    from tests.factories import make_order, make_product
    from tests.temporal_server import DevServer

    without(VARIANTS[args.variant])
    server = DevServer().start()
    try:
        settings.TEMPORAL_ADDRESS = server.address
        suffix = uuid.uuid4().hex[:6]
        settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = f"orders-{suffix}", f"payments-{suffix}"
        settings.PAYMENTS_MAX_CONCURRENCY = 200
        client = await Client.connect(server.address)
        executor = ThreadPoolExecutor(max_workers=64)
        workers = build_workers(client, executor=executor, sandboxed=False, activity_overrides=floor_activities())
        bare_queue = f"bare-{suffix}"
        workers.append(Worker(client, task_queue=bare_queue, workflows=[BareWorkflow], activities=[noop],
                              activity_executor=executor, max_concurrent_activities=64))
        runs = [asyncio.create_task(w.run()) for w in workers]
        product = await sync_to_async(make_product)(price="9.50", stock=10_000_000)
        create = sync_to_async(lambda: make_order(products=[(product, 1)]), thread_sensitive=False)

        async def one_saga() -> None:
            order = await create()
            assert await client.get_workflow_handle(order.workflow_id).result() == "completed"

        async def one_bare() -> None:
            await client.execute_workflow(BareWorkflow.run, 6, id=f"bare-{uuid.uuid4()}", task_queue=bare_queue)

        parts = {"worker": [os.getpid()], "dev server": [server.process.pid]}
        totals = {name: {"seconds": 0.0, "cpu": {}} for name in ("bare", "variant")}

        async def phase(name, fn) -> None:
            before = cpu_snapshot(parts)
            started = time.perf_counter()
            await asyncio.gather(*(fn() for _ in range(args.concurrent)))
            totals[name]["seconds"] += time.perf_counter() - started
            for part, seconds in cpu_spent(before).items():
                totals[name]["cpu"][part] = totals[name]["cpu"].get(part, 0.0) + seconds

        for fn in (one_saga, one_bare):  # warm up
            await asyncio.gather(*(fn() for _ in range(5)))
        for _ in range(args.rounds):  # alternated, so both see the same hour
            await phase("bare", one_bare)
            await phase("variant", one_saga)
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
    finally:
        server.stop()
    n = args.concurrent * args.rounds
    return {name: {"rate": n / t["seconds"], "cpu_ms": {part: s / n * 1000 for part, s in t["cpu"].items()}}
            for name, t in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a scratch database (flushed)")
    parser.add_argument("--concurrent", type=int, default=150, help="sagas in flight in each phase")
    parser.add_argument("--rounds", type=int, default=2, help="phases of each kind, alternated")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant's own process
    args = parser.parse_args()
    if args.variant:
        from bench.saga_latency import configure

        configure(args.database_url)
        result = asyncio.run(measure_variant(args))
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # the Temporal client can crash at interpreter exit (known SDK issue)

    print(f"{'':28}{'orders/s':>9}{'bare/s':>8}{'ratio':>7}   CPU per saga, ms (worker + dev server; bare's)")
    for variant in VARIANTS:
        child = subprocess.run([sys.executable, __file__, "--database-url", args.database_url, "--variant", variant,
                                "--concurrent", str(args.concurrent), "--rounds", str(args.rounds)],
                               capture_output=True, text=True, timeout=1800)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            print(f"{variant}: failed (exit {child.returncode})\n{child.stderr[-2000:]}")
            sys.exit(1)
        result = json.loads(lines[-1].removeprefix("RESULT "))
        mine, bare = result["variant"], result["bare"]
        cpu = " + ".join(f"{mine['cpu_ms'][p]:.0f}" for p in ("worker", "dev server"))
        bare_cpu = " + ".join(f"{bare['cpu_ms'][p]:.0f}" for p in ("worker", "dev server"))
        print(f"{variant:28}{mine['rate']:9.1f}{bare['rate']:8.1f}{mine['rate'] / bare['rate']:7.2f}   "
              f"{cpu} = {sum(mine['cpu_ms'][p] for p in ('worker', 'dev server')):.0f}; bare {bare_cpu}")


if __name__ == "__main__":
    main()
