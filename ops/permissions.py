"""Who may see and do what, for views, htmx endpoints, consumers and admin actions.

Roles are groups (ops.roles); views check permissions, never group names, so an admin
can grant a single permission to a single user.
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

VIEW_ORDERS = "orders.view_order"
WORK_FOLLOWUPS = "ops.work_followups"
OPERATE_SAGAS = "ops.operate_saga"
VIEW_AUDIT_LOG = "orders.view_operatoraction"
# Operators and admins create orders (admins hold every permission as superusers);
# viewers and support staff do not. orders.add_order lets an admin grant it to one user.
CREATE_ORDER_PERMISSIONS = (OPERATE_SAGAS, "orders.add_order")


def staff_member(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(VIEW_ORDERS))


def can_create_orders(user) -> bool:
    return bool(user.is_authenticated and any(user.has_perm(p) for p in CREATE_ORDER_PERMISSIONS))


def staff_required(permission: str = VIEW_ORDERS):
    """Anonymous users go to the login page; signed-in users without the permission get 403."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not (request.user.is_active and request.user.has_perm(VIEW_ORDERS) and request.user.has_perm(permission)):
                raise PermissionDenied("You do not have permission to do that.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
