"""What the order views share: who may create orders, and where to send the user back."""

from django.utils.http import url_has_allowed_host_and_scheme

# Operators and admins create orders (admins hold every permission as superusers);
# viewers and support staff do not. orders.add_order lets an admin grant it to one user.
CREATE_ORDER_PERMISSIONS = ("ops.operate_saga", "orders.add_order")


def can_create_orders(user) -> bool:
    return bool(user.is_authenticated and any(user.has_perm(p) for p in CREATE_ORDER_PERMISSIONS))


def safe_next(request, fallback: str) -> str:
    """The `next` URL of a form if it stays on this site, else the fallback."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return fallback


def htmx_partial(request, target: str) -> bool:
    """True when htmx asked to re-render only `target` (not for history restores)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request and htmx.target == target
