from django.urls import path

from . import views_background as views

app_name = "background"
urlpatterns = [
    path("flags/", views.flags, name="flags"),
    path("flags/sweep/", views.sweep_now, name="sweep_now"),
    # POST: the stuck queue's bulk form (action, order_ids or step, reason); GET: recent operations.
    path("bulk/", views.bulk_operations, name="bulk_create"),
    path("bulk/", views.bulk_operations, name="bulk_list"),
    path("bulk/<int:pk>/", views.bulk_detail, name="bulk_detail"),
    path("reconciliation/", views.reconciliation_list, name="reconciliation_list"),
    path("reconciliation/run/", views.reconciliation_request, name="reconciliation_request"),
    path("reconciliation/<int:pk>/", views.reconciliation_detail, name="reconciliation_detail"),
]
