"""Open staff sockets follow their user: a sign-out closes that session's sockets, and a
change to the user (deactivated, a role or permission taken away, a new password) makes
every socket of theirs ask again at once (ops.live.StaffConsumer), instead of at its next
periodic check."""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import m2m_changed, post_save

from orders.broadcast import publish_on_commit

from .live import user_group


def _session_ended(sender, request, user, **kwargs):
    if user is not None and getattr(request, "session", None) is not None and request.session.session_key:
        publish_on_commit([user_group(user.pk)], {"type": "session.ended", "session_key": request.session.session_key})


def _user_saved(sender, instance, created, update_fields=None, **kwargs):
    # Every sign-in saves last_login: nothing about access changed then.
    if not created and set(update_fields or ()) != {"last_login"}:
        publish_on_commit([user_group(instance.pk)], {"type": "access.changed"})


def _user_relations_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    User = get_user_model()
    if isinstance(instance, User):
        user_ids = [instance.pk]
    elif pk_set:  # a group or permission changed from its side: group.user_set.remove(...)
        user_ids = list(pk_set)
    else:
        return  # a cleared group: the sockets' periodic check sees it within seconds
    for user_id in user_ids:
        publish_on_commit([user_group(user_id)], {"type": "access.changed"})


def connect() -> None:
    User = get_user_model()
    user_logged_out.connect(_session_ended, dispatch_uid="ops.sockets.session_ended")
    post_save.connect(_user_saved, sender=User, dispatch_uid="ops.sockets.user_saved")
    for through in (User.groups.through, User.user_permissions.through):
        m2m_changed.connect(_user_relations_changed, sender=through, dispatch_uid=f"ops.sockets.{through.__name__}")
