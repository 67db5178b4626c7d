"""Wording of the login lockout page (templates/registration/locked_out.html)."""

from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def cooloff_minutes(cooloff: timedelta) -> str:
    minutes = max(1, round(cooloff.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
