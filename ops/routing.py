from django.urls import path

from .consumers import OpsDashboardConsumer
from .consumers_background import StallFlagsConsumer

websocket_urlpatterns = [
    path("ws/ops/", OpsDashboardConsumer.as_asgi()),
    # The dashboard's flagged-sagas card (ops.stalls), on its own socket.
    path("ws/ops/background/flags/", StallFlagsConsumer.as_asgi()),
]
