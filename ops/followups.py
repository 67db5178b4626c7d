"""Working the follow-up queue: claiming an item, letting it go, keeping notes.

Resending and resolving are operator actions (ops.services): they go to the saga.
Claims and notes are staff bookkeeping and stay in the database.
"""

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from orders.models import FollowUp

from .permissions import WORK_FOLLOWUPS

NOTE_MAX_LENGTH = 2000


class FollowUpNotAllowed(Exception):
    """The follow-up's state does not allow this; the message says why, for staff."""


def _check_permission(actor) -> None:
    if actor is None or not actor.is_active or not actor.has_perm(WORK_FOLLOWUPS):
        raise PermissionDenied("You are not allowed to work the follow-up queue.")


def _lock_followup(followup_id: int) -> FollowUp:
    # Locks the follow-up row only (not its order or the holder's user row, which the
    # messages read). Raises FollowUp.DoesNotExist for an unknown id.
    return FollowUp.objects.select_for_update(of=("self",)).select_related("order", "claimed_by").get(pk=followup_id)


def _holder_name(followup: FollowUp) -> str:
    return followup.claimed_by.get_username() if followup.claimed_by else "someone"


def followup_claim(*, followup_id: int, actor) -> FollowUp:
    """Take an open follow-up: one person at a time. Claiming your own again is a no-op.

    Raises PermissionDenied, FollowUp.DoesNotExist or FollowUpNotAllowed (resolved, or
    held by someone else). Locks: the follow-up row.
    """
    _check_permission(actor)
    with transaction.atomic():
        followup = _lock_followup(followup_id)
        if followup.state != FollowUp.State.OPEN:
            raise FollowUpNotAllowed(f"The follow-up for {followup.order.number} is already resolved.")
        if followup.claimed_by_id and followup.claimed_by_id != actor.pk:
            raise FollowUpNotAllowed(
                f"The follow-up for {followup.order.number} is already claimed by {_holder_name(followup)}."
            )
        if followup.claimed_by_id != actor.pk:
            followup.claimed_by = actor
            followup.save(update_fields=["claimed_by"])
    return followup


def followup_release(*, followup_id: int, actor) -> FollowUp:
    """Give a claimed follow-up back to the queue.

    Only its holder may release it, or an admin (a superuser), for someone who has left
    for the day. Releasing an unclaimed one is a no-op. Locks: the follow-up row.
    """
    _check_permission(actor)
    with transaction.atomic():
        followup = _lock_followup(followup_id)
        if followup.claimed_by_id is None:
            return followup
        if followup.claimed_by_id != actor.pk and not actor.is_superuser:
            raise FollowUpNotAllowed(
                f"The follow-up for {followup.order.number} is claimed by {_holder_name(followup)}; "
                "only they or an admin can release it."
            )
        followup.claimed_by = None
        followup.save(update_fields=["claimed_by"])
    return followup


def followup_note_add(*, followup_id: int, actor, text: str) -> FollowUp:
    """Append a note, signed with the author's username and the time, to the follow-up.

    Notes are append-only text: earlier notes are never rewritten. Allowed on resolved
    follow-ups too (what the customer said afterwards). Locks: the follow-up row.
    """
    _check_permission(actor)
    text = (text or "").strip()
    if not text:
        raise FollowUpNotAllowed("Write a note before adding it.")
    if len(text) > NOTE_MAX_LENGTH:
        raise FollowUpNotAllowed(f"A note can be at most {NOTE_MAX_LENGTH} characters.")
    with transaction.atomic():
        followup = _lock_followup(followup_id)
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M UTC")
        entry = f"[{stamp}] {actor.get_username()}: {text}"
        followup.notes = f"{followup.notes.rstrip()}\n{entry}" if followup.notes.strip() else entry
        followup.save(update_fields=["notes"])
    return followup
