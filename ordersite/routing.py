"""Websocket routes of every app."""

from orders.routing import websocket_urlpatterns as orders_ws
from ops.routing import websocket_urlpatterns as ops_ws

websocket_urlpatterns = [*orders_ws, *ops_ws]
