from django.urls import path

from .consumers import CustomerStatusConsumer

# Staff sockets: ops.routing.
websocket_urlpatterns = [
    path("ws/status/<str:token>/", CustomerStatusConsumer.as_asgi()),
]
