from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self):
        # Celery tasks counted by name and state in whichever process runs them (ops/metrics.py).
        from .metrics import celery_signals_connect

        celery_signals_connect()

        from . import signals

        signals.connect()
