"""What the staff sockets share: the base consumer that lets in staff only (orders.live
has the base of every live page)."""

from orders.live import CLOSE_FORBIDDEN, LiveConsumer, database_read

from .order_pages.selectors import user_action_permissions
from .permissions import staff_member


def staff_permissions(user) -> frozenset[str] | None:
    """The user's operator-action permissions if they may watch orders at all, else None."""
    if not staff_member(user):
        return None
    return user_action_permissions(user)


class StaffConsumer(LiveConsumer):
    """Accepts staff who may view orders; anyone else gets close code 4403."""

    permissions: frozenset[str] = frozenset()

    async def authorize(self) -> bool:
        permissions = await database_read(staff_permissions, self.scope.get("user"))
        if permissions is None:
            await self.refuse(CLOSE_FORBIDDEN)
            return False
        self.permissions = permissions
        return True
