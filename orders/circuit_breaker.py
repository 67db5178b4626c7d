"""Circuit breakers in front of the payment gateway and the carrier, shared by every process.

When most calls in a sliding window fail because the service is down (GatewayUnavailable,
a timeout), the breaker opens: calls fail fast with ServiceCircuitOpen, which tells the
saga how long to wait, instead of burning its attempts. The call that opens it and a
failed probe raise ServiceCircuitOpen too (from the service's error): from then on the
outage is the service's, not any one saga's. After the cool-off ONE call is let
through as a probe (half-open): its success closes the breaker, its failure reopens it for
another cool-off. Declines and refusals are answers, so they count as successes; any other
error (our own database, a bug) counts as neither.

Why not pybreaker (1.4.x, with CircuitRedisStorage): it trips on `fail_max` consecutive
failures, not on a failure ratio over a window with a minimum number of calls; and its
Redis storage moves open -> half-open with a plain GET then SET and lets every call
through while half-open, so several workers probe a service that is down at once. Here
each transition is one Lua script in Redis (atomic, on Redis's own clock), and the probe
is a lease held by one caller's token; a caller that died while probing loses the lease
after CIRCUIT_BREAKER_PROBE_TIMEOUT_SECONDS and the next caller probes.

Redis down or slow: the breaker fails open (calls go through) and logs, at most once per
breaker every few seconds; it never blocks a saga.

Keys (prefix CIRCUIT_BREAKER_KEY_PREFIX): `<prefix>:<name>` a hash (state, opened_at,
retry_at, probe_until, probe_token, last_error), `<prefix>:<name>:window` per-second call
and failure counts, `<prefix>:<name>:waiting` the orders waiting on it (for the dashboard).
"""

import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from django.conf import settings

from .errors import GatewayUnavailable, OrderError, ServiceCircuitOpen

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# What each breaker guards, as staff call it.
SERVICE_LABELS = {"payment": "Payment gateway", "shipping": "Carrier"}

# After Redis failed, skip it for this long (calls go straight through) instead of paying
# a connection timeout on every call.
REDIS_RETRY_AFTER_SECONDS = 5.0
# In half-open with a probe in flight, callers are told to come back this soon at most:
# the probe usually answers in well under a second.
HALF_OPEN_RECHECK_SECONDS = 2.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: state. ARGV: probe lease seconds, token.
# Returns {decision, seconds to wait, state}: allow | probe | reject.
_ACQUIRE = _NOW + """
local st = redis.call('HMGET', KEYS[1], 'state', 'retry_at', 'probe_until')
local state = st[1] or 'closed'
if state == 'closed' then return {'allow', '0', state} end
if state == 'open' then
  local retry_at = tonumber(st[2]) or 0
  if now < retry_at then return {'reject', tostring(retry_at - now), state} end
else
  local probe_until = tonumber(st[3]) or 0
  if now < probe_until then return {'reject', tostring(probe_until - now), state} end
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', tostring(now + tonumber(ARGV[1])),
           'probe_token', ARGV[2])
return {'probe', '0', 'half_open'}
"""

# KEYS: state, window, waiting. ARGV: outcome (success | failure | neither), probe token or '',
# window seconds, minimum calls, failure ratio, cool-off seconds, error text.
# Returns the state after the call.
_RECORD = _NOW + """
local outcome, token = ARGV[1], ARGV[2]
local window, min_calls, ratio, cool_off = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if token ~= '' and redis.call('HGET', KEYS[1], 'probe_token') == token then
  if outcome == 'success' then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return 'closed'
  elseif outcome == 'failure' then
    redis.call('HSET', KEYS[1], 'state', 'open', 'retry_at', tostring(now + cool_off), 'probe_until', '0',
               'probe_token', '', 'last_error', ARGV[7])
    return 'open'
  end
  redis.call('HSET', KEYS[1], 'probe_until', '0', 'probe_token', '')
  return 'half_open'
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if outcome == 'neither' then return state end
local second = math.floor(now)
redis.call('HINCRBY', KEYS[2], second .. ':c', 1)
if outcome == 'failure' then redis.call('HINCRBY', KEYS[2], second .. ':f', 1) end
redis.call('PEXPIRE', KEYS[2], math.floor((window * 2 + 1) * 1000))
if outcome ~= 'failure' or state ~= 'closed' then return state end
local counts = redis.call('HGETALL', KEYS[2])
local calls, failures = 0, 0
for i = 1, #counts, 2 do
  local bucket, kind = string.match(counts[i], '^(%d+):(%a)$')
  if tonumber(bucket) <= second - window then
    redis.call('HDEL', KEYS[2], counts[i])
  elseif kind == 'c' then
    calls = calls + tonumber(counts[i + 1])
  else
    failures = failures + tonumber(counts[i + 1])
  end
end
if calls >= min_calls and failures >= ratio * calls then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tostring(now), 'retry_at', tostring(now + cool_off),
             'probe_until', '0', 'probe_token', '', 'last_error', ARGV[7])
  redis.call('DEL', KEYS[2])
  return 'open'
end
return state
"""


@dataclass(frozen=True)
class BreakerConfig:
    window_seconds: int
    failure_ratio: float
    min_calls: int
    cool_off_seconds: float
    probe_timeout_seconds: float

    @classmethod
    def from_settings(cls) -> "BreakerConfig":
        return cls(
            window_seconds=int(settings.CIRCUIT_BREAKER_WINDOW_SECONDS),
            failure_ratio=float(settings.CIRCUIT_BREAKER_FAILURE_RATIO),
            min_calls=int(settings.CIRCUIT_BREAKER_MIN_CALLS),
            cool_off_seconds=float(settings.CIRCUIT_BREAKER_COOL_OFF_SECONDS),
            probe_timeout_seconds=float(settings.CIRCUIT_BREAKER_PROBE_TIMEOUT_SECONDS),
        )


@dataclass(frozen=True)
class BreakerState:
    """What a breaker looks like now, for the dashboard."""

    name: str
    label: str
    state: str
    opened_at: datetime | None
    retry_in_seconds: float
    waiting: int
    last_error: str

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED


@dataclass(frozen=True)
class _Permit:
    decision: str  # allow | probe | reject | unguarded (Redis down)
    wait_seconds: float
    state: str
    token: str = ""


def counts_as_failure(exc: BaseException) -> bool:
    """Only errors that mean the service is down or not answering trip the breaker."""
    return isinstance(exc, (GatewayUnavailable, TimeoutError)) and not isinstance(exc, ServiceCircuitOpen)


def _outcome_of(exc: BaseException) -> str:
    if counts_as_failure(exc):
        return "failure"
    # A decline or a refusal is the service answering: it is up.
    return "success" if isinstance(exc, OrderError) else "neither"


@dataclass(frozen=True)
class _Redis:
    client: redis.Redis
    acquire: object  # redis.commands.core.Script: EVALSHA, loading the script if Redis lost it
    record: object


_client_lock = threading.Lock()
_clients: dict[str, _Redis] = {}


def _redis_client() -> _Redis:
    """One client (a thread-safe pool) per process; redis-py renews the pool after a fork."""
    url = settings.CIRCUIT_BREAKER_REDIS_URL
    with _client_lock:
        connection = _clients.get(url)
        if connection is None:
            timeout = float(settings.CIRCUIT_BREAKER_REDIS_TIMEOUT_SECONDS)
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            connection = _Redis(client, client.register_script(_ACQUIRE), client.register_script(_RECORD))
            _clients[url] = connection
        return connection


class CircuitBreaker:
    def __init__(self, name: str, *, config: BreakerConfig | None = None):
        self.name = name
        self.label = SERVICE_LABELS.get(name, name)
        self._config = config
        self._redis_down_until = 0.0
        self._last_warning = 0.0

    @property
    def config(self) -> BreakerConfig:
        return self._config or BreakerConfig.from_settings()

    def _keys(self) -> list[str]:
        base = f"{settings.CIRCUIT_BREAKER_KEY_PREFIX}:{self.name}"
        return [base, f"{base}:window", f"{base}:waiting"]

    def _redis(self, operation):
        """Run `operation(client, keys)`, or return None (failing open) if Redis is unreachable."""
        if time.monotonic() < self._redis_down_until:
            return None
        try:
            return operation(_redis_client(), self._keys())
        except redis.RedisError as exc:
            self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_SECONDS
            if time.monotonic() - self._last_warning > REDIS_RETRY_AFTER_SECONDS:
                self._last_warning = time.monotonic()
                logger.warning("circuit breaker %s: Redis unavailable, letting calls through unguarded: %s",
                               self.name, exc)
            return None

    # --- the guarded call -----------------------------------------------------------

    def call(self, fn, *args, **kwargs):
        """Call `fn` through the breaker; raises ServiceCircuitOpen while it is open."""
        if not settings.CIRCUIT_BREAKER_ENABLED:
            return fn(*args, **kwargs)
        permit = self._acquire()
        if permit.decision == "reject":
            raise ServiceCircuitOpen(self.name, self.label, retry_after=permit.wait_seconds,
                                     probing=permit.state == HALF_OPEN)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if permit.decision == "unguarded":
                raise
            state = self._record(_outcome_of(exc) if isinstance(exc, Exception) else "neither", permit.token,
                                 error=str(exc))
            if state == OPEN and counts_as_failure(exc):
                # This call opened the circuit, or was the probe that failed: the service is
                # down, which is not this caller's failure any more than the next caller's.
                raise ServiceCircuitOpen(self.name, self.label, retry_after=self.config.cool_off_seconds) from exc
            raise
        if permit.decision != "unguarded":
            self._record("success", permit.token)
        return result

    def _acquire(self) -> _Permit:
        token = uuid.uuid4().hex
        config = self.config

        def acquire(client, keys):
            return client.acquire(keys=keys[:1], args=[config.probe_timeout_seconds, token])

        reply = self._redis(acquire)
        if reply is None:
            return _Permit("unguarded", 0.0, CLOSED)
        decision, wait, state = (part.decode() if isinstance(part, bytes) else part for part in reply)
        wait = float(wait)
        if decision == "reject" and state == HALF_OPEN:
            wait = min(wait, HALF_OPEN_RECHECK_SECONDS)
        if decision == "probe":
            logger.info("circuit breaker %s: half-open, letting one probe through", self.name)
        return _Permit(decision, wait, state, token if decision == "probe" else "")

    def _record(self, outcome: str, token: str, *, error: str = "") -> str | None:
        config = self.config

        def record(client, keys):
            return client.record(keys=keys, args=[
                outcome, token, config.window_seconds, config.min_calls, config.failure_ratio,
                config.cool_off_seconds, error[:500],
            ])

        state = self._redis(record)
        if isinstance(state, bytes):
            state = state.decode()
        if token and state == CLOSED:
            logger.warning("circuit breaker %s: probe succeeded, closed", self.name)
        elif state == OPEN and outcome == "failure":
            logger.warning("circuit breaker %s: open for %s s after: %s", self.name, config.cool_off_seconds, error)
        return state

    # --- the dashboard's view, and the sagas waiting --------------------------------

    def waiting_note(self, order_id: int) -> None:
        """An order's saga waits for this breaker (it was turned away while it was open)."""
        self._redis(lambda client, keys: client.client.zadd(keys[2], {str(order_id): time.time()}))

    def state(self) -> BreakerState:
        def read(client, keys):
            pipe = client.client.pipeline(transaction=False)
            pipe.hgetall(keys[0])
            # Orders turned away recently; one cancelled meanwhile drops out after a while.
            pipe.zcount(keys[2], time.time() - 2 * self.config.cool_off_seconds - 60, "+inf")
            pipe.time()
            return pipe.execute()

        reply = self._redis(read)
        if reply is None:
            return BreakerState(self.name, self.label, CLOSED, None, 0.0, 0, "")
        fields, waiting, (seconds, micros) = reply
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        state = fields.get("state", CLOSED)
        now = seconds + micros / 1_000_000
        opened_at = float(fields["opened_at"]) if fields.get("opened_at") else None
        retry_in = max(float(fields.get("retry_at") or 0) - now, 0.0)
        return BreakerState(
            name=self.name, label=self.label, state=state,
            opened_at=datetime.fromtimestamp(opened_at, UTC) if opened_at else None,
            retry_in_seconds=retry_in, waiting=waiting if state != CLOSED else 0,
            last_error=fields.get("last_error", ""),
        )

    def reset(self) -> None:
        """Forget everything (tests, or staff after fixing the configuration)."""
        self._redis_down_until = 0.0
        self._redis(lambda client, keys: client.client.delete(*keys))


class BreakerGuarded:
    """An adapter whose every public method goes through a breaker (charge, refund, book,
    cancel, lookups: whatever the adapter offers, now or later)."""

    def __init__(self, adapter, breaker: CircuitBreaker):
        self._adapter = adapter
        self.breaker = breaker

    def __getattr__(self, name: str):
        attr = getattr(self._adapter, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def guarded(*args, **kwargs):
            return self.breaker.call(attr, *args, **kwargs)

        return guarded

    def __repr__(self) -> str:
        return f"BreakerGuarded({self._adapter!r}, {self.breaker.name})"


BREAKERS = {name: CircuitBreaker(name) for name in SERVICE_LABELS}


def breaker_for(name: str) -> CircuitBreaker:
    return BREAKERS[name]


def breaker_states() -> list[BreakerState]:
    return [breaker.state() for breaker in BREAKERS.values()]
