"""Who may open what: role × endpoint × session state, over every page and htmx endpoint in
the urlconf, every model in the admin, and every websocket route (issue 11).

Generated, not listed: the HTTP endpoints come from walking get_resolver().url_patterns,
the admin's from its registry, the sockets from ordersite.routing. What each one requires
is read from the view itself: ops.permissions.staff_required leaves `required_permissions`
on its wrapper (staff sockets are ops.live.StaffConsumer). A view with neither that nor an
entry in PUBLIC below fails test_every_endpoint_declares_who_may_open_it, so a new URL is
covered the day it is added.

Expectations, per endpoint, for a user in a session state:
- anonymous, signed out, deactivated: the login page (sockets: closed with 4403);
- signed in without the permission (a role lacking it, a demoted user): 403;
- signed in with it: the page (never a login redirect, a 403 or a 500).
A method a view does not take may answer 405 instead. POSTs are sent only where the user must
be refused (a refused POST never reaches the view, so nothing happens); allowed users GET.
One database setup per role and state, no Temporal server.
"""

import importlib
import re
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from ops.live import StaffConsumer
from ops.permissions import VIEW_ORDERS
from ops.roles import ADMIN, OPERATOR, ROLE_PERMISSIONS, ROLES, SUPPORT, VIEWER, roles_ensure
from ordersite.asgi import application
from ordersite.routing import websocket_urlpatterns

from .test_ops_data import followup_order, stuck_order

# Deliberately public, each with why. Keyed by the view's dotted path (module.qualname).
PUBLIC = {
    "django.contrib.auth.views.LoginView": "the staff login itself (throttled by django-axes)",
    "django.contrib.auth.views.LogoutView": "signing out needs no permission (POST only)",
    "orders.views.customer_status_view": "the customer's page: the unguessable token is the key",
    "orders.webhooks.carrier_webhook_view": "the carrier's webhook: signed and timestamped, no session",
    "ordersite.health.healthz": "liveness probe for the orchestrator; says nothing about orders",
    "ordersite.health.readyz": "readiness probe for the orchestrator; says nothing about orders",
    "ordersite.metrics_http.metrics_view": "Prometheus scrapes it with its own token, not a session",
}
PUBLIC_SOCKETS = {
    "orders.consumers.CustomerStatusConsumer": "the customer's live page: the token is the key",
}
ADMIN_PREFIX = "admin/"
# Values for the URLs' parameters: real objects where a fixture makes one, else a value
# that resolves (an allowed user then gets 404, a refused one is refused before any lookup).
MISSING_ID = 2_000_000_000


@dataclass(frozen=True)
class Endpoint:
    route: str  # as in the urlconf, e.g. "orders/<int:pk>/"
    view: object

    @property
    def dotted(self) -> str:
        view = getattr(self.view, "view_class", self.view)
        return f"{view.__module__}.{view.__qualname__}"

    @property
    def required(self) -> tuple[str, ...] | None:
        return getattr(self.view, "required_permissions", None)


def http_endpoints() -> list[Endpoint]:
    """Every view in the urlconf but the admin's (test_admin_* cover those), once per route."""
    found: dict[str, Endpoint] = {}

    def walk(patterns, prefix: str):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if route != ADMIN_PREFIX:
                    walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern):
                found.setdefault(route, Endpoint(route, pattern.callback))

    walk(get_resolver().url_patterns, "")
    return list(found.values())


def socket_routes() -> list[tuple[str, type]]:
    return [(str(route.pattern), route.callback.consumer_class) for route in websocket_urlpatterns]


def fill(route: str, objects: dict) -> str:
    """The route with a value for each parameter: by (route start, name) where a fixture made one."""

    def value(match: re.Match) -> str:
        converter, name = match.group(1) or "str", match.group(2)
        for (start, param), val in objects.items():
            if param == name and route.startswith(start):
                return str(val)
        return str(MISSING_ID) if converter == "int" else "x"

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", value, route)


# --- who ------------------------------------------------------------------------------------

STATES = [
    # (state, role signed in with, role it ends up with: None = not signed in at all)
    ("anonymous", None, None),
    *[("signed in", role, role) for role in ROLES],
    ("signed in", "no role", "no role"),  # an account with no staff role (a customer's, say)
    ("signed out", OPERATOR, None),
    ("deactivated", OPERATOR, None),
    ("demoted", OPERATOR, VIEWER),
    ("demoted", ADMIN, SUPPORT),
]
STATE_IDS = [f"{state}-{role or ''}".rstrip("-") + (f"-to-{now}" if state == "demoted" else "") for state, role, now in STATES]


def may(role: str | None, required: tuple[str, ...]) -> bool:
    if role in (None, "no role"):
        return False
    if role == ADMIN:
        return True  # a superuser
    perms = set(ROLE_PERMISSIONS[role])
    return VIEW_ORDERS in perms and any(p in perms for p in required)


def session_for(state: str, role: str | None, now: str | None) -> tuple[Client, object]:
    """A client in the session state (with its cookie kept even where the session ended)."""
    from ops.roles import staff_user_create

    client = Client()
    if role is None:
        return client, None
    groups = roles_ensure()
    if role == "no role":
        user = get_user_model().objects.create_user("shopper", password="a-long-pass-123")
    else:
        user = staff_user_create(username=f"{role}-{state.replace(' ', '-')}", password="a-long-pass-123", role=role)
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    if state == "signed out":
        client.post("/accounts/logout/")
        client.cookies["sessionid"] = cookie  # a tab still holding the old cookie
    elif state == "deactivated":
        user.is_active = False
        user.save()
    elif state == "demoted":
        user.is_superuser = False
        user.save()
        user.groups.set([groups[now]])
    return client, user


def make_objects() -> dict:
    order = stuck_order()
    followup = followup_order()
    return {
        ("orders/", "pk"): order.pk,
        ("orders/", "action"): "retry",
        ("ops/followups/", "pk"): followup.pk,
        ("status/", "token"): order.public_token,
        ("ws/orders/", "pk"): order.pk,
        ("ws/status/", "token"): order.public_token,
    }


@pytest.fixture
def objects(db):
    return make_objects()


# --- the tests --------------------------------------------------------------------------------


def test_every_endpoint_declares_who_may_open_it():
    undeclared = [f"/{e.route} ({e.dotted})" for e in http_endpoints() if e.required is None and e.dotted not in PUBLIC]
    assert not undeclared, (
        "These views say neither who may open them nor that they are public: decorate each with "
        "ops.permissions.staff_required(<permission>), or, if it is deliberately public, add it to PUBLIC "
        "in tests/test_access_matrix.py with the reason: " + ", ".join(undeclared))
    sockets = [f"/{route} ({c.__module__}.{c.__qualname__})" for route, c in socket_routes()
               if not issubclass(c, StaffConsumer) and f"{c.__module__}.{c.__qualname__}" not in PUBLIC_SOCKETS]
    assert not sockets, (
        "These websocket consumers neither derive from ops.live.StaffConsumer nor are listed in PUBLIC_SOCKETS "
        "in tests/test_access_matrix.py: " + ", ".join(sockets))
    # A listed view whose module exists but no URL leads to any more: take it off the list.
    # (One whose module is not in this tree yet, from a branch still to be merged, is skipped.)
    routed = {e.dotted for e in http_endpoints()}
    stale = {dotted for dotted in PUBLIC if dotted not in routed and _importable(dotted)}
    assert not stale, f"PUBLIC lists views no URL leads to any more: {stale}"


def _importable(dotted: str) -> bool:
    try:
        importlib.import_module(dotted.rpartition(".")[0])
    except ImportError:
        return False
    return True


def test_the_walk_finds_the_known_endpoints():
    # The generator itself: if it silently found nothing, every other test would pass.
    routes = {e.route for e in http_endpoints()}
    assert {"", "orders/<int:pk>/", "orders/<int:pk>/actions/<str:action>/", "ops/followups/<int:pk>/claim/",
            "ops/background/bulk/", "status/<str:token>/", "accounts/login/"} <= routes
    assert len(routes) >= 20
    assert {"ws/ops/", "ws/orders/<int:pk>/", "ws/status/<str:token>/"} <= {r for r, _ in socket_routes()}


def _is_login_redirect(response, login_url: str) -> bool:
    return response.status_code == 302 and response["Location"].startswith(login_url)


@pytest.mark.parametrize(("state", "role", "now"), STATES, ids=STATE_IDS)
def test_pages_and_htmx_endpoints(state, role, now, objects):
    client, _user = session_for(state, role, now)
    login_url = "/accounts/login/"
    problems = []
    for endpoint in http_endpoints():
        url = fill(endpoint.route, objects)
        if endpoint.dotted in PUBLIC:
            response = client.get(url)
            if response.status_code == 500:  # (a readiness probe may answer 503 on purpose)
                problems.append(f"GET {url} (public): {response.status_code}")
            continue
        if may(now, endpoint.required):
            response = client.get(url)
            if response.status_code not in (200, 302, 404, 405) or _is_login_redirect(response, login_url):
                problems.append(f"GET {url}: {response.status_code} {response.get('Location', '')}, expected the page")
            continue
        refused = "login" if now is None else 403
        answers = {}
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            answers[method] = "login" if _is_login_redirect(response, login_url) else response.status_code
        if any(a not in (refused, 405) for a in answers.values()) or set(answers.values()) == {405}:
            problems.append(f"{url}: GET {answers['get']}, POST {answers['post']}; expected {refused}")
    assert not problems, f"{state} {role or ''}{' -> ' + now if state == 'demoted' else ''}:\n" + "\n".join(problems)


def admin_changelists() -> list[tuple[str, object]]:
    return [(f"/admin/{model._meta.app_label}/{model._meta.model_name}/", model) for model in admin.site._registry]


@pytest.mark.parametrize(("state", "role", "now"), STATES, ids=STATE_IDS)
def test_admin_index_and_every_changelist(state, role, now, objects):
    client, user = session_for(state, role, now)
    assert len(admin_changelists()) >= 5
    problems = []
    if user is not None:
        user = get_user_model().objects.get(pk=user.pk)  # fresh permissions
    for url, model in [("/admin/", None), *admin_changelists()]:
        response = client.get(url)
        if now is None or now == "no role":
            ok = response.status_code == 302 and response["Location"].startswith("/admin/login/")
            expected = "the admin login"
        elif model is None:
            ok, expected = response.status_code == 200, "200"
        else:
            opts = model._meta
            allowed = any(user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}") for action in ("view", "change"))
            ok, expected = response.status_code == (200 if allowed else 403), "200" if allowed else "403"
        if not ok:
            problems.append(f"GET {url}: {response.status_code}, expected {expected}")
    assert not problems, f"{state} {role or ''}:\n" + "\n".join(problems)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("state", "role", "now"), STATES, ids=STATE_IDS)
async def test_websockets(state, role, now):
    objects_made = await sync_to_async(make_objects)()
    client, _user = await sync_to_async(session_for)(state, role, now)
    cookie = client.cookies["sessionid"].value if "sessionid" in client.cookies else ""
    problems = []
    for route, consumer in socket_routes():
        path = fill(route, objects_made)
        headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
        if cookie:
            headers.append((b"cookie", f"sessionid={cookie}".encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert connected, path
        try:
            public = f"{consumer.__module__}.{consumer.__qualname__}" in PUBLIC_SOCKETS
            allowed = public or (issubclass(consumer, StaffConsumer) and may(now, (VIEW_ORDERS,)))
            if await communicator.receive_nothing(timeout=0.5):
                closed = False  # open, quiet (the order list sends rows only on events)
            else:
                output = await communicator.receive_output(timeout=1)
                closed = output["type"] == "websocket.close"
                if closed and output.get("code") != 4403:
                    problems.append(f"{path}: closed with {output.get('code')}")
            if allowed == closed:
                problems.append(f"{path}: {'closed' if closed else 'open'}, expected {'open' if allowed else 'closed with 4403'}")
        finally:
            await communicator.disconnect()
    assert not problems, f"{state} {role or ''}:\n" + "\n".join(problems)
