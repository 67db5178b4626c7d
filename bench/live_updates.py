"""Live-update benchmark: how long from a saga event's commit to the HTML frame on every
order-detail page watching it?

    .venv/bin/python bench/live_updates.py                    # 200 sockets, 20 orders, 2 events/s per saga
    .venv/bin/python bench/live_updates.py --rate 5 --clients 400
    .venv/bin/python bench/live_updates.py --hogs 2          # with two busy-loop processes beside it

What it does:
- a scratch database (SQLite in a temp dir, or DATABASE_URL if set: point that at a scratch
  database), migrated, with an operator and 20 orders made by order_create (no Temporal);
- the real ASGI app (ordersite.asgi) under uvicorn on a free port, with the real Redis
  pub/sub channel layer from settings (REDIS_URL);
- a second process with the websocket clients (the `websockets` package), signed in with a
  session cookie of that operator, spread evenly over the orders; each waits for the fresh
  render a page gets on connect;
- this process drives 20 busy "sagas": each records a realistic run of saga events (retries,
  a follow-up, a signal, the finish) for its order through orders.services.events.
  saga_event_record inside a transaction, at a steady rate, stamping the moment each commits;
- every frame says which event it answers (data-event-id on the timeline header); the delay
  of a frame is its arrival time at the client minus its event's commit time, on the same
  monotonic clock (CLOCK_MONOTONIC is system-wide, so the two processes agree).

The server runs as deployed (bench/deployed_env.py: DEBUG off, DB_CONN_MAX_AGE=60, metrics
in multiprocess mode). --hogs N starts N busy-loop processes for the drive (killed at the
end): the case of a machine whose cores are busy with something else.

Prints p50/p90/p99/max delay, frames expected (events x sockets on that order) vs received,
how many detail frames the server built from the event's message vs read from the database
(from its /metrics), and the server's CPU use. Exits 0 unless --strict is given and a frame
was dropped or the p99 missed --target-ms.
"""

import argparse
import asyncio
import json
import os
import random
import secrets
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.deployed_env import deployed_env  # noqa: E402

EVENT_ID = re.compile(r'data-event-id="(\d+)"')

# One busy saga: retries on charge and ship, a failed notification, a follow-up and a resend.
SAGA_EVENTS = [
    ("validate", "started", "", 1), ("validate", "succeeded", "2 line(s), total 49.90 EUR", 1),
    ("reserve", "started", "", 1), ("reserve", "succeeded", "Reserved 1 x Mug, 1 x Tote", 1),
    ("charge", "started", "", 1), ("charge", "failed", "payment unavailable: timed out", 1),
    ("charge", "retrying", "", 2), ("charge", "failed", "payment unavailable: timed out", 2),
    ("charge", "retrying", "", 3), ("charge", "succeeded", "Charged 49.90 EUR (pay-bench)", 3),
    ("confirm", "started", "", 1), ("confirm", "succeeded", "Sold 2 item(s)", 1),
    ("ship", "started", "", 1), ("ship", "failed", "carrier unavailable", 1),
    ("ship", "retrying", "resuming after parcel 1", 2), ("ship", "succeeded", "Booked 2 parcel(s) with the carrier", 2),
    ("notify", "started", "", 1), ("notify", "failed", "mailer refused the message", 1),
    ("notify", "followup", "Could not notify the customer: mailer refused the message", 1),
    ("notify", "signal", "resend requested (action #0): bench", 1),
    ("notify", "retrying", "", 2), ("notify", "succeeded", "Emailed bench@example.com", 2),
    ("", "finished", "Order completed", 1),
]


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the clients (a separate process, no Django) -------------------------------------------


async def run_clients(config: dict) -> None:
    import websockets

    port, cookie = config["port"], config["cookie"]
    targets = [(i, order_id) for i, order_id in enumerate(config["targets"])]
    frames: list[tuple[int, int, int, int]] = []
    ready = asyncio.Event()
    opened = 0
    gate = asyncio.Semaphore(20)  # open sockets 20 at a time, as pages would over a few seconds

    async def client(index: int, order_id: int) -> None:
        nonlocal opened
        async with gate:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/orders/{order_id}/",
                additional_headers={"Cookie": f"sessionid={cookie}"},
                origin=f"http://127.0.0.1:{port}", max_size=None, open_timeout=60, ping_interval=None,
                compression=None if config["no_deflate"] else "deflate",
            )
            await ws.recv()  # the fresh render every (re)connect gets
        opened += 1
        if opened == len(targets):
            ready.set()
        try:
            async for message in ws:
                arrived = now_ns()
                match = EVENT_ID.search(message)
                frames.append((index, order_id, int(match.group(1)) if match else -1, arrived))
        finally:
            await ws.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(client(i, order_id)) for i, order_id in targets]
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for task in done:
            task.result()  # a client failed to connect: raise its error
    print(f"READY {time.perf_counter() - started:.2f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "STOP"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    Path(config["out"]).write_text(json.dumps(frames))
    print("DONE", flush=True)


# --- the driver (this process, with Django) --------------------------------------------------


def setup_django(scratch: Path) -> None:
    if not os.environ.get("DATABASE_URL"):
        os.environ["ORDERSITE_VAR_DIR"] = str(scratch)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def prepare(order_count: int, id_base: int) -> tuple[list[int], str]:
    """Migrate, make an operator and the orders; returns the order ids and a session cookie."""
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from ops.roles import OPERATOR, staff_user_create
    from orders.models import Order
    from orders.services.catalog import product_create
    from orders.services.ordering import LineRequest, order_create

    call_command("migrate", verbosity=0)
    # Redis pub/sub channels are global: start ids far from the small ids other runs on the
    # same Redis use, so their events and ours do not reach each other's sockets.
    if Order.objects.count() == 0:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT setval(pg_get_serial_sequence('orders_order', 'id'), %s)", [id_base])
        else:
            Order.objects.create(id=id_base, customer_name="-", customer_email="x@example.com").delete()
    operator = staff_user_create(username="live-bench-operator", password="live-bench-pass", role=OPERATOR)
    suffix = random.randrange(10**6)
    mug = product_create(sku=f"MUG-{suffix}", name="Mug", price=Decimal("12.50"), stock=10**6)
    tote = product_create(sku=f"TOTE-{suffix}", name="Tote", price=Decimal("37.40"), stock=10**6)
    order_ids = [
        order_create(customer_name=f"Bench Customer {i}", customer_email=f"bench{i}@example.com",
                     lines=[LineRequest(mug.pk, 1), LineRequest(tote.pk, 1)], start_saga=False).pk
        for i in range(order_count)
    ]
    client = Client()
    client.force_login(operator)
    return order_ids, client.cookies["sessionid"].value


def record(order_id: int, step: str, kind: str, detail: str, attempt: int) -> tuple[int, int]:
    """Record one saga event the way an activity does; returns (event id, commit time)."""
    from django.db import transaction

    from orders.locks import lock_order
    from orders.services.events import order_saga_state_set, saga_event_record

    stamp: dict[str, int] = {}
    with transaction.atomic():
        # Registered before the broadcast's own on_commit hook, so it runs first after commit.
        transaction.on_commit(lambda: stamp.setdefault("committed", now_ns()))
        order = lock_order(order_id)
        if kind in ("started", "retrying"):
            order_saga_state_set(order, status="processing", saga_status="running", current_step=step)
        elif kind == "followup":
            order_saga_state_set(order, saga_status="needs_followup", last_error=detail)
        elif kind == "finished":
            order_saga_state_set(order, status="completed", saga_status="completed")
        event = saga_event_record(order, kind=kind, step=step, detail=detail, attempt=attempt)
    return event.pk, stamp["committed"]


async def drive(order_ids: list[int], rate: float, workers: int, spread: float) -> dict[int, tuple[int, int]]:
    """Every saga records its events at `rate` per second; returns event id -> (order id,
    commit time). Sagas start evenly over `spread` seconds (at least one event interval):
    with a short spread they run in lockstep, each hitting its heavier events (start,
    shipping, follow-up, finish) together with the others, the worst case for the tail."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-saga")
    committed: dict[int, tuple[int, int]] = {}
    interval = 1 / rate
    lags: list[float] = []

    async def saga(order_id: int, phase: float) -> None:
        next_at = loop.time() + phase
        for step, kind, detail, attempt in SAGA_EVENTS:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            lags.append(loop.time() - next_at)
            event_id, at = await loop.run_in_executor(pool, record, order_id, step, kind, detail, attempt)
            committed[event_id] = (order_id, at)
            next_at += interval

    window = max(spread, interval)
    await asyncio.gather(*(saga(order_id, window * i / len(order_ids)) for i, order_id in enumerate(order_ids)))
    pool.shutdown(wait=True)
    if lags and max(lags) > interval:
        print(f"note: the driver fell behind its schedule by up to {max(lags) * 1000:.0f} ms")
    return committed


def hogs_start(count: int) -> list[subprocess.Popen]:
    """Busy-loop processes competing with the server for the CPU."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def frames_by_source(port: int, token: str) -> dict[str, float]:
    """The server's detail frames by source (message, read), summed over its processes;
    empty when its /metrics does not have them (a server without the counter)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    try:
        body = urllib.request.urlopen(request, timeout=10).read().decode()
    except OSError as exc:
        print(f"note: could not read the server's metrics: {exc}")
        return {}
    found = re.findall(r'^ordersite_live_detail_frames_total\{source="(\w+)"\} ([0-9.e+]+)$', body, re.M)
    return {source: float(value) for source, value in found}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (k - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="websocket clients (order-detail pages)")
    parser.add_argument("--orders", type=int, default=20, help="orders watched, one busy saga each")
    parser.add_argument("--rate", type=float, default=2.0, help="saga events per second per saga")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="start the sagas evenly over this many seconds (default: within one event interval, "
                             "i.e. in lockstep)")
    parser.add_argument("--target-ms", type=float, default=20.0, help="p99 aim, for the verdict line")
    parser.add_argument("--no-deflate", action="store_true", help="clients do not offer permessage-deflate")
    parser.add_argument("--server-deflate", action="store_true",
                        help="the server accepts permessage-deflate (deployments turn it off)")
    parser.add_argument("--debug", action="store_true", help="run the server with DEBUG=1 (default: DEBUG=0, as deployed)")
    parser.add_argument("--hogs", type=int, default=0,
                        help="busy-loop processes to run during the drive (CPU contention), killed at the end")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a frame was dropped or p99 missed the aim")
    parser.add_argument("--details", action="store_true", help="also print the delays per second of the run")
    parser.add_argument("--client-process", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client_process:
        asyncio.run(run_clients(json.loads(args.client_process)))
        return 0

    import psutil

    scratch = Path(tempfile.mkdtemp(prefix="live-bench-"))
    # One key for this process (which signs the clients' session cookie) and the server.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    setup_django(scratch)
    from django.conf import settings

    order_ids, cookie = prepare(args.orders, id_base=random.randrange(10**7, 9 * 10**7))
    metrics_token = secrets.token_urlsafe(32)
    (scratch / "metrics").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **deployed_env(),
           # The key that signed the clients' session cookie (deployed_env makes a new one).
           "SECRET_KEY": os.environ["SECRET_KEY"],
           # Scraped at the end for the frames by source; several workers add up through
           # the multiprocess directory, as deployed (docker-compose.yml).
           "METRICS_TOKEN": metrics_token, "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics")}
    if args.debug:
        env.update(DEBUG="1", DJANGO_ENV="development")
    port = free_port()
    server = subprocess.Popen(
        # BENCH_SERVER_CMD: run another server command (a profiling wrapper, say); it gets --port.
        (os.environ["BENCH_SERVER_CMD"].split() + ["--port", str(port)]) if os.environ.get("BENCH_SERVER_CMD") else
        [sys.executable, "-m", "uvicorn", "ordersite.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--workers", str(args.workers),
         # As deployed (Dockerfile, docker-compose, Procfile.dev); --server-deflate for the old way.
         "--ws-per-message-deflate", "true" if args.server_deflate else "false"],
        cwd=ROOT, env=env,
    )
    clients = None
    hogs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.2)

        targets = [order_ids[i % len(order_ids)] for i in range(args.clients)]
        out = scratch / "frames.json"
        config = {"port": port, "cookie": cookie, "targets": targets, "out": str(out), "no_deflate": args.no_deflate}
        clients = subprocess.Popen([sys.executable, __file__, "--client-process", json.dumps(config)],
                                   cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = clients.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"clients did not connect: {ready}")
        connect_seconds = float(ready[1])

        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        client_process = psutil.Process(clients.pid)
        client_cpu_before = client_process.cpu_times().user + client_process.cpu_times().system
        print(f"{len(targets)} sockets connected in {connect_seconds:.1f} s; driving {args.orders} sagas...", flush=True)
        hogs = hogs_start(args.hogs)
        started = time.perf_counter()
        committed = asyncio.run(drive(order_ids, args.rate, workers=4, spread=args.spread))
        drive_seconds = time.perf_counter() - started
        time.sleep(3)  # let the last frames land
        cpu_used = sum(p.cpu_times().user + p.cpu_times().system for p in processes) - cpu_before
        client_cpu = client_process.cpu_times().user + client_process.cpu_times().system - client_cpu_before
        for hog in hogs:
            hog.kill()
        sources = frames_by_source(port, metrics_token)
        clients.stdin.write("STOP\n")
        clients.stdin.flush()
        clients.stdout.readline()
        clients.wait(timeout=30)
        frames = json.loads(out.read_text())
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        if clients and clients.poll() is None:
            clients.kill()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(scratch, ignore_errors=True)

    sockets_per_order: dict[int, int] = {}
    for order_id in targets:
        sockets_per_order[order_id] = sockets_per_order.get(order_id, 0) + 1
    expected = sum(sockets_per_order[order_id] for order_id, _ in committed.values())
    delivered: set[tuple[int, int]] = set()
    delays: list[float] = []
    by_second: dict[int, list[float]] = {}
    first_commit = min((at for _, at in committed.values()), default=0)
    foreign = duplicates = no_event = 0
    for index, order_id, event_id, arrived in frames:
        if event_id == -1:
            no_event += 1  # answering no one event: the waterfall (redrawn after a burst), the buttons
            continue
        origin = committed.get(event_id)
        if origin is None or origin[0] != order_id:
            foreign += 1  # another run's event on the shared Redis, or not one of ours
            continue
        if (index, event_id) in delivered:
            duplicates += 1
            continue
        delivered.add((index, event_id))
        delays.append((arrived - origin[1]) / 1e6)
        by_second.setdefault(int((origin[1] - first_commit) / 1e9), []).append(delays[-1])
    delays.sort()
    dropped = expected - len(delivered)
    events = len(committed)
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]

    start = f"started over {args.spread:g} s" if args.spread > 1 / args.rate else "in lockstep"
    print(f"Live updates: {args.clients} sockets on {args.orders} order-detail pages, {args.orders} sagas x "
          f"{len(SAGA_EVENTS)} events at {args.rate:g}/s each, {start} ({events / drive_seconds:.0f} events/s); "
          f"uvicorn x{args.workers} (DEBUG={int(args.debug)}, permessage-deflate {'on' if args.server_deflate and not args.no_deflate else 'off'}), "
          f"{database}, {settings.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[-1]} on {settings.REDIS_URL}"
          f"{f'; {args.hogs} busy-loop process(es) beside it' if args.hogs else ''}")
    print(f"  sockets connected with their first render in {connect_seconds:.2f} s")
    print(f"  frames expected {expected}, received {len(delivered)}, dropped {dropped}"
          f" (duplicates {duplicates}, frames for events not ours {foreign}; waterfall and button frames {no_event})")
    if sources:
        print(f"  detail frames built from the event's message {sources.get('message', 0):.0f}, "
              f"read from the database {sources.get('read', 0):.0f}")
    else:
        print("  detail frames by source: not reported by this server")
    print(f"  commit -> frame at the client: p50 {percentile(delays, 50):.1f} ms, p90 {percentile(delays, 90):.1f} ms, "
          f"p99 {percentile(delays, 99):.1f} ms, max {delays[-1] if delays else float('nan'):.1f} ms")
    print(f"  server CPU {cpu_used:.1f} s over {drive_seconds + 3:.1f} s "
          f"({100 * cpu_used / (drive_seconds + 3):.0f}% of one core), clients {client_cpu:.1f} s; machine load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.details:
        print("  per second of the run (by commit time): p50 / p99 / max ms")
        for second, values in sorted(by_second.items()):
            values.sort()
            print(f"    {second:3d}s  {percentile(values, 50):7.1f} {percentile(values, 99):7.1f} {values[-1]:7.1f}"
                  f"  ({len(values)} frames)")
    ok = dropped == 0 and percentile(delays, 99) < args.target_ms
    print(f"  verdict: {'OK' if ok else 'MISSED'} (aim: no dropped frames, p99 < {args.target_ms:g} ms)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
