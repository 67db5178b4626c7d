"""A health probe for the processes that serve no pages (docker-compose healthchecks).

    manage.py worker_health worker    # the Temporal worker answers on WORKER_METRICS_ADDRESS
    manage.py worker_health celery    # the Celery worker answers on CELERY_METRICS_ADDRESS

Each process serves its metrics from its main process's own thread, so an answer means the
process is up (and, for Celery, that its worker_init ran). Exit 0 healthy, 1 not, 2 when
there is nothing to probe (metrics off or no address).
"""

import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand

from orders.metrics import parse_address

KINDS = {"worker": ("WORKER_METRICS_ADDRESS", 9101), "celery": ("CELERY_METRICS_ADDRESS", 9103)}


class Command(BaseCommand):
    help = "Probe a Temporal worker or Celery worker on its metrics port (exit 0 when it answers)."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=sorted(KINDS))
        parser.add_argument("--address", help="host:port to probe (default: the kind's setting)")
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds (default HEALTH_CHECK_TIMEOUT_SECONDS)")

    def handle(self, *args, kind: str, address: str | None, timeout: float | None, **options):
        setting, default_port = KINDS[kind]
        address = address if address is not None else getattr(settings, setting)
        if not (settings.METRICS_ENABLED and address):
            self.stderr.write(f"Nothing to probe: metrics are off or {setting} is empty.")
            raise SystemExit(2)
        host, port = parse_address(address, default_port)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # bound to every interface: loopback is one of them
        url = f"http://{host}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout or settings.HEALTH_CHECK_TIMEOUT_SECONDS) as response:
                healthy = response.status == 200 and b"ordersite_" in response.read()
        except OSError as exc:
            self.stderr.write(f"{kind} unhealthy: no answer at {url} ({exc})")
            raise SystemExit(1)
        if not healthy:
            self.stderr.write(f"{kind} unhealthy: {url} did not serve the app's metrics")
            raise SystemExit(1)
        self.stdout.write(f"{kind} healthy ({url})")
