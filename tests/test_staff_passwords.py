"""Staff passwords go through Django's full validators: they open refunds and cancellations."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("password, message", [
    ("short1!x", "too short"),
    ("password1234", "too common"),
    ("73519846203957", "entirely numeric"),
])
def test_create_staff_refuses_weak_passwords_with_the_reason(password, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_staff", username="kim", password=password, role="support")
    assert not get_user_model().objects.filter(username="kim").exists()


def test_create_staff_takes_a_strong_password(capsys):
    call_command("create_staff", username="kim", password="ochre-lantern-vault-92", role="support")
    user = get_user_model().objects.get(username="kim")
    assert user.check_password("ochre-lantern-vault-92") and user.is_staff and not user.is_superuser
