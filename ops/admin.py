"""The audit log in the admin: read-only, since an audit log that can be edited proves nothing."""

from django.contrib import admin

from orders.admin import ViewOnlyAdmin

from .models import OperatorAction


@admin.register(OperatorAction)
class OperatorActionAdmin(ViewOnlyAdmin):
    list_display = ["created_at", "action", "order", "actor", "outcome", "short_reason"]
    list_filter = ["action", "outcome", "created_at"]
    search_fields = ["order__number", "actor__username", "reason"]
    list_select_related = ["order", "actor"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = readonly_fields = [
        "created_at", "updated_at", "order", "action", "actor", "reason", "outcome", "outcome_detail",
    ]

    @admin.display(description="Reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"
