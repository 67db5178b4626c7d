from django.urls import path

from .consumers import OpsDashboardConsumer
from .consumers_background import StallFlagsConsumer
from .order_pages.consumers import OrderDetailConsumer, OrderListConsumer

websocket_urlpatterns = [
    path("ws/orders/", OrderListConsumer.as_asgi()),
    path("ws/orders/<int:pk>/", OrderDetailConsumer.as_asgi()),
    path("ws/ops/", OpsDashboardConsumer.as_asgi()),
    # The dashboard's flagged-sagas card (ops.stalls), on its own socket.
    path("ws/ops/background/flags/", StallFlagsConsumer.as_asgi()),
]
