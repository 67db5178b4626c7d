"""Staff roles as Django groups, and the permissions each one carries."""

from django.contrib.auth.models import Group, Permission

VIEWER, SUPPORT, OPERATOR, ADMIN = "viewer", "support", "operator", "admin"
ROLES = (VIEWER, SUPPORT, OPERATOR, ADMIN)

_VIEW = [
    "orders.view_order", "orders.view_sagaevent", "orders.view_followup", "orders.view_operatoraction",
    # Alert incidents and the messages sent about them (the admin's read-only lists).
    "ops.view_alertincident", "ops.view_alertmessage",
]
ROLE_PERMISSIONS = {
    VIEWER: _VIEW,
    SUPPORT: [*_VIEW, "ops.work_followups", "orders.change_followup"],
    OPERATOR: [*_VIEW, "ops.work_followups", "orders.change_followup", "ops.operate_saga"],
    ADMIN: [*_VIEW, "ops.work_followups", "orders.change_followup", "ops.operate_saga"],
}


def roles_ensure() -> dict[str, Group]:
    """Create the role groups with their permissions (idempotent; run after migrate)."""
    groups = {}
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            perms.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(perms)
        groups[role] = group
    return groups


def staff_user_create(*, username: str, password: str, role: str, email: str = ""):
    """A staff user in one role; admins are also Django superusers. Updates an existing user."""
    from django.contrib.auth import get_user_model

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    groups = roles_ensure()
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"email": email})
    user.is_staff = True
    user.is_superuser = role == ADMIN
    user.set_password(password)
    user.save()
    user.groups.set([groups[role]])
    return user
