from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """The fake outside world for dev and tests: a payment gateway, a carrier and a mailer
    that fail on demand. Installed only when settings.SANDBOX_ENABLED is on, so its tables
    are never in the production schema; nothing under orders/ imports it."""

    name = "sandbox"
    verbose_name = "Sandbox (dev and tests)"
    default_auto_field = "django.db.models.BigAutoField"
