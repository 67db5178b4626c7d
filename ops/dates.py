"""Date filters of the staff pages: a day is [its start, the next day's start) in local time."""

from datetime import date, datetime, time

from django import forms
from django.conf import settings
from django.utils import timezone


def day_start(day: date) -> datetime:
    """Midnight at the start of `day`, in the current time zone (filter on the column's index,
    not on created_at__date)."""
    return timezone.make_aware(datetime.combine(day, time.min))


def shop_date_field(label: str) -> forms.DateField:
    """A date typed the shop's way (SHOP_DATE_INPUT_FORMAT, e.g. dd.mm.yyyy), ISO accepted too.
    A text box, not type=date: the browser's date picker follows the browser's locale
    (mm/dd/yyyy in en-US), not the shop's."""
    shown = settings.SHOP_DATE_INPUT_FORMAT
    typed = settings.SHOP_DATE_INPUT_FORMATS[shown]
    return forms.DateField(
        label=label, required=False, input_formats=[typed, "%Y-%m-%d"],
        error_messages={"invalid": f"Enter a date as {shown}."},
        widget=forms.DateInput(format=typed, attrs={"placeholder": shown, "inputmode": "numeric", "size": 10,
                                                    "autocomplete": "off"}),
    )
