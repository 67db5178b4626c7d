"""The circuit breaker itself (orders.circuit_breaker), against the real Redis of REDIS_URL.

Each test uses a breaker of its own name, so its state cannot leak into another test.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.db import OperationalError

from orders.circuit_breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, BreakerGuarded, CircuitBreaker
from orders.errors import GatewayUnavailable, PaymentDeclined, ServiceCircuitOpen

ROOT = Path(__file__).resolve().parent.parent


def config(**overrides) -> BreakerConfig:
    values = dict(window_seconds=60, failure_ratio=0.5, min_calls=4, cool_off_seconds=30, probe_timeout_seconds=30)
    return BreakerConfig(**{**values, **overrides})


@pytest.fixture
def make_breaker():
    made = []

    def make(**overrides) -> CircuitBreaker:
        breaker = CircuitBreaker(f"test-{uuid.uuid4().hex[:10]}", config=config(**overrides))
        made.append(breaker)
        return breaker

    yield make
    for breaker in made:
        breaker.reset()


def ok():
    return "ok"


def down():
    raise GatewayUnavailable("gateway timed out")


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(GatewayUnavailable):
            breaker.call(down)


def open_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.config.min_calls)
    assert breaker.state().state == OPEN


def test_opens_when_the_failure_ratio_is_reached_with_enough_calls(make_breaker):
    breaker = make_breaker(min_calls=4, failure_ratio=0.5)
    assert breaker.call(ok) == "ok"
    assert breaker.call(ok) == "ok"
    fail(breaker)
    assert breaker.state().state == CLOSED  # 1 failure in 3 calls: below both thresholds
    with pytest.raises(ServiceCircuitOpen) as raised:
        breaker.call(down)  # the call that opens it: the outage is the service's from now on
    assert isinstance(raised.value.__cause__, GatewayUnavailable) and raised.value.retry_after == 30
    state = breaker.state()
    assert state.state == OPEN and state.opened_at is not None and "timed out" in state.last_error
    assert 29 < state.retry_in_seconds <= 30


def test_too_few_calls_never_open_it(make_breaker):
    breaker = make_breaker(min_calls=5)
    fail(breaker, 4)
    assert breaker.state().state == CLOSED


def test_declines_are_answers_and_our_own_errors_count_as_neither(make_breaker):
    breaker = make_breaker(min_calls=4, failure_ratio=0.75)

    def decline():
        raise PaymentDeclined("card declined")

    def our_database_down():
        raise OperationalError("database is not accepting connections")

    fail(breaker, 2)
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            breaker.call(decline)  # two successes: 2 of 4 failed
    for _ in range(3):
        with pytest.raises(OperationalError):
            breaker.call(our_database_down)  # not counted at all
    assert breaker.state().state == CLOSED
    fail(breaker)  # 3 of 5
    assert breaker.state().state == CLOSED
    fail(breaker)  # 4 of 6 = 0.67 < 0.75
    assert breaker.state().state == CLOSED
    fail(breaker)  # 5 of 7 = 0.71
    fail(breaker)  # 6 of 8 = 0.75
    assert breaker.state().state == OPEN


def test_failures_older_than_the_window_do_not_count(make_breaker):
    breaker = make_breaker(window_seconds=1, min_calls=4)
    fail(breaker, 3)
    time.sleep(2.1)
    fail(breaker)
    assert breaker.state().state == CLOSED


def test_fails_fast_while_open(make_breaker):
    breaker = make_breaker()
    open_breaker(breaker)
    calls = []
    with pytest.raises(ServiceCircuitOpen) as raised:
        breaker.call(lambda: calls.append(1))
    assert calls == []
    assert isinstance(raised.value, GatewayUnavailable)  # code that handles an outage handles this too
    assert 29 < raised.value.retry_after <= 30
    assert raised.value.retry_after == pytest.approx(breaker.state().retry_in_seconds, abs=0.5)


def test_half_open_lets_exactly_one_probe_through_then_closes_on_success(make_breaker):
    breaker = make_breaker(cool_off_seconds=0.3)
    open_breaker(breaker)
    time.sleep(0.4)
    racers = 12
    start = threading.Barrier(racers)
    probes, turned_away, lock = [], [], threading.Lock()

    def slow_probe():
        with lock:
            probes.append(threading.get_ident())
        time.sleep(0.5)
        return "ok"

    def race():
        start.wait()
        try:
            breaker.call(slow_probe)
        except ServiceCircuitOpen as exc:
            with lock:
                turned_away.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(probes) == 1
    assert len(turned_away) == racers - 1 and all(exc.probing for exc in turned_away)
    assert breaker.state().state == CLOSED
    assert breaker.call(ok) == "ok"
    assert breaker.state().opened_at is None


def test_a_failed_probe_reopens_it_for_another_cool_off(make_breaker):
    breaker = make_breaker(cool_off_seconds=0.3)
    open_breaker(breaker)
    down_since = breaker.state().opened_at
    time.sleep(0.4)
    fail(breaker)  # the probe
    state = breaker.state()
    assert state.state == OPEN and state.opened_at == down_since  # still down since the first opening
    assert 0.1 < state.retry_in_seconds <= 0.3
    with pytest.raises(ServiceCircuitOpen):
        breaker.call(ok)


def test_a_probe_lost_with_its_worker_lets_another_probe_after_its_lease(make_breaker):
    breaker = make_breaker(cool_off_seconds=0.2, probe_timeout_seconds=0.5)
    open_breaker(breaker)
    time.sleep(0.3)
    permit = breaker._acquire()  # a worker takes the probe and dies before answering
    assert permit.decision == "probe"
    assert breaker.state().state == HALF_OPEN
    with pytest.raises(ServiceCircuitOpen):
        breaker.call(ok)
    time.sleep(0.6)
    assert breaker.call(ok) == "ok"
    assert breaker.state().state == CLOSED


def test_the_state_is_shared_with_another_process(make_breaker):
    breaker = make_breaker()
    open_breaker(breaker)
    script = f"""
import json, django
django.setup()
from orders.circuit_breaker import BreakerConfig, CircuitBreaker
from orders.errors import ServiceCircuitOpen
breaker = CircuitBreaker({breaker.name!r}, config=BreakerConfig(**{json.dumps(breaker.config.__dict__)}))
try:
    breaker.call(lambda: None)
    print(json.dumps({{"called": True}}))
except ServiceCircuitOpen as exc:
    print(json.dumps({{"called": False, "retry_after": exc.retry_after, "detail": exc.waiting_detail}}))
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["called"] is False and 25 < seen["retry_after"] <= 30
    assert "down (circuit open), next probe in" in seen["detail"]


def test_redis_down_fails_open_and_logs(make_breaker, settings, caplog):
    settings.CIRCUIT_BREAKER_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    breaker = make_breaker(min_calls=1)
    with caplog.at_level(logging.WARNING, logger="orders.circuit_breaker"):
        fail(breaker, 3)
        assert breaker.call(ok) == "ok"
    assert "Redis unavailable, letting calls through unguarded" in caplog.text
    assert breaker.state().state == CLOSED


def test_disabled_breaker_never_touches_redis(make_breaker, settings):
    settings.CIRCUIT_BREAKER_ENABLED = False
    breaker = make_breaker(min_calls=1)
    fail(breaker, 3)
    assert breaker.call(ok) == "ok"


def test_guarded_adapter_passes_every_public_method_through_the_breaker(make_breaker):
    breaker = make_breaker(min_calls=2)

    class Gateway:
        label = "sandbox"

        def charge(self, amount):
            return f"charged {amount}"

        def charge_lookup(self, key):  # methods added later are guarded too
            raise GatewayUnavailable("lookup timed out")

    gateway = BreakerGuarded(Gateway(), breaker)
    assert gateway.charge(5) == "charged 5" and gateway.label == "sandbox"
    for _ in range(3):
        with pytest.raises(GatewayUnavailable):
            gateway.charge_lookup("k")
    with pytest.raises(ServiceCircuitOpen):
        gateway.charge(5)
