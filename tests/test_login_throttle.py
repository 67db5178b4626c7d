"""Login throttling and lockout (django-axes) on both logins: the staff login and /admin/.

A username failing AXES_FAILURE_LIMIT times from one address is locked out for the cool-off
(a plain 429 page, even with the right password then); the same user from another address,
and other users, still sign in; every attempt is a row an admin can read in the admin.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db

PASSWORD = "staff-pass-123"
LOGINS = {"staff": "/accounts/login/", "admin": "/admin/login/"}


def attempt(url: str, username: str, password: str, address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(url, {"username": username, "password": password})


def fail_until_locked(url: str, username: str, address: str = "10.0.0.1"):
    for n in range(1, settings.AXES_FAILURE_LIMIT):
        response = attempt(url, username, "wrong-password", address)
        assert response.status_code == 200, f"failure {n} should show the form again"
    return attempt(url, username, "wrong-password", address)


@pytest.mark.parametrize("login", LOGINS)
def test_the_limit_locks_the_user_at_that_address_with_a_429_page(login, staff_user):
    user = staff_user("admin")
    url = LOGINS[login]

    locked = fail_until_locked(url, user.username)
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Sign-in locked for now" in page
    assert f"Try again in {round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)} minutes" in page
    assert "Traceback" not in page

    # The right password does not help while locked out...
    assert attempt(url, user.username, PASSWORD).status_code == 429
    # ...but nobody can lock a colleague out from elsewhere.
    assert attempt(url, user.username, PASSWORD, address="10.0.0.2").status_code == 302


def test_a_lockout_on_one_login_holds_on_the_other(staff_user):
    user = staff_user("admin")
    assert fail_until_locked(LOGINS["staff"], user.username).status_code == 429
    assert attempt(LOGINS["admin"], user.username, PASSWORD).status_code == 429


def test_the_lockout_ends_after_the_cool_off(staff_user):
    user = staff_user("operator")
    url = LOGINS["staff"]
    assert fail_until_locked(url, user.username).status_code == 429
    # axes' own bookkeeping, aged past the cool-off (as the clock would).
    AccessAttempt.objects.filter(username=user.username).update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert attempt(url, user.username, PASSWORD).status_code == 302


def test_a_success_before_the_limit_starts_the_count_again(staff_user):
    user = staff_user("viewer")
    url = LOGINS["staff"]
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(url, user.username, "wrong-password")
    assert attempt(url, user.username, PASSWORD).status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(url, user.username, "wrong-password").status_code == 200
    assert attempt(url, user.username, PASSWORD).status_code == 302


def test_attempts_are_audited_and_readable_in_the_admin(staff_user):
    target = staff_user("viewer")
    fail_until_locked(LOGINS["admin"], target.username, address="10.9.8.7")
    record = AccessAttempt.objects.get(username=target.username)
    assert record.ip_address == "10.9.8.7"
    assert record.failures_since_start == settings.AXES_FAILURE_LIMIT
    assert AccessFailureLog.objects.filter(username=target.username, locked_out=True).exists()

    admin = Client()
    admin.force_login(staff_user("admin"))
    for page in ("/admin/axes/accessattempt/", "/admin/axes/accessfailurelog/"):
        response = admin.get(page)
        assert response.status_code == 200, page
        assert target.username in response.content.decode()
        assert "10.9.8.7" in response.content.decode()
