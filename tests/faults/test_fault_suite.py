"""The fault suite, CI size: issue 7's promise under crashes, restarts and an outage.

One scenario runs for the module (tests/faults/harness.py): a Temporal dev server with
its state in a file, three `manage.py run_worker` processes, ~24 orders with mixed fault
plans placed in waves; each crash point of orders/crashpoints.py fires once (SIGKILL of
whichever worker reaches it first; the supervisor restarts it), the dev server is
SIGKILLed and restarted between waves, and the database refuses connections for a few
seconds (Postgres). Once every saga is at rest, a few completed orders per after-sale path
(issue 8: parcel lost, return never arrives, refund gateway down; tests/faults/after_sale.py)
are acted on by staff while a worker is SIGKILLed every few seconds. Then each test below
is one check, made in SQL over our tables and the sandbox's own books. A failing test is a finding, not flakiness.

The large run with random kills: scripts/fault_suite.py (`make faults`).
"""

import os
import uuid

import pytest
from django.core.management import call_command
from django.conf import settings

from orders.crashpoints import POINTS

from ..temporal_server import DevServer
from . import checks, harness
from .fresh_workers import fresh_worker_first_broadcasts

# transaction=True: the workers commit for real; the marker also makes pytest-django set up the
# test database for this module.
pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

CI_SCENARIO = harness.Scenario(
    orders=int(os.environ.get("FAULT_SUITE_ORDERS", "24")),
    workers=3,
    crash_points=POINTS,
    chaos_interval=None,
    temporal_restarts=1,
    database_outage_seconds=4,
    settle_timeout=float(os.environ.get("FAULT_SUITE_SETTLE_SECONDS", "120")),
    # Issue 8's paths (parcel lost, return never arrives, refund gateway down): a few orders
    # each, acted on once completed while a worker is SIGKILLed every 3-6 s.
    after_sale_per_path=int(os.environ.get("FAULT_SUITE_AFTER_SALE_PER_PATH", "2")),
)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    server = DevServer(db_filename=str(tmp_path_factory.mktemp("temporal") / "temporal.db")).start()
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="module")
def queue_settings(fault_server):
    # Set and restored by hand: override_settings here would hand the module a database
    # connection to the real database, not the test one.
    suffix = uuid.uuid4().hex[:8]
    values = dict(
        TEMPORAL_ADDRESS=fault_server.address,
        SAGA_TASK_QUEUE=f"faults-orders-{suffix}",
        PAYMENTS_TASK_QUEUE=f"faults-payments-{suffix}",
        SANDBOX_FAULTS_ENABLED=True,
        # The production default, not the tests' 0.05 s: three charge attempts then span
        # seconds, as they would against a real gateway, so a few seconds of our own
        # database outage must not exhaust them.
        SAGA_RETRY_INITIAL_SECONDS=1.0,
    )
    saved = {name: getattr(settings, name) for name in values}
    for name, value in values.items():
        setattr(settings, name, value)
    yield
    for name, value in saved.items():
        setattr(settings, name, value)


@pytest.fixture(scope="module")
def db_for_module(django_db_setup, django_db_blocker):
    """The test database, unblocked for the module, flushed afterwards (the workers commit
    for real, so no transaction can roll their rows back)."""
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)
        yield
        from django.db import connection

        connection.close()
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def fault_run(db_for_module, queue_settings, fault_server, tmp_path_factory):
    run = harness.run_scenario(CI_SCENARIO, server=fault_server, work_dir=tmp_path_factory.mktemp("faults"))
    checks.print_figures(run)
    return run


def _check(run, name):
    problems = run.violations[name]
    assert not problems, f"{name}: {len(problems)} violation(s)\n" + "\n".join(problems)


# --- the disruptions happened ------------------------------------------------------------


def test_every_crash_point_fired(fault_run):
    fired = set(fault_run.figures["crash points fired"].split(", "))
    assert fired >= set(POINTS), f"crash points never reached: {sorted(set(POINTS) - fired)}"
    crashes = sum(n for what, n in fault_run.kills.items() if what.startswith("crash:"))
    assert crashes == len(POINTS), f"kills: {dict(fault_run.kills)}"


def test_temporal_dev_server_restarted(fault_run):
    assert fault_run.kills["temporal dev server"] == CI_SCENARIO.temporal_restarts


def test_database_refused_connections(fault_run):
    if "database refusal" in fault_run.skipped:
        pytest.skip(fault_run.skipped["database refusal"])
    assert fault_run.kills["database refusal"] == 1
    # The workers were really cut off (their pooled sessions dropped), not just a quiet database.
    assert fault_run.worker_sessions_dropped >= 1


# --- the checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("check", checks.CHECKS)
def test_check(fault_run, check):
    _check(fault_run, check)


def test_after_sale_paths_ran_under_kills(fault_run):
    after = fault_run.after_sale
    paths = sorted(set(after.started.values()))
    assert paths == ["parcel_lost", "refund_gateway_down", "return_never_arrives"], (
        f"after-sale paths started: {paths}; refused: {after.refused}")
    assert fault_run.kills["chaos"] >= 1, f"no worker was SIGKILLed in the after-sale phase: {dict(fault_run.kills)}"


# --- fresh workers --------------------------------------------------------------------------


def test_every_fresh_workers_first_event_reaches_a_subscriber(db_for_module, queue_settings, fault_server,
                                                             tmp_path_factory):
    results = fresh_worker_first_broadcasts(
        int(os.environ.get("FAULT_SUITE_FRESH_WORKERS", "4")), server=fault_server,
        work_dir=tmp_path_factory.mktemp("fresh"),
    )
    lost = {i: why for i, why in results.items() if why}
    assert not lost, f"{len(lost)} of {len(results)} fresh workers' first events never arrived:\n" + "\n".join(
        f"worker {i}: {why}" for i, why in lost.items())
