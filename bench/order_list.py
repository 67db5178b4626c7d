"""How fast is the order list with 100,000 orders? Renders /orders/ with the test client for
a set of filters, searches, sorts and pages, and prints the median and worst time and the
number of queries of each.

    .venv/bin/python bench/order_list.py                  # a fresh SQLite file in a temp dir
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/orders_list_bench .venv/bin/python bench/order_list.py

It seeds the orders (bulk inserts, no sagas) into that database if it has fewer than
--orders of them, so point it at a scratch database, never at one you care about.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django() -> None:
    if not os.environ.get("DATABASE_URL"):
        os.environ.setdefault("ORDERSITE_VAR_DIR", tempfile.mkdtemp(prefix="order-list-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


FIRST = ["Ada", "Grace", "Alan", "Katherine", "Edsger", "Barbara", "Donald", "Margaret", "Linus", "Frances",
         "Ken", "Radia", "Tim", "Hedy", "Dennis", "Annie", "John", "Mary", "Niklaus", "Sophie"]
LAST = ["Lovelace", "Hopper", "Turing", "Johnson", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Torvalds",
        "Allen", "Thompson", "Perlman", "Berners-Lee", "Lamarr", "Ritchie", "Easley", "Backus", "Kenyon",
        "Wirth", "Wilson", "Smith", "Garcia", "Nguyen", "Okafor", "Kowalski", "Rossi", "Tanaka", "Novak"]
# Most orders are long finished; a few are in flight or need a person.
STATES = [
    (("delivered", "completed", "notify"), 55), (("completed", "completed", "notify"), 25),
    (("failed", "compensated", "charge"), 6), (("rejected", "rejected", "validate"), 2),
    (("cancelled", "cancelled", "reserve"), 2), (("processing", "running", "ship"), 6),
    (("processing", "stuck", "charge"), 2), (("processing", "needs_followup", "notify"), 1),
    (("placed", "pending", ""), 1),
]


def seed(count: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from orders.models import Order

    have = Order.objects.count()
    if have >= count:
        print(f"database already has {have} orders")
        return
    rng = random.Random(42)
    states = [s for s, _ in STATES]
    weights = [w for _, w in STATES]
    now = timezone.now()
    started = time.perf_counter()
    batch = []
    for n in range(have + 1, count + 1):
        status, saga_status, step = rng.choices(states, weights)[0]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        batch.append(Order(
            number=f"SO-{n:06d}", customer_name=f"{first} {last}",
            customer_email=f"{first}.{last}.{rng.randrange(5000)}@example.com".lower(),
            total=Decimal(rng.randrange(500, 200_000)) / 100, status=status, saga_status=saga_status,
            current_step=step, workflow_id=f"bench-order-{n}",
            last_error="payment unavailable" if saga_status == "stuck" else "",
        ))
        if len(batch) == 5000:
            with transaction.atomic():
                Order.objects.bulk_create(batch)
            batch = []
    if batch:
        with transaction.atomic():
            Order.objects.bulk_create(batch)
    # Spread creation times evenly over the last year, oldest first (auto_now_add set them to now).
    ids = list(Order.objects.order_by("id").values_list("id", flat=True))
    step = timedelta(days=365) / len(ids)
    moved = [Order(id=pk, created_at=now - step * (len(ids) - i)) for i, pk in enumerate(ids)]
    with transaction.atomic():
        Order.objects.bulk_update(moved, ["created_at"], batch_size=2000)
    print(f"seeded {count - have} orders in {time.perf_counter() - started:.1f}s")


def measure(runs: int) -> list[tuple[str, float, float, int]]:
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from ops.keyset import encode_cursor
    from ops.order_pages.selectors import LIST_SORTS
    from ops.roles import VIEWER, staff_user_create
    from orders.models import Order

    user = staff_user_create(username="list-bench-viewer", password="list-bench-pass", role=VIEWER)
    client = Client()
    client.force_login(user)
    sample = Order.objects.order_by("id")[Order.objects.count() // 2]
    week_ago = (timezone.now() - timedelta(days=7)).date()

    def after(sort: str, position: int) -> str:
        # The cursor a Next link carries to the page starting after `position` rows.
        ordering = LIST_SORTS[sort]
        row = Order.objects.order_by(*ordering)[position - 1]
        return f"after={encode_cursor(row, ordering)}"
    cases = [
        ("newest first, page 1", ""),
        ("page 20 (after 950)", f"?{after('-created', 950)}&page=20"),
        ("page 1000 (after 49,950)", f"?{after('-created', 49_950)}&page=1000"),
        ("last page", "?last=1"),
        ("status = processing", "?status=processing"),
        ("stuck", "?stuck=on"),
        ("needs follow-up", "?needs_followup=on"),
        ("stuck or follow-up, highest total", "?stuck=on&needs_followup=on&sort=-total"),
        ("current step = charge", "?step=charge"),
        ("created in the last 7 days", f"?date_from={week_ago}"),
        ("search order number", f"?q={sample.number}"),
        ("search whole email", f"?q={sample.customer_email}"),
        ("search name (common)", "?q=hopper"),
        ("search name (no match)", "?q=zebedee"),
        ("sort highest total", "?sort=-total"),
        ("sort status", "?sort=status"),
        ("sort oldest first, page 5", f"?sort=created&{after('created', 200)}&page=5"),
        ("sort highest total, page 1000", f"?sort=-total&{after('-total', 49_950)}&page=1000"),
    ]
    results = []
    for label, query in cases:
        timings, cpu = [], []
        for _ in range(runs):
            reset_queries()
            with CaptureQueriesContext(connection) as queries:
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get("/orders/" + query)
                timings.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
            assert response.status_code == 200, (label, response.status_code)
        sql_ms = sum(float(q["time"]) for q in queries.captured_queries) * 1000
        results.append((label, statistics.median(timings), max(timings), statistics.median(cpu), sql_ms,
                        len(queries)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    seed(args.orders)
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    if engine == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE orders_order")
    print(f"\nOrder list with {args.orders:,} orders on {engine}: whole request (session, query, template), "
          f"{args.runs} runs each")
    print("(wall = elapsed; cpu = this process's CPU time, which is what a busy machine does not inflate;"
          " sql = time in queries, last run)")
    print(f"{'case':<40} {'wall p50':>9} {'wall max':>9} {'cpu p50':>8} {'sql':>7} {'queries':>8}")
    for label, median, worst, cpu, sql_ms, queries in measure(args.runs):
        print(f"{label:<40} {median:>9.1f} {worst:>9.1f} {cpu:>8.1f} {sql_ms:>7.1f} {queries:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
