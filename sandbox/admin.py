"""The sandbox's admin: the outage switch, so a demo can show a stuck saga and its rescue."""

from django import forms
from django.contrib import admin

from .models import OUTAGE_SERVICES, SandboxOutage


class SandboxOutageForm(forms.ModelForm):
    class Meta:
        model = SandboxOutage
        fields = ["service", "active"]
        error_messages = {
            "service": {
                "invalid_choice": (
                    "Unknown sandbox service %(value)s: an outage can switch off "
                    + ", ".join(OUTAGE_SERVICES) + "."
                ),
            },
        }


@admin.register(SandboxOutage)
class SandboxOutageAdmin(admin.ModelAdmin):
    """Demo switch: a sandbox service (payment, shipping) fails every call until cleared."""

    form = SandboxOutageForm
    list_display = ["service", "active"]
    list_editable = ["active"]
