"""The fault suite, large: issue 7's promise over 100+ orders with random worker kills.

    python scripts/fault_suite.py --orders 100          # or: make faults
    python scripts/fault_suite.py --orders 300 --workers 4 --chaos 2,5 --keep-db

What it does (tests/faults/ has the machinery, harness.py the scenario that ties it together;
tests/faults/test_fault_suite.py is the CI size of the same scenario):
- a fresh database (`<DATABASE_URL's name>_faults` on Postgres, var/fault_suite.sqlite3
  otherwise), migrated; a Temporal dev server with its state in a file;
- `--workers` real `manage.py run_worker` processes, restarted whenever they die;
- orders with mixed fault plans (declines, outages, inventory, carrier and notify
  failures, blips that must heal, lost responses where this tree has them), placed in
  waves through the app's own order_create;
- every crash point of orders/crashpoints.py fires once (SIGKILL where the gateway acted
  and we did not commit, right after our commit, in bookkeeping, after the mail hand-off,
  after a parcel booking, at a fresh worker's first broadcast), and a chaos loop SIGKILLs
  a random worker every few seconds while the sagas run;
- the Temporal dev server is SIGKILLed and restarted between waves, and the database
  refuses connections for a few seconds (Postgres only);
- once every saga is at rest: the checks, in SQL over our tables and the sandbox's books
  (see tests/faults/checks.py, CHECKS), then several fresh workers' first broadcasts are
  awaited on the channel layer.

Prints the figures and exits 1 if any check failed (2 if the run itself broke).
Environment: DATABASE_URL, REDIS_URL as for the app.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--chaos", default="3,6", help="kill a random worker every MIN,MAX seconds; 0 for none")
    parser.add_argument("--temporal-restarts", type=int, default=1)
    parser.add_argument("--db-outage", type=float, default=4, help="seconds the database refuses connections (Postgres)")
    parser.add_argument("--fresh-workers", type=int, default=6, help="fresh workers whose first broadcast is awaited")
    parser.add_argument("--pace", type=float, default=0.25, help="seconds between two orders")
    parser.add_argument("--settle", type=float, default=300, help="seconds to wait for every saga to come to rest")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--after-sale", type=int, default=5,
                        help="orders per after-sale path (parcel lost, return never arrives, refund gateway down)")
    parser.add_argument("--keep-db", action="store_true", help="keep the database (and print its name) to look around")
    args = parser.parse_args()

    import django

    from django.conf import settings

    django.setup()
    from django.db import connection

    from orders.crashpoints import POINTS
    from tests.faults import checks, harness
    from tests.faults.fresh_workers import fresh_worker_first_broadcasts
    from tests.temporal_server import DevServer

    db = settings.DATABASES["default"]
    original_name = db["NAME"]
    if connection.vendor == "sqlite":
        db["TEST"] = {**db.get("TEST", {}), "NAME": str(settings.VAR_DIR / "fault_suite.sqlite3")}
    else:
        db["TEST"] = {**db.get("TEST", {}), "NAME": f"{db['NAME']}_faults"}
    test_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    print(f"fault suite: database {test_name}, seed {args.seed}")

    work_dir = Path(tempfile.mkdtemp(prefix="fault-suite-"))
    server = DevServer(db_filename=str(work_dir / "temporal.db")).start()
    settings.TEMPORAL_ADDRESS = server.address
    settings.SAGA_TASK_QUEUE = f"faults-orders-{args.seed}"
    settings.PAYMENTS_TASK_QUEUE = f"faults-payments-{args.seed}"
    settings.SANDBOX_FAULTS_ENABLED = True
    settings.SAGA_RETRY_INITIAL_SECONDS = 1.0  # the production default (see the CI module)
    chaos = None if args.chaos in ("0", "") else tuple(float(x) for x in args.chaos.split(","))
    scenario = harness.Scenario(
        orders=args.orders, workers=args.workers, crash_points=POINTS, chaos_interval=chaos,
        temporal_restarts=args.temporal_restarts, database_outage_seconds=args.db_outage,
        settle_timeout=args.settle, pace=args.pace, seed=args.seed, after_sale_per_path=args.after_sale,
    )
    code = 2
    try:
        run = harness.run_scenario(scenario, server=server, work_dir=work_dir)
        fresh = {}
        if args.fresh_workers:
            fresh = fresh_worker_first_broadcasts(args.fresh_workers, server=server, work_dir=work_dir / "fresh")
            lost = [i for i, why in fresh.items() if why]
            run.figures["fresh workers' first event received"] = f"{len(fresh) - len(lost)} of {len(fresh)}"
        checks.print_figures(run)
        lost = [i for i, why in fresh.items() if why]
        print(f"{'FAIL' if lost else 'ok  '}  every fresh worker's first event reaches a subscriber"
              + (f"  ({len(lost)} of {len(fresh)} lost)" if lost else ""))
        print(f"work dir (worker logs, mail, crash markers): {work_dir}")
        code = 1 if run.failed_checks or lost else 0
    finally:
        server.stop(kill=True)
        connection.close()
        if args.keep_db:
            print(f"database kept: {test_name}")
        else:
            connection.creation.destroy_test_db(original_name, verbosity=0)
    return code


if __name__ == "__main__":
    sys.exit(main())
