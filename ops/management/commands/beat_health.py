"""A health probe for Celery beat (docker-compose healthcheck): the stalled-saga sweeper,
which beat schedules every SWEEPER_INTERVAL_SECONDS, has started a run recently.

Beat serves nothing to ask, so this checks what it is for: a recent SweepRun row means beat
scheduled and a Celery worker ran the sweep. Exit 0 healthy, 1 not.
"""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from ops.models import SweepRun


class Command(BaseCommand):
    help = "Exit 0 when the stalled-saga sweeper has run within three intervals (at least 5 minutes)."

    def handle(self, *args, **options):
        allowed = timedelta(seconds=max(3 * settings.SWEEPER_INTERVAL_SECONDS, 300))
        last = SweepRun.objects.order_by("-started_at").values_list("started_at", flat=True).first()
        if last is None or timezone.now() - last > allowed:
            when = "never" if last is None else f"{(timezone.now() - last).total_seconds():.0f} s ago"
            self.stderr.write(f"beat unhealthy: the sweeper last ran {when} (allowed: {allowed.total_seconds():.0f} s)")
            raise SystemExit(1)
        self.stdout.write(f"beat healthy: the sweeper ran {(timezone.now() - last).total_seconds():.0f} s ago")
