from django.urls import path

from .consumers import CustomerStatusConsumer, OrderDetailConsumer, OrderListConsumer

websocket_urlpatterns = [
    path("ws/orders/", OrderListConsumer.as_asgi()),
    path("ws/orders/<int:pk>/", OrderDetailConsumer.as_asgi()),
    path("ws/status/<str:token>/", CustomerStatusConsumer.as_asgi()),
]
