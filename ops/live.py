"""What the staff sockets share: the base consumer that lets in staff only, and keeps
letting them in only while their session lasts (orders.live has the base of every live
page's socket)."""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from orders.live import CLOSE_FORBIDDEN, LiveConsumer, access_checks, database_read

from .order_pages.selectors import user_action_permissions
from .permissions import staff_member


def user_group(user_id: int) -> str:
    """Every staff socket of one user joins this group: a sign-out or a change to the user
    (ops.signals) reaches all of them at once."""
    return f"user-{user_id}"


def staff_permissions(user) -> frozenset[str] | None:
    """The user's operator-action permissions if they may watch orders at all, else None."""
    if not staff_member(user):
        return None
    return user_action_permissions(user)


def session_staff_permissions(session_key: str | None, user_id: int) -> frozenset[str] | None:
    """staff_permissions of the session's user, read afresh: None once the session is gone
    (signed out, expired, flushed), belongs to someone else, or was made before a password
    change (as django.contrib.auth.get_user checks), or the user is no longer staff."""
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    if session.get(SESSION_KEY) != str(user_id):
        return None
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        return None
    return staff_permissions(user)


class StaffConsumer(LiveConsumer):
    """Accepts staff who may view orders; anyone else gets close code 4403. Closed with 4403
    as soon as the session ends or the user loses a permission the socket was opened with."""

    permissions: frozenset[str] = frozenset()
    session_key: str | None = None
    user_id: int | None = None

    async def authorize(self) -> bool:
        user = self.scope.get("user")
        permissions = await database_read(staff_permissions, user)
        if permissions is None:
            await self.refuse(CLOSE_FORBIDDEN)
            return False
        self.permissions = permissions
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        self.access_checked()
        await self.join(user_group(user.pk))
        return True

    async def still_allowed(self) -> bool:
        permissions = await access_checks.get(("staff", self.session_key, self.user_id),
                                              session_staff_permissions, self.session_key, self.user_id)
        return permissions is not None and self.permissions <= permissions

    # Messages to user_group (ops.signals).

    async def session_ended(self, message):
        if message.get("session_key") == self.session_key:
            await self.access_close(CLOSE_FORBIDDEN)

    async def access_changed(self, message):
        # Not through the shared cache: its answer may predate the change.
        permissions = await database_read(session_staff_permissions, self.session_key, self.user_id)
        if permissions is None or not self.permissions <= permissions:
            await self.access_close(CLOSE_FORBIDDEN)
