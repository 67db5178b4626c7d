"""Server time and query count of the staff pages, on a database seeded by seed_orders.py.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench .venv/bin/python bench/page_times.py

Requests each page through django.test.Client as a signed-in staff user (bench-operator by
default: it sees every button), five times after one warm-up, and prints the median server
time (the whole Django request: middleware, session, queries, template) and the number of
queries, next to the aim (AIM_MS of server time for every page at 100,000 orders). Deep
pages are reached as a user reaches them: the order list's Last page, and a page 25,000
orders in (by its keyset cursor, as the Next links carry it). Pages whose URL is not
installed are skipped. --rounds N measures every page N times over (a busy machine shows
through as spread between rounds); --strict exits non-zero when a page's best round misses
the aim. --markdown prints a table for docs/benchmarks.md; --only TEXT measures the pages
whose label contains TEXT (--only dashboard).

Settings: development by default (DJANGO_ENV=development, as `make run` has them: DEBUG on,
so the query log and the templates' debug mode). --deployed measures with the production
settings instead (DJANGO_ENV=production, DEBUG off), with throwaway values for what
production refuses to start without (SECRET_KEY, CARRIER_WEBHOOK_SECRET; SANDBOX_ENABLED=1,
since no page measured calls an outside adapter) and requests made as over HTTPS, as behind
the TLS proxy. Run both and report which: the aim is server time as deployed.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
# Read before Django's settings load (main() parses the rest).
DEPLOYED = "--deployed" in sys.argv[1:]
if DEPLOYED:
    from bench.deployed_env import deployed_env

    for name, value in deployed_env().items():
        os.environ.setdefault(name, value)
    os.environ["DJANGO_ENV"] = "production"
else:
    os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import NoReverseMatch, reverse  # noqa: E402

from ops.keyset import encode_cursor  # noqa: E402
from ops.order_pages.selectors import LIST_SORTS  # noqa: E402
from orders.models import FollowUp, OperatorAction, Order  # noqa: E402

RUNS = 5
AIM_MS = 50.0


def url(name: str, *args, query: str = "") -> str | None:
    try:
        return reverse(name, args=args) + (f"?{query}" if query else "")
    except NoReverseMatch:
        return None


def pages() -> list[tuple[str, str | None]]:
    stuck = Order.objects.filter(saga_status="stuck").order_by("-pk").first()
    busy = Order.objects.filter(saga_status="completed").order_by("-pk").first()
    some_email = Order.objects.order_by("pk").values_list("customer_email", flat=True).first() or "x"
    audit_actor = OperatorAction.objects.select_related("actor").order_by("-pk").first()
    newest_first = LIST_SORTS["-created"]
    deep = Order.objects.order_by(*newest_first).only("id", "created_at")[25_000:25_001].first()
    deep_query = f"after={encode_cursor(deep, newest_first)}&page=501" if deep else None
    return [
        ("Dashboard home", url("ops:home")),
        ("Order list", url("orders:list")),
        ("Order list, filtered (saga stuck, step charge)", url("orders:list", query="saga_status=stuck&step=charge")),
        ("Order list, filtered (status completed)", url("orders:list", query="status=completed")),
        ("Order list, searched (customer email)", url("orders:list", query=f"q={some_email}")),
        ("Order list, searched (name)", url("orders:list", query="q=lovelace")),
        ("Order list, 25,000 orders in (page 501)", url("orders:list", query=deep_query) if deep_query else None),
        ("Order list, last page", url("orders:list", query="last=1")),
        ("Order detail (stuck order)", url("orders:detail", stuck.pk) if stuck else None),
        ("Order detail (completed order)", url("orders:detail", busy.pk) if busy else None),
        ("Stuck queue", url("ops:stuck")),
        ("Stuck queue, step charge", url("ops:stuck", query="step=charge")),
        ("Stuck queue, last page", url("ops:stuck", query="last=1")),
        ("Follow-up queue", url("ops:followups")),
        ("Follow-ups resolved recently", url("ops:followups", query="view=resolved")),
        ("Audit log", url("ops:audit")),
        ("Audit log, filtered (actor, action)",
         url("ops:audit", query=f"actor={audit_actor.actor.username}&action=compensate") if audit_actor else None),
        ("Admin order list", url("admin:orders_order_changelist")),
        ("Admin order list, saga stuck", url("admin:orders_order_changelist", query="saga_status__exact=stuck")),
    ]


def measure(client: Client, path: str) -> tuple[float, int, int]:
    # Deployed, plain http is redirected to https (SECURE_SSL_REDIRECT).
    client.get(path, secure=DEPLOYED)  # warm-up: template loading, first connection
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(path, secure=DEPLOYED)
        times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}")
    with CaptureQueriesContext(connection) as ctx:
        client.get(path, secure=DEPLOYED)
    return statistics.median(times) * 1000, len(ctx.captured_queries), len(response.content)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", default="bench-operator", help="staff username (made by seed_orders.py)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every page this many times over")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--only", default="", help="measure only the pages whose label contains this text")
    parser.add_argument("--deployed", action="store_true",
                        help="production settings (DEBUG off), throwaway secrets; default: development")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 when a page's best round is over {AIM_MS:.0f} ms")
    args = parser.parse_args(argv)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    user = get_user_model().objects.filter(username=args.user).first()
    if user is None:
        raise SystemExit(f"No user {args.user!r}: run bench/seed_orders.py first.")
    client = Client()
    client.force_login(user)

    vendor = connection.vendor
    orders = Order.objects.count()
    header = (f"{orders:,} orders, {Order.objects.filter(saga_status='stuck').count():,} stuck, "
              f"{FollowUp.objects.filter(state='open').count():,} open follow-ups, "
              f"{OperatorAction.objects.count():,} operator actions; {vendor}; user {args.user}; "
              f"median of {RUNS}; settings {settings.DJANGO_ENV}, DEBUG {'on' if settings.DEBUG else 'off'}")
    measured = [(label, path) for label, path in pages()
                if path is not None and args.only.lower() in label.lower()]
    for label, path in pages():
        if path is None:
            print(f"skipped (not installed): {label}", file=sys.stderr)
    results: dict[str, list[tuple[float, int]]] = {path: [] for _, path in measured}
    for round_number in range(1, max(1, args.rounds) + 1):
        for label, path in measured:
            ms, queries, size = measure(client, path)
            results[path].append((ms, queries))
            if not args.markdown:
                verdict = "ok  " if ms <= AIM_MS else "OVER"
                print(f"{ms:8.1f} ms (aim {AIM_MS:.0f}) {verdict} {queries:3d} queries  {size / 1024:6.0f} KiB  "
                      f"{label}  {path}", flush=True)
        if not args.markdown and args.rounds > 1:
            print(f"-- end of round {round_number}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header += f"; {os.cpu_count()} CPUs, load average {load:.1f} at the end"
    if args.markdown:
        print(header + "\n")
        rounds = " / ".join(f"round {n}" for n in range(1, max(1, args.rounds) + 1))
        print(f"| page | URL | server time, ms (median of {RUNS}; {rounds}) | aim, ms | queries |")
        print("|---|---|---:|---:|---:|")
        for label, path in measured:
            times = " / ".join(f"{ms:.0f}" for ms, _ in results[path])
            print(f"| {label} | `{path[:80]}` | {times} | {AIM_MS:.0f} | {results[path][-1][1]} |")
    else:
        print(header)
    missed = [label for label, path in measured if min(ms for ms, _ in results[path]) > AIM_MS]
    print(f"{len(measured) - len(missed)} of {len(measured)} pages within {AIM_MS:.0f} ms (best round)"
          + (f"; over: {', '.join(missed)}" if missed else ""))
    if args.strict and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
