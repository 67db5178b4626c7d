"""Settings for every process (web, Temporal worker, Celery), read from the environment.

Defaults run on a laptop with nothing installed but Python: SQLite in var/, an embedded
Redis started by the run command, and a Temporal dev server on localhost:7233.
"""

import logging
import os
import zoneinfo
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ORDERSITE_VAR_DIR", BASE_DIR / "var"))
# SQLite files, sent emails and the dev servers' state live here; a fresh clone has none.
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


# Which kind of process this is. Production is the default, so a deployment that forgets to
# say anything gets DEBUG off and every check below; `make run` (scripts/run_dev.py) says
# development, tests/settings.py says test, and the bench scripts say what they need.
DJANGO_ENVS = ("production", "development", "test")
DJANGO_ENV = os.environ.get("DJANGO_ENV", "").strip().lower() or "production"
if DJANGO_ENV not in DJANGO_ENVS:
    raise ImproperlyConfigured(f"DJANGO_ENV={DJANGO_ENV!r}: choose one of {', '.join(DJANGO_ENVS)} (production if unset).")

_DEV_SECRET_KEY = "dev-only-insecure-key-change-me"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", DJANGO_ENV != "production")
if DEBUG and DJANGO_ENV == "production":
    # Tracebacks with settings and local variables to anyone who finds an error page.
    raise ImproperlyConfigured(
        "DEBUG is on with DJANGO_ENV=production (the default): unset DEBUG, or set "
        "DJANGO_ENV=development on a developer's machine."
    )
if not DEBUG and (len(SECRET_KEY) < 50 or "insecure" in SECRET_KEY):
    # Sessions, password resets and signed tokens rest on it: a known or guessable key is
    # a skeleton key to every staff account.
    raise ImproperlyConfigured(
        f"DEBUG is off (DJANGO_ENV={DJANGO_ENV}), so SECRET_KEY must be set to a long random value of your own "
        "(50+ characters; not a default): python -c 'import secrets; print(secrets.token_urlsafe(50))'. "
        "On a developer's machine set DJANGO_ENV=development instead (make run does)."
    )
SECRET_KEY = SECRET_KEY or _DEV_SECRET_KEY
# The sandbox app (sandbox/): a fake payment gateway, carrier and mailer with their books,
# for dev, tests and demos. Off, it is not installed and its tables are not in the schema.
SANDBOX_ENABLED = env_bool("SANDBOX_ENABLED", DEBUG)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "orders",
    "ops",
    "axes",  # login throttling and lockout (settings block "login throttling" below)
    "csp",  # the Content-Security-Policy header (settings block "content security policy")
]
if SANDBOX_ENABLED:
    INSTALLED_APPS.append("sandbox")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "ordersite.metrics_http.RequestMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "ordersite.urls"
ASGI_APPLICATION = "ordersite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        # Workers set this (the run command and docker-compose do): an activity that opens
        # a fresh Postgres connection pays several ms for it, ten times per saga.
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Activities write from several threads: IMMEDIATE transactions serialise writers
    # (so stock checks cannot race) and WAL lets the pages read meanwhile.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so that activity threads see the test's rows.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's full set: staff passwords open refunds and cancellations.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# TIME_ZONE is the shop's (SHOP_TIME_ZONE, below, with the shop's date format).
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"

# --- redis: channel layer and celery broker --------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# The pub/sub layer: group_send is one PUBLISH, with no per-channel queues to poll; the
# core layer fell over under hundreds of sockets in a trial here (see DESIGN.md).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Live updates: messages a process may hold for the channel layer before it drops the
# oldest (counted and logged at most every BROADCAST_DROP_LOG_SECONDS).
BROADCAST_QUEUE_MAX = int(os.environ.get("BROADCAST_QUEUE_MAX", "10000"))
BROADCAST_DROP_LOG_SECONDS = env_float("BROADCAST_DROP_LOG_SECONDS", 10)
# An open socket asks at least this often whether its session and permissions still hold
# (orders.live.LiveConsumer); sign-outs and changes to a user close theirs at once anyway.
SOCKET_ACCESS_CHECK_SECONDS = env_float("SOCKET_ACCESS_CHECK_SECONDS", 2)
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True

# Background operations (ops.tasks): the stalled-saga sweeper, reconciliation, bulk actions.
# A saga is stalled when its order is pending/running/compensating and has recorded no
# saga event for this long; only those are described in Temporal.
SWEEPER_INTERVAL_SECONDS = env_float("SWEEPER_INTERVAL_SECONDS", 60)
SWEEPER_STALL_SECONDS = env_float("SWEEPER_STALL_SECONDS", 120)
# A flagged saga is described again at most this often (its flag's detail stays current).
SWEEPER_RECHECK_SECONDS = env_float("SWEEPER_RECHECK_SECONDS", 55)
# Upper bound on describes per sweep, so an outage with thousands of quiet sagas stays cheap.
SWEEPER_MAX_DESCRIBES = int(os.environ.get("SWEEPER_MAX_DESCRIBES", "200"))
SWEEPER_DESCRIBE_CONCURRENCY = int(os.environ.get("SWEEPER_DESCRIBE_CONCURRENCY", "20"))
SWEEPER_TEMPORAL_TIMEOUT_SECONDS = env_float("SWEEPER_TEMPORAL_TIMEOUT_SECONDS", 60)
# Temporal remembers a poller for minutes after it stops; only pollers seen this recently count.
SWEEPER_POLLER_FRESH_SECONDS = env_float("SWEEPER_POLLER_FRESH_SECONDS", 90)
# A pending order with no workflow at all (Temporal was down when it was placed) is started.
SWEEPER_RESTART_UNSTARTED = env_bool("SWEEPER_RESTART_UNSTARTED", True)
SWEEPER_HISTORY_SECONDS = env_float("SWEEPER_HISTORY_SECONDS", 24 * 3600)
SWEEPER_DASHBOARD_FLAGS = int(os.environ.get("SWEEPER_DASHBOARD_FLAGS", "10"))
RECONCILIATION_HOUR_UTC = int(os.environ.get("RECONCILIATION_HOUR_UTC", "3"))
# Orders that changed this recently are skipped by the workflow checks (visibility lags).
RECONCILIATION_GRACE_SECONDS = env_float("RECONCILIATION_GRACE_SECONDS", 300)
RECONCILIATION_MAX_PER_KIND = int(os.environ.get("RECONCILIATION_MAX_PER_KIND", "500"))
BULK_MAX_ORDERS = int(os.environ.get("BULK_MAX_ORDERS", "2000"))
# A bulk form posts one field per order: let twice the limit through, so a selection over
# it gets the bulk action's own message instead of Django's bare "too many fields" 400.
DATA_UPLOAD_MAX_NUMBER_FIELDS = max(1000, 2 * BULK_MAX_ORDERS + 100)

# The schedule is fixed in code, so beat's own file scheduler is enough (no django-celery-beat).
from celery.schedules import crontab  # noqa: E402  (kept with the schedule that uses it)

CELERY_BEAT_SCHEDULE: dict = {
    "stalled-saga-sweeper": {
        "task": "ops.tasks.stalled_saga_sweep",
        "schedule": SWEEPER_INTERVAL_SECONDS,
        # A sweep left queued past the next one is pointless: drop it.
        "options": {"expires": SWEEPER_INTERVAL_SECONDS * 0.9},
    },
    "nightly-reconciliation": {
        "task": "ops.tasks.reconciliation_nightly",
        "schedule": crontab(hour=RECONCILIATION_HOUR_UTC, minute=15),
        "options": {"expires": 3 * 3600},
    },
}

# --- alerts (ops.alerts): staff told by webhook and/or email when sagas need them -------------
# A Celery beat task looks for the conditions every ALERTS_INTERVAL_SECONDS; each open
# incident is sent once, again only while still open after ALERTS_REPEAT_MINUTES; at most
# ALERTS_MAX_PER_HOUR messages an hour (the rest go out as one summary). With neither
# channel set, incidents are still tracked and listed in the admin, but nothing is sent.
ALERTS_ENABLED = env_bool("ALERTS_ENABLED", True)
ALERTS_INTERVAL_SECONDS = env_float("ALERTS_INTERVAL_SECONDS", 60)
ALERTS_FOLLOWUP_AGE_MINUTES = env_float("ALERTS_FOLLOWUP_AGE_MINUTES", 60)
ALERTS_REPEAT_MINUTES = env_float("ALERTS_REPEAT_MINUTES", 240)
ALERTS_MAX_PER_HOUR = int(os.environ.get("ALERTS_MAX_PER_HOUR", "20"))
# Slack-compatible incoming webhook ({"text": ..., "blocks": [...]}, see the README).
ALERTS_WEBHOOK_URL = os.environ.get("ALERTS_WEBHOOK_URL", "")
ALERTS_WEBHOOK_TIMEOUT_SECONDS = env_float("ALERTS_WEBHOOK_TIMEOUT_SECONDS", 5)
# Comma-separated staff addresses; sent through Django's EMAIL_BACKEND.
ALERTS_EMAIL_TO = [a.strip() for a in os.environ.get("ALERTS_EMAIL_TO", "").split(",") if a.strip()]
# A message whose channel keeps failing is tried on this many runs, then kept as failed (admin).
ALERTS_SEND_MAX_ATTEMPTS = int(os.environ.get("ALERTS_SEND_MAX_ATTEMPTS", "60"))
if ALERTS_WEBHOOK_URL and not ALERTS_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"ALERTS_WEBHOOK_URL must be an http:// or https:// URL, not {ALERTS_WEBHOOK_URL!r}.")
_bad_alert_addresses = [a for a in ALERTS_EMAIL_TO if "@" not in a or " " in a]
if _bad_alert_addresses:
    raise ImproperlyConfigured(
        f"ALERTS_EMAIL_TO must be comma-separated email addresses; not addresses: {', '.join(_bad_alert_addresses)}"
    )
if ALERTS_MAX_PER_HOUR < 1:
    raise ImproperlyConfigured("ALERTS_MAX_PER_HOUR must be at least 1 (the summary message needs one).")
CELERY_BEAT_SCHEDULE["alerts-check"] = {
    "task": "ops.tasks.alerts_check",
    "schedule": ALERTS_INTERVAL_SECONDS,
    # A check left queued past the next one is pointless: drop it.
    "options": {"expires": ALERTS_INTERVAL_SECONDS * 0.9},
}

# --- temporal ---------------------------------------------------------------------------
TEMPORAL_ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
TEMPORAL_NAMESPACE = os.environ.get("TEMPORAL_NAMESPACE", "default")
TEMPORAL_UI_URL = os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233")
SAGA_TASK_QUEUE = os.environ.get("SAGA_TASK_QUEUE", "orders")
# Run workflows in Temporal's sandbox (see orders/saga/worker.py and docs/benchmarks.md).
WORKFLOW_SANDBOX = env_bool("WORKFLOW_SANDBOX", True)
PAYMENTS_TASK_QUEUE = os.environ.get("PAYMENTS_TASK_QUEUE", "payments")
# Per order worker: workflow tasks and local activities in hand at once. More than the
# process can run in its time slice only queues them in here, where a workflow task's
# clock runs (10 s), instead of in Temporal's queue for new sagas, where none does: a burst
# of 200 orders timed 9 tasks out with the SDK's 100 of each, none with 10 or 20; with 5,
# continuing sagas waited on the worker's sticky queue past its 10 s instead (17 timeouts).
# Measured by bench/saga_latency.py --burst (docs/benchmarks.md).
SAGA_WORKER_WORKFLOW_TASKS = int(os.environ.get("SAGA_WORKER_WORKFLOW_TASKS", "20"))
SAGA_WORKER_LOCAL_ACTIVITIES = int(os.environ.get("SAGA_WORKER_LOCAL_ACTIVITIES", "20"))
# The payment gateway is rate limited: at most this many charges/refunds at once per worker.
PAYMENTS_MAX_CONCURRENCY = int(os.environ.get("PAYMENTS_MAX_CONCURRENCY", "8"))
# Initial retry interval of every step; tests shorten it to keep stuck sagas quick.
SAGA_RETRY_INITIAL_SECONDS = env_float("SAGA_RETRY_INITIAL_SECONDS", 1.0)
# If set, a stuck saga with no operator decision after this many seconds compensates itself.
SAGA_STUCK_AUTO_COMPENSATE_SECONDS = env_float("SAGA_STUCK_AUTO_COMPENSATE_SECONDS", 0) or None
# Delivery tracker: how often it asks the carrier, and after how many checks it continues-as-new.
DELIVERY_CHECK_INTERVAL_SECONDS = env_float("DELIVERY_CHECK_INTERVAL_SECONDS", 6 * 3600)
DELIVERY_CHECKS_PER_RUN = int(os.environ.get("DELIVERY_CHECKS_PER_RUN", "20"))

# Circuit breakers at the payment gateway and the carrier (orders.circuit_breaker), their
# state in Redis so every worker process sees the same: open when at least MIN_CALLS calls
# in the last WINDOW seconds were made and at least FAILURE_RATIO of them failed because
# the service was down; fail fast for COOL_OFF seconds, then let one probe through.
CIRCUIT_BREAKER_ENABLED = env_bool("CIRCUIT_BREAKER_ENABLED", True)
CIRCUIT_BREAKER_WINDOW_SECONDS = int(os.environ.get("CIRCUIT_BREAKER_WINDOW_SECONDS", "60"))
CIRCUIT_BREAKER_FAILURE_RATIO = env_float("CIRCUIT_BREAKER_FAILURE_RATIO", 0.5)
CIRCUIT_BREAKER_MIN_CALLS = int(os.environ.get("CIRCUIT_BREAKER_MIN_CALLS", "10"))
# Shorter than the charge step's start-to-close (30 s), so a step can wait it out within one attempt.
CIRCUIT_BREAKER_COOL_OFF_SECONDS = env_float("CIRCUIT_BREAKER_COOL_OFF_SECONDS", 20)
# A probe that has not answered in this long is presumed lost with its worker: another may probe.
CIRCUIT_BREAKER_PROBE_TIMEOUT_SECONDS = env_float("CIRCUIT_BREAKER_PROBE_TIMEOUT_SECONDS", 35)
CIRCUIT_BREAKER_REDIS_URL = os.environ.get("CIRCUIT_BREAKER_REDIS_URL", REDIS_URL)
# Redis slower than this fails the breaker open (calls go through unguarded, logged).
CIRCUIT_BREAKER_REDIS_TIMEOUT_SECONDS = env_float("CIRCUIT_BREAKER_REDIS_TIMEOUT_SECONDS", 0.5)
CIRCUIT_BREAKER_KEY_PREFIX = os.environ.get("CIRCUIT_BREAKER_KEY_PREFIX", "ordersite:breaker")

# --- the shop -------------------------------------------------------------------------
SHOP_CURRENCY = os.environ.get("SHOP_CURRENCY", "EUR")
MAX_ORDER_TOTAL = Decimal(os.environ.get("MAX_ORDER_TOTAL", "10000.00"))
MAX_LINE_QUANTITY = int(os.environ.get("MAX_LINE_QUANTITY", "100"))
# PUBLIC_BASE_URL: with the shop's time zone, near the end (it defaults to PORT).

# External systems, as dotted paths. The sandbox's are the defaults only while it is
# installed; production names its real adapters (orders.adapters.email.EmailNotifier is one).
_SANDBOX_ADAPTERS = {
    "PAYMENT_GATEWAY": "sandbox.adapters.SandboxPaymentGateway",
    "SHIPPING_CARRIER": "sandbox.adapters.SandboxCarrier",
    "CUSTOMER_NOTIFIER": "sandbox.adapters.SandboxNotifier",
}
_adapters = {name: os.environ.get(name) or (default if SANDBOX_ENABLED else "") for name, default in _SANDBOX_ADAPTERS.items()}
if not SANDBOX_ENABLED:
    _missing = [name for name, path in _adapters.items() if not path]
    if _missing:
        raise ImproperlyConfigured(
            f"{', '.join(_missing)} not set: with SANDBOX_ENABLED off (the default when DEBUG is off) "
            "every outside adapter must be named by its dotted path, e.g. "
            "CUSTOMER_NOTIFIER=orders.adapters.email.EmailNotifier; or set SANDBOX_ENABLED=1 "
            "for a demo against the sandbox gateway and carrier."
        )
    _sandboxed = [name for name, path in _adapters.items() if path.startswith("sandbox.")]
    if _sandboxed:
        raise ImproperlyConfigured(f"{', '.join(_sandboxed)} name sandbox adapters, but SANDBOX_ENABLED is off.")
PAYMENT_GATEWAY = _adapters["PAYMENT_GATEWAY"]
SHIPPING_CARRIER = _adapters["SHIPPING_CARRIER"]
CUSTOMER_NOTIFIER = _adapters["CUSTOMER_NOTIFIER"]
# Fault injection (per-order fault plans and SANDBOX_* variables); the sandbox adapters act
# on it, so it needs the sandbox.
SANDBOX_FAULTS_ENABLED = env_bool("SANDBOX_FAULTS_ENABLED", DEBUG and SANDBOX_ENABLED)
if SANDBOX_FAULTS_ENABLED and not SANDBOX_ENABLED:
    raise ImproperlyConfigured("SANDBOX_FAULTS_ENABLED needs SANDBOX_ENABLED: fault plans act through the sandbox adapters.")
if SANDBOX_FAULTS_ENABLED and not DEBUG:
    raise ImproperlyConfigured(
        "SANDBOX_FAULTS_ENABLED is on with DEBUG off: fault injection is for dev and tests, never a deployment."
    )

# --- delivery: carrier webhook, tracker deadline (issue 8) ----------------------------------
# POST /webhooks/carrier/ is signed like Stripe's: X-Carrier-Signature: t=<unix>,v1=<hex
# HMAC-SHA256 of "<t>." + raw body, keyed with this secret>; refused when t is further than
# the tolerance from now, so a captured request cannot be replayed later.
CARRIER_WEBHOOK_SECRET = os.environ.get("CARRIER_WEBHOOK_SECRET", "")
if not DEBUG and len(CARRIER_WEBHOOK_SECRET) < 32:
    raise ImproperlyConfigured(
        "DEBUG is off, so CARRIER_WEBHOOK_SECRET must be set (32+ characters, shared with the carrier): "
        "without it anyone could tell us a parcel was delivered."
    )
CARRIER_WEBHOOK_SECRET = CARRIER_WEBHOOK_SECRET or "dev-only-carrier-webhook-secret"
CARRIER_WEBHOOK_TOLERANCE_SECONDS = int(os.environ.get("CARRIER_WEBHOOK_TOLERANCE_SECONDS", "300"))
# Each shipment's deadline: past it, an overdue follow-up; the tracker then waits this many
# more days for staff (mark delivered, report lost) or the carrier before it gives up.
DELIVERY_DEADLINE_DAYS = env_float("DELIVERY_DEADLINE_DAYS", 7)
DELIVERY_GIVE_UP_DAYS = env_float("DELIVERY_GIVE_UP_DAYS", 30)
# The sandbox carrier reports in transit, out for delivery and delivered by itself, over
# the signed webhook, this long after booking (0: never); CARRIER_WEBHOOK_URL is where it posts.
SANDBOX_CARRIER_DELIVERY_SECONDS = env_float("SANDBOX_CARRIER_DELIVERY_SECONDS", 30 if DEBUG else 0)
if SANDBOX_ENABLED and SANDBOX_CARRIER_DELIVERY_SECONDS:
    CELERY_BEAT_SCHEDULE["sandbox-carrier-report"] = {
        "task": "sandbox.carrier_report",
        "schedule": max(2.0, min(10.0, SANDBOX_CARRIER_DELIVERY_SECONDS / 6)),
        "options": {"expires": 30},
    }

# --- returns and refunds (orders.services.returns, orders.saga.return_saga) ---------------
# How long a return waits for its parcel before it closes without a refund.
RETURN_PARCEL_DEADLINE_SECONDS = env_float("RETURN_PARCEL_DEADLINE_SECONDS", 14 * 24 * 3600)
# What a return refunds for shipping when staff tick "include shipping" (orders carry no
# shipping fee of their own yet); never more than was charged (the order's CHECK).
RETURN_SHIPPING_REFUND_AMOUNT = Decimal(os.environ.get("RETURN_SHIPPING_REFUND_AMOUNT", "4.90"))

# --- HTTPS (deployments: DEBUG off) ---------------------------------------------------------
# On by default once DEBUG is off, so `manage.py check --deploy` is clean; a local trial over
# plain http (docker-compose.yml) turns them off explicitly. Behind a TLS-terminating proxy,
# SECURE_PROXY_SSL_HEADER=1 trusts its X-Forwarded-Proto.
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- content security policy (django-csp) -----------------------------------------------
# Everything from our own origin, nothing inline: no inline <script>, no on*= or hx-on
# handlers, no style= attributes (static/js, static/css hold them), and htmx configured in
# base.html to need no eval and inject no styles. Enforced in every environment, so a page
# that breaks it breaks in development and in the browser tests (tests/browser/test_csp_browser.py)
# first. 'self' covers the pages' websockets (ws/wss to the same host) in current browsers.
from csp.constants import NONE, SELF  # noqa: E402  (kept with the policy that uses them)

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- login throttling (django-axes) -----------------------------------------------------
# Both logins (staff /accounts/login/ and /admin/) go through Django's authenticate, which
# axes' backend guards: after AXES_FAILURE_LIMIT failures for one username from one address
# that pair is locked out for AXES_COOLOFF_MINUTES (a 429 page). Username and address
# together, so nobody can lock a colleague out from elsewhere. Every attempt and lockout is
# a row in the admin (Axes: access attempts, access logs, access failures).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_MINUTES = env_float("AXES_COOLOFF_MINUTES", 15)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(VAR_DIR / "sent_emails"))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "shop@example.com")

# --- the shop's time zone, date format and public address (issue 11, page fixes) -------------
# Times on the pages are shown in the shop's zone (Django's TIME_ZONE; stored in UTC), dates
# are typed the shop's way (ISO yyyy-mm-dd is always accepted too), and links in emails
# point at the port the app really runs on.
SHOP_TIME_ZONE = os.environ.get("SHOP_TIME_ZONE", "Europe/Berlin")
try:
    zoneinfo.ZoneInfo(SHOP_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"SHOP_TIME_ZONE={SHOP_TIME_ZONE!r} is not a time zone: use an IANA name such as Europe/Berlin or UTC."
    ) from None
TIME_ZONE = SHOP_TIME_ZONE
# Celery's schedules (RECONCILIATION_HOUR_UTC) stay in UTC whatever the shop's zone.
CELERY_TIMEZONE = "UTC"
SHOP_DATE_INPUT_FORMATS = {"dd.mm.yyyy": "%d.%m.%Y", "yyyy-mm-dd": "%Y-%m-%d"}
SHOP_DATE_INPUT_FORMAT = os.environ.get("SHOP_DATE_INPUT_FORMAT", "dd.mm.yyyy")
if SHOP_DATE_INPUT_FORMAT not in SHOP_DATE_INPUT_FORMATS:
    raise ImproperlyConfigured(
        f"SHOP_DATE_INPUT_FORMAT={SHOP_DATE_INPUT_FORMAT!r}: use one of {', '.join(SHOP_DATE_INPUT_FORMATS)}."
    )
try:
    PORT = int(os.environ.get("PORT", "8000"))
except ValueError:
    raise ImproperlyConfigured(f"PORT={os.environ['PORT']!r} is not a port number.") from None
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", f"http://localhost:{PORT}")
# Where the sandbox carrier posts its reports (the delivery settings above).
CARRIER_WEBHOOK_URL = os.environ.get("CARRIER_WEBHOOK_URL", f"{PUBLIC_BASE_URL.rstrip('/')}/webhooks/carrier/")

# --- metrics and health checks (orders/metrics.py, ops/metrics.py, README "Metrics") -------
# Off: no request metrics, no metrics ports, no Temporal SDK metrics, every recording
# helper a no-op (bench/instrumentation_cost.py measures the difference).
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
# The web process serves /metrics only to "Authorization: Bearer <METRICS_TOKEN>"; unset, 404.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# host:port each worker kind serves its own metrics on ("" = off); loopback unless configured.
WORKER_METRICS_ADDRESS = os.environ.get("WORKER_METRICS_ADDRESS", "127.0.0.1:9101")
# The Temporal SDK's own metrics (its Rust core serves them), from the same worker process.
TEMPORAL_SDK_METRICS_ADDRESS = os.environ.get("TEMPORAL_SDK_METRICS_ADDRESS", "127.0.0.1:9102")
CELERY_METRICS_ADDRESS = os.environ.get("CELERY_METRICS_ADDRESS", "127.0.0.1:9103")
# /readyz and the worker probes: how long each dependency gets to answer.
HEALTH_CHECK_TIMEOUT_SECONDS = env_float("HEALTH_CHECK_TIMEOUT_SECONDS", 2)

# --- logs and traces (ordersite/logging_config.py, ordersite/tracing.py) --------------------
# Structured logs: JSON lines when DEBUG is off or DJANGO_ENV=production, readable lines in
# dev; LOG_FORMAT=json|console chooses outright. Every line carries the request, order,
# workflow and trace ids known where it was written.
from ordersite import logging_config  # noqa: E402  (kept with the settings that use it)

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOG_JSON = logging_config.json_lines_wanted(debug=DEBUG)
LOGGING = logging_config.configure(
    json_lines=LOG_JSON, level=LOG_LEVEL, temporalio_level=os.environ.get("LOG_LEVEL_TEMPORALIO", "WARNING").upper()
)
# Request id, user and ip bound on every request's lines (and handed on to the Celery tasks
# it queues); the request's end is logged once, by status (a 4xx at warning, without traceback).
INSTALLED_APPS.append("django_structlog")
MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
                  "django_structlog.middlewares.RequestMiddleware")
DJANGO_STRUCTLOG_CELERY_ENABLED = True
# One line per request (request_finished has the method, path, status, user and request id);
# its request_started twin only at DEBUG.
DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL = logging.DEBUG
# Traces: OpenTelemetry over OTLP/HTTP, only when OTEL_EXPORTER_OTLP_ENDPOINT is set (the
# exporter reads it and the other standard OTEL_* variables itself); off, nothing is installed.
OTEL_SERVICE_NAME = os.environ.get("OTEL_SERVICE_NAME", "ordersite")
TRACING_ENABLED = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
