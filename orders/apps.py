from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .services.returns import on_parcel_returned
        from .signals import parcel_returned

        # A parcel back at the shop (carrier webhook or staff) wakes the return waiting for it.
        parcel_returned.connect(on_parcel_returned, dispatch_uid="returns.on_parcel_returned")
