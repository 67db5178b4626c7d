from django.urls import path

from .views import customer_status_view

app_name = "customer"
urlpatterns = [
    path("<str:token>/", customer_status_view, name="status"),
]
