"""Date filters of the staff pages: a day is [its start, the next day's start) in local time."""

from datetime import date, datetime, time

from django.utils import timezone


def day_start(day: date) -> datetime:
    """Midnight at the start of `day`, in the current time zone (filter on the column's index,
    not on created_at__date)."""
    return timezone.make_aware(datetime.combine(day, time.min))
