from django.urls import path

from . import views

app_name = "ops"
urlpatterns = [
    path("", views.home, name="home"),
    path("ops/stuck/", views.stuck, name="stuck"),
    path("ops/followups/", views.followups, name="followups"),
    path("ops/followups/<int:pk>/", views.followup_row, name="followup_row"),
    path("ops/followups/<int:pk>/claim/", views.followup_claim_view, name="followup_claim"),
    path("ops/followups/<int:pk>/release/", views.followup_release_view, name="followup_release"),
    path("ops/followups/<int:pk>/notes/", views.followup_note_add_view, name="followup_note_add"),
    path("ops/audit/", views.audit, name="audit"),
]
