"""/orders/...: the staff order pages, in the `orders` URL namespace (orders:list,
orders:detail, ...), which they had before they moved to ops."""

from django.urls import path

from .views.actions import order_action_view
from .views.create import (
    order_create_line_view,
    order_create_validate_view,
    order_create_view,
)
from .views.detail import order_detail_view
from .views.list import order_list_view
from .views.returns import refund_open_view, return_command_view, return_open_view, return_received_view

app_name = "orders"
urlpatterns = [
    path("", order_list_view, name="list"),
    path("new/", order_create_view, name="create"),
    path("new/validate/", order_create_validate_view, name="create_validate"),
    path("new/line/", order_create_line_view, name="create_line"),
    path("<int:pk>/", order_detail_view, name="detail"),
    path("<int:pk>/actions/<str:action>/", order_action_view, name="action"),
    path("<int:pk>/returns/", return_open_view, name="return_open"),
    path("<int:pk>/returns/received/", return_received_view, name="return_received"),
    path("<int:pk>/returns/<int:return_id>/<str:action>/", return_command_view, name="return_command"),
    path("<int:pk>/refunds/", refund_open_view, name="refund_open"),
]
