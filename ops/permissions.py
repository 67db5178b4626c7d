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


def staff_required(*permissions: str, message: str = "You do not have permission to do that."):
    """Anonymous users go to the login page; signed-in users who are not active staff
    (VIEW_ORDERS), or hold none of `permissions` (any one will do; VIEW_ORDERS if none are
    named), get 403 with `message`.

    The wrapper carries `required_permissions`: tests/test_access_matrix.py reads it to know
    who may open each URL, so every staff view must use this decorator.
    """
    required = permissions or (VIEW_ORDERS,)

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            user = request.user
            if not (user.is_active and user.has_perm(VIEW_ORDERS) and any(user.has_perm(p) for p in required)):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        wrapper.required_permissions = required
        return wrapper

    return decorator
