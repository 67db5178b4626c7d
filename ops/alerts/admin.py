"""The admin's read-only lists of alert incidents and of the messages sent about them, with
the settings alerts run with shown above the incidents (configuration is the environment's).

Imported by ops/admin.py (Django autodiscovers only that module).
"""

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin

from ..admin import ViewOnlyAdmin
from ..models import AlertIncident, AlertMessage

class IncidentStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "open"), ("resolved", "resolved")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at=None)
        if self.value() == "resolved":
            return queryset.exclude(resolved_at=None)
        return queryset


def _alert_settings() -> list[tuple[str, str]]:
    """What the alerts run with: configured in the environment (ordersite/settings.py), shown
    here so staff can see where messages go without reading the deployment."""
    return [
        ("ALERTS_ENABLED", "on" if settings.ALERTS_ENABLED else "off"),
        ("ALERTS_WEBHOOK_URL", _webhook_shown(settings.ALERTS_WEBHOOK_URL)),
        ("ALERTS_EMAIL_TO", ", ".join(settings.ALERTS_EMAIL_TO) or "not set"),
        ("ALERTS_INTERVAL_SECONDS", f"{settings.ALERTS_INTERVAL_SECONDS:g}"),
        ("ALERTS_REPEAT_MINUTES", f"{settings.ALERTS_REPEAT_MINUTES:g}"),
        ("ALERTS_MAX_PER_HOUR", str(settings.ALERTS_MAX_PER_HOUR)),
        ("ALERTS_FOLLOWUP_AGE_MINUTES", f"{settings.ALERTS_FOLLOWUP_AGE_MINUTES:g}"),
        ("PUBLIC_BASE_URL", settings.PUBLIC_BASE_URL),
    ]


def _webhook_shown(url: str) -> str:
    # A chat webhook's path is its secret (anyone holding it can post): show the host only.
    if not url:
        return "not set"
    return f"{urlsplit(url).scheme}://{urlsplit(url).netloc}/… (path hidden)"


@admin.register(AlertIncident)
class AlertIncidentAdmin(ViewOnlyAdmin):
    """Incidents the alerts check opened; they resolve themselves when the condition clears."""

    list_display = ["opened_at", "kind", "title", "order", "sends", "last_sent_at", "resolved_at"]
    list_filter = [IncidentStateFilter, "kind", "opened_at"]
    search_fields = ["title", "key", "order__number"]
    list_select_related = ["order"]
    show_full_result_count = False
    fields = readonly_fields = [
        "kind", "key", "order", "title", "detail", "url", "opened_at", "last_seen_at", "last_sent_at", "sends",
        "resolved_at",
    ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "alert_settings": _alert_settings()})


@admin.register(AlertMessage)
class AlertMessageAdmin(ViewOnlyAdmin):
    """The outbox: each message, and whether each channel took it (a pending one is retried)."""

    list_display = ["created_at", "subject", "summary", "webhook_state", "email_state", "attempts", "sent_at"]
    list_filter = ["webhook_state", "email_state", "summary", "created_at"]
    search_fields = ["subject"]
    show_full_result_count = False
    fields = readonly_fields = [
        "created_at", "summary", "subject", "text", "blocks", "webhook_state", "email_state", "attempts",
        "last_error", "sent_at",
    ]
