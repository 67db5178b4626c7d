"""The fault suite's scenario, tying the other modules together: workers up, orders placed
in waves with Temporal and the database disrupted between them, settled, then checked."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

from .after_sale import run_after_sale
from .checks import FaultRun, run_checks
from .outages import database_refuse_connections, is_postgres
from .plans import AFTER_SALE_MIX, PlanKind, place_orders, usable_plans
from .settling import settle, workflow_states
from .workers import WorkerPool


@dataclass
class Scenario:
    orders: int = 24
    workers: int = 3
    crash_points: tuple[str, ...] = ()  # each fires once, in whichever worker gets there first
    chaos_interval: tuple[float, float] | None = None
    temporal_restarts: int = 1
    database_outage_seconds: float = 4  # Postgres only; 0 for none
    settle_timeout: float = 120
    pace: float = 0.2  # seconds between two orders
    # When the charge.after_gateway crash point fires, cancel that order's workflow from
    # Temporal (as from its UI or CLI) while the charge's answer is lost: the gateway holds
    # money our ledger never saw, and the order must end cancelled with it refunded.
    cancel_after_lost_charge: bool = True
    seed: int = 7
    # Issue 8's after-sale paths (tests/faults/after_sale.py): orders per path, placed in the
    # first wave; once at rest, staff act on them while a worker is SIGKILLed every few seconds.
    after_sale_per_path: int = 0
    after_sale_parcel_deadline: float = 12  # RETURN_PARCEL_DEADLINE_SECONDS for their returns
    after_sale_chaos_interval: tuple[float, float] | None = (3, 6)
    after_sale_timeout: float = 180


def _cancel_when_charge_lost(pool: WorkerPool, run: FaultRun, stop: threading.Event, log=print) -> None:
    """Wait for the charge.after_gateway marker, then cancel its order's workflow in Temporal."""
    from orders.models import Order
    from orders.temporal_client import run_with_client

    marker = pool.crash_dir / "charge.after_gateway.fired"
    while not stop.wait(0.2):
        if not marker.exists():
            continue
        text = marker.read_text()
        if "order=" not in text:
            continue
        order_id = int(text.split("order=")[1].split()[0])
        workflow_id = Order.objects.values_list("workflow_id", flat=True).get(pk=order_id)

        async def cancel(client):
            await client.get_workflow_handle(workflow_id).cancel()

        try:
            run_with_client(cancel, timeout=30)
        except Exception as exc:
            log(f"fault suite: could not cancel order {order_id} from Temporal: {exc}")
            return
        finally:
            connection.close()  # this thread's own; a test database with sessions cannot be dropped
        run.temporal_cancelled.add(order_id)
        run.kills["temporal cancel after lost charge"] += 1
        log(f"fault suite: order {order_id}'s charge answer lost (worker killed); cancelled it from Temporal")
        return


def run_scenario(sc: Scenario, *, server, work_dir: Path, log=print) -> FaultRun:
    """Place orders in waves with the disruptions between them, settle, check.

    `server` is a tests.temporal_server.DevServer with a db_filename (it is restarted).
    Settings (SAGA_TASK_QUEUE, PAYMENTS_TASK_QUEUE, TEMPORAL_ADDRESS, retry interval) must
    already point where the workers will be: the sagas are started from this process.
    """
    from tests.factories import make_product

    rng = random.Random(sc.seed)
    tag = uuid.uuid4().hex[:6]
    plans = usable_plans(log)
    rng.shuffle(plans)
    products = [make_product(price=f"{rng.randint(5, 60)}.00", stock=10_000) for _ in range(4)]
    pool = WorkerPool(
        size=sc.workers, work_dir=work_dir, temporal_address=server.address,
        orders_queue=settings.SAGA_TASK_QUEUE, payments_queue=settings.PAYMENTS_TASK_QUEUE,
        crash_at=",".join(sc.crash_points),
    )
    run = FaultRun(placed=[], mail_dir=pool.mail_dir)
    watcher_stop = threading.Event()
    started = time.monotonic()
    pool.start()
    log(f"fault suite: {sc.workers} workers up in {time.monotonic() - started:.1f}s; plans: "
        + ", ".join(p.name for p in plans))
    try:
        if sc.chaos_interval:
            pool.start_chaos(interval=sc.chaos_interval, seed=sc.seed)
        if sc.cancel_after_lost_charge and "charge.after_gateway" in sc.crash_points:
            threading.Thread(target=_cancel_when_charge_lost, args=(pool, run, watcher_stop, log), daemon=True,
                             name="fault-cancel").start()
        disruptions = ["temporal"] * sc.temporal_restarts
        if sc.database_outage_seconds:
            if is_postgres():
                disruptions.append("database")
            else:
                run.skipped["database refusal"] = "SQLite: a file cannot refuse connections; the CI runs Postgres"
        waves = len(disruptions) + 1
        per_wave = [sc.orders // waves + (1 if i < sc.orders % waves else 0) for i in range(waves)]
        for wave, count in enumerate(per_wave):
            run.placed += place_orders(count, plans, products, rng=rng, tag=tag, first_index=len(run.placed),
                                       pace=sc.pace)
            if wave == 0 and sc.after_sale_per_path:
                after_plans = usable_plans(log, AFTER_SALE_MIX)
                run.placed += place_orders(sc.after_sale_per_path * len(after_plans), after_plans, products, rng=rng,
                                           tag=tag, first_index=len(run.placed), pace=sc.pace)
            if wave < len(disruptions):
                time.sleep(2 + rng.random() * 2)  # let the wave get into its steps
                what = disruptions[wave]
                t0 = time.monotonic()
                if what == "temporal":
                    server.restart(kill=True, down_seconds=1)
                    run.kills["temporal dev server"] += 1
                else:
                    run.worker_sessions_dropped += database_refuse_connections(sc.database_outage_seconds)
                    run.kills["database refusal"] += 1
                log(f"fault suite: {what} disrupted for {time.monotonic() - t0:.1f}s after wave {wave + 1}")
        log(f"fault suite: {len(run.placed)} orders placed in {time.monotonic() - started:.0f}s; settling")
        if sc.chaos_interval:
            # Keep killing for a while as they run, then let them finish in peace.
            time.sleep(min(20, sc.settle_timeout / 4))
            pool.stop_chaos()
        for placed in run.placed:
            if placed.order_id in run.temporal_cancelled:
                # Cancelled before shipping: whatever its plan, it must end cancelled.
                placed.kind = PlanKind(f"{placed.kind.name}+temporal_cancel", placed.kind.plan,
                                       frozenset({"cancelled"}), healthy=False, lines=placed.kind.lines)
        run.outcomes = settle(run.placed, timeout=sc.settle_timeout, log=log)
        run.workflows = workflow_states([p.order_id for p in run.placed])
        if sc.after_sale_per_path:
            kills_before = pool.chaos_kills_made
            run.after_sale = run_after_sale(
                run, pool, parcel_deadline_seconds=sc.after_sale_parcel_deadline, timeout=sc.after_sale_timeout,
                chaos_interval=sc.after_sale_chaos_interval, seed=sc.seed, log=log)
            run.figures["after-sale phase"] = (
                f"{run.after_sale.elapsed:.0f}s, {len(run.after_sale.started)} orders, "
                f"{pool.chaos_kills_made - kills_before} random SIGKILLs, "
                f"operator refund retries {sum(run.after_sale.retries.values())}")
    finally:
        watcher_stop.set()
        pool.stop()
    run.kills.update(pool.kills)
    fired = pool.fired_points()
    run.figures["crash points fired"] = ", ".join(fired) or "none"
    missing = sorted(set(sc.crash_points) - set(fired))
    if missing:
        run.figures["crash points never reached"] = ", ".join(missing)
    run.figures["worker starts"] = pool.starts
    run.figures["worker log: 'Task exception was never retrieved'"] = pool.log_count("Task exception was never retrieved")
    run.publisher_deaths = [
        f"{pool.name}{slot}: {line.strip()[:200]}" for slot in range(pool.size)
        for line in pool.log(slot).splitlines() if "coro=<_publisher()" in line
    ]
    run.figures["worker log: 'channel layer publish failed'"] = pool.log_count("channel layer publish failed")
    run.figures["elapsed"] = f"{time.monotonic() - started:.0f}s"
    run_checks(run)
    return run
