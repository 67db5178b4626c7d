"""Working the follow-up queue: claim, release and notes, through the services and the
endpoints, for every role; refusals write nothing."""

import re
import threading

import pytest
from django.db import connection
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from orders.models import FollowUp, OperatorAction
from ops.followups import FollowUpNotAllowed, followup_claim, followup_note_add, followup_release
from ops.services import ActionNotAllowed, followup_resend, followup_resolve

from .test_ops_data import ROLES, followup_order, resolved_followup

pytestmark = pytest.mark.django_db

ENDPOINTS = ["ops:followup_claim", "ops:followup_release", "ops:followup_note_add"]


def state(followup: FollowUp) -> tuple:
    followup.refresh_from_db()
    return followup.claimed_by_id, followup.notes, followup.state


# --- services ------------------------------------------------------------------------------


def test_claim_is_one_person_at_a_time(staff_user):
    followup = followup_order()
    sam, kim = staff_user("support", username="sam"), staff_user("support", username="kim")
    assert followup_claim(followup_id=followup.pk, actor=sam).claimed_by == sam
    assert followup_claim(followup_id=followup.pk, actor=sam).claimed_by == sam  # again: no-op
    with pytest.raises(FollowUpNotAllowed, match=rf"{followup.order.number} is already claimed by sam"):
        followup_claim(followup_id=followup.pk, actor=kim)
    assert state(followup)[0] == sam.pk


@pytest.mark.django_db(transaction=True)
def test_simultaneous_claims_leave_exactly_one_holder(staff_user):
    followup = followup_order()
    people = [staff_user("support") for _ in range(4)]
    start = threading.Barrier(len(people))
    results = []

    def claim(person):
        start.wait()
        try:
            followup_claim(followup_id=followup.pk, actor=person)
            results.append(("claimed", person.pk))
        except FollowUpNotAllowed:
            results.append(("refused", person.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcome for outcome, _ in results) == ["claimed", "refused", "refused", "refused"]
    winner = next(pk for outcome, pk in results if outcome == "claimed")
    assert state(followup)[0] == winner


def test_release_by_holder_or_admin_only(staff_user):
    followup = followup_order()
    sam, kim, boss = staff_user("support", username="sam"), staff_user("operator"), staff_user("admin")
    followup_claim(followup_id=followup.pk, actor=sam)
    with pytest.raises(FollowUpNotAllowed, match="claimed by sam; only they or an admin can release it"):
        followup_release(followup_id=followup.pk, actor=kim)
    assert state(followup)[0] == sam.pk
    followup_release(followup_id=followup.pk, actor=boss)
    assert state(followup)[0] is None
    followup_claim(followup_id=followup.pk, actor=kim)
    followup_release(followup_id=followup.pk, actor=kim)
    assert state(followup)[0] is None
    followup_release(followup_id=followup.pk, actor=kim)  # unclaimed: no-op


def test_resolved_followups_cannot_be_claimed(staff_user):
    followup = resolved_followup()
    with pytest.raises(FollowUpNotAllowed, match="already resolved"):
        followup_claim(followup_id=followup.pk, actor=staff_user("support"))


def test_notes_are_appended_with_author_and_time(staff_user):
    followup = followup_order()
    sam, kim = staff_user("support", username="sam"), staff_user("operator", username="kim")
    followup_note_add(followup_id=followup.pk, actor=sam, text="  Called, no answer.  ")
    followup_note_add(followup_id=followup.pk, actor=kim, text="Left a voicemail.")
    lines = state(followup)[1].splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d UTC\] sam: Called, no answer\.", lines[0])
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d UTC\] kim: Left a voicemail\.", lines[1])


@pytest.mark.parametrize("text, message", [("", "Write a note"), ("   ", "Write a note"), ("x" * 2001, "at most 2000")])
def test_bad_notes_are_refused(staff_user, text, message):
    followup = followup_order()
    with pytest.raises(FollowUpNotAllowed, match=message):
        followup_note_add(followup_id=followup.pk, actor=staff_user("support"), text=text)
    assert state(followup)[1] == ""


def test_services_check_permission(staff_user):
    followup = followup_order()
    viewer = staff_user("viewer")
    for call in (
        lambda: followup_claim(followup_id=followup.pk, actor=viewer),
        lambda: followup_release(followup_id=followup.pk, actor=viewer),
        lambda: followup_note_add(followup_id=followup.pk, actor=viewer, text="hello"),
        lambda: followup_claim(followup_id=followup.pk, actor=None),
    ):
        with pytest.raises(PermissionDenied):
            call()
    assert state(followup) == (None, "", "open")


def test_unknown_followup_raises_does_not_exist(staff_user):
    with pytest.raises(FollowUp.DoesNotExist):
        followup_claim(followup_id=999_999, actor=staff_user("support"))


# --- endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_posts_go_to_login_and_write_nothing(client, endpoint):
    followup = followup_order()
    response = client.post(reverse(endpoint, args=[followup.pk]), {"text": "hi"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert state(followup) == (None, "", "open")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_viewer_posts_are_forbidden_and_write_nothing(client_as, endpoint):
    followup = followup_order()
    response = client_as("viewer").post(reverse(endpoint, args=[followup.pk]), {"text": "hi"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert state(followup) == (None, "", "open")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_endpoints_refuse_get(client_as, endpoint):
    followup = followup_order()
    assert client_as("support").get(reverse(endpoint, args=[followup.pk])).status_code == 405


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_followup_is_404(client_as, endpoint):
    response = client_as("support").post(reverse(endpoint, args=[424242]), {"text": "hi"})
    assert response.status_code == 404


def test_post_without_csrf_token_is_refused(staff_user):
    followup = followup_order()
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user("support"))
    assert client.post(reverse("ops:followup_claim", args=[followup.pk])).status_code == 403
    assert state(followup) == (None, "", "open")


@pytest.mark.parametrize("role", ["support", "operator", "admin"])
def test_claim_and_release_with_htmx_rerender_the_row(client, staff_user, role):
    user = staff_user(role)
    client.force_login(user)
    followup = followup_order()
    response = client.post(reverse("ops:followup_claim", args=[followup.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="followup-{followup.pk}"')
    assert "<strong>You</strong>" in body and reverse("ops:followup_release", args=[followup.pk]) in body
    assert "<html" not in body
    assert state(followup)[0] == user.pk

    body = client.post(reverse("ops:followup_release", args=[followup.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "nobody" in body and reverse("ops:followup_claim", args=[followup.pk]) in body
    assert state(followup)[0] is None


def test_claim_without_htmx_redirects_back_with_a_message(client_as):
    followup = followup_order()
    client = client_as("support")
    response = client.post(
        reverse("ops:followup_claim", args=[followup.pk]), {"next": "/ops/followups/?page=1"}, follow=True
    )
    assert response.redirect_chain == [("/ops/followups/?page=1", 302)]
    assert "You claimed the follow-up." in response.content.decode()


def test_next_pointing_elsewhere_is_ignored(client_as):
    followup = followup_order()
    response = client_as("support").post(
        reverse("ops:followup_claim", args=[followup.pk]), {"next": "https://evil.example.com/"}
    )
    assert response["Location"] == reverse("ops:followups")


def test_claiming_someone_elses_followup_says_who_has_it(client_as, staff_user):
    sam = staff_user("support", username="sam")
    followup = followup_order(claimed_by=sam)
    client = client_as("support")
    body = client.post(reverse("ops:followup_claim", args=[followup.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert f"The follow-up for {followup.order.number} is already claimed by sam." in body
    assert 'role="alert"' in body
    body = client.post(reverse("ops:followup_claim", args=[followup.pk]), follow=True).content.decode()
    assert "already claimed by sam" in body
    # Nor can they release it.
    body = client.post(reverse("ops:followup_release", args=[followup.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "only they or an admin can release it" in body
    assert state(followup)[0] == sam.pk


def test_note_with_htmx_appears_in_the_row(client_as):
    followup = followup_order()
    client = client_as("support")
    body = client.post(
        reverse("ops:followup_note_add", args=[followup.pk]), {"text": "Customer <b>prefers</b> phone"},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "Customer &lt;b&gt;prefers&lt;/b&gt; phone" in body  # escaped
    assert "Customer <b>prefers</b> phone" in state(followup)[1]


@pytest.mark.parametrize("text", ["", "   ", "x" * 2001])
def test_bad_note_shows_an_error_and_writes_nothing(client_as, text):
    followup = followup_order()
    client = client_as("support")
    body = client.post(
        reverse("ops:followup_note_add", args=[followup.pk]), {"text": text}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert re.search(r'role="alert">(Write a note before adding it\.|Ensure this value has at most 2000)', body)
    assert state(followup)[1] == ""
    body = client.post(reverse("ops:followup_note_add", args=[followup.pk]), {"text": text}, follow=True).content.decode()
    assert "Write a note before adding it." in body or "at most 2000" in body
    assert state(followup)[1] == ""


def test_row_endpoint_renders_one_row_for_every_staff_role(client_as):
    followup = followup_order()
    for role in ROLES:
        response = client_as(role).get(reverse("ops:followup_row", args=[followup.pk]))
        assert response.status_code == 200
        assert response.content.decode().lstrip().startswith(f'<tr id="followup-{followup.pk}"')
    assert client_as("viewer").get(reverse("ops:followup_row", args=[777777])).status_code == 404


def test_row_endpoint_needs_a_staff_login(client):
    followup = followup_order()
    assert client.get(reverse("ops:followup_row", args=[followup.pk])).status_code == 302


@pytest.mark.parametrize("outcome, waiting, polling", [
    ("sent", True, True), ("requested", True, True),
    # Applied: the saga closes the follow-up right after, so the row asks a while longer.
    ("applied", False, True), ("ignored", False, False),
])
def test_row_waits_for_the_saga_after_a_resend_or_resolve(client_as, staff_user, outcome, waiting, polling):
    from .test_ops_data import audit_row

    followup = followup_order()
    audit_row(followup.order, staff_user("support"), action="resolved", outcome=outcome)
    html = client_as("support").get(reverse("ops:followup_row", args=[followup.pk])).content.decode()
    assert ("waiting for the saga" in html) is waiting
    # While the saga has not answered: no second click, and the row asks again every second.
    assert ("Mark resolved</button>" in html) is not waiting
    assert ("every 1s" in html) is polling


def test_row_stops_asking_a_minute_after_an_applied_command(client_as, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    from orders.models import OperatorAction

    from .test_ops_data import audit_row

    followup = followup_order()
    audit_row(followup.order, staff_user("support"), action="resend", outcome="applied")
    OperatorAction.objects.filter(order=followup.order).update(created_at=timezone.now() - timedelta(minutes=2))
    html = client_as("support").get(reverse("ops:followup_row", args=[followup.pk])).content.decode()
    assert "every 1s" not in html


def test_a_claimed_followup_is_resent_or_resolved_by_its_holder_only(staff_user):
    """The claim is enforced in the service, not only hidden in the page."""
    followup = followup_order()
    sam, kim = staff_user("support", username="sam"), staff_user("support", username="kim")
    followup_claim(followup_id=followup.pk, actor=sam)
    for service in (followup_resend, followup_resolve):
        with pytest.raises(ActionNotAllowed, match="claimed by sam: ask them"):
            service(order_id=followup.order_id, actor=kim)
    assert not OperatorAction.objects.filter(order_id=followup.order_id).exists()
