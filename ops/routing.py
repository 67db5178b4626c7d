from django.urls import path

from .consumers import OpsDashboardConsumer

websocket_urlpatterns = [
    path("ws/ops/", OpsDashboardConsumer.as_asgi()),
]
