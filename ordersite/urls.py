from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from orders.webhooks import carrier_webhook_view

from . import health, metrics_http

urlpatterns = [
    # Probes and Prometheus: public URLs (ordersite/health.py, metrics_http.py say why).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_http.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("orders/", include("ops.order_pages.urls")),
    path("status/", include("orders.urls_customer")),
    # Public, signed by the carrier (orders/webhooks.py says why it needs no login).
    path("webhooks/carrier/", carrier_webhook_view, name="carrier_webhook"),
    path("ops/background/", include("ops.urls_background")),
    path("", include("ops.urls")),
]
