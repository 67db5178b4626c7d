"""The sandbox's switch in the admin. (The admin of orders, products, follow-ups and the
audit log is a staff surface: ops.admin.)"""

from django.contrib import admin

from .models import SandboxOutage


@admin.register(SandboxOutage)
class SandboxOutageAdmin(admin.ModelAdmin):
    """Demo switch: a sandbox service (payment, shipping) fails every call until cleared."""

    list_display = ["service", "active"]
    list_editable = ["active"]
