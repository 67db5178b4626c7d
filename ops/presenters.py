"""What the stuck and follow-up queues' rows show besides their model fields: their links,
and their confirmable operator actions (templates/ops/partials/order_action.html).

A queue page has 50 rows and up to two action forms a row. Each form's URL, reason-field
id, button copy and rollback preview are worked out here, once per row, so the partial
only prints them: its former arguments (seven per include, with `add` filters and a
`firstof`) were a quarter of the stuck queue's server time at 100,000 orders. The stuck
rows' times, holdings and error excerpt likewise (Django's date, timesince and
truncatechars filters and the holdings' `add`/`pluralize` were another 6-8 ms of 33).
"""

from dataclasses import dataclass, field

from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.text import Truncator

from orders.models import FollowUp
from orders.status import SagaStatus

from .http import ReversedOnce
from .order_pages.presenters import OrderLinks, rollback_lines


@dataclass(frozen=True)
class ActionForm:
    """One operator action on one row, as templates/ops/partials/order_action.html draws it."""

    action: str
    url: str
    field_id: str  # the reason field's id: unique on the page (two rows may share an order)
    label: str  # the disclosure's summary
    confirm: str  # the submit button
    button_class: str = ""
    preview: list[str] = field(default_factory=list)  # what an irreversible action would do now
    hx_target: str = ""  # set: htmx posts it and puts the endpoint's message there


ERROR_EXCERPT_CHARS = 200


def error_excerpt(error: str) -> str:
    """The start of a step's error (or a follow-up's reason), as `truncatechars:200` would
    cut it (most are shorter: Truncator's walk over every character is skipped for them)."""
    return error if len(error) <= ERROR_EXCERPT_CHARS else Truncator(error).chars(ERROR_EXCERPT_CHARS)


def held_label(order) -> str:
    """What a stuck order keeps from the customer and the shelf while nobody acts on it."""
    held = order.rollback
    money = f"{held.refund} {order.currency} charged" if held and held.charged else "not charged"
    items = held.items_to_restock + held.items_to_release if held else 0
    stock = f"{items} item{pluralize(items)} of stock held" if items else "no stock held"
    return f"{money} · {stock}"


def time_title_strings(moment, title: str = "%Y-%m-%d %H:%M:%S %Z") -> tuple[str, str]:
    """A moment as the date filter's 'c' (a <time> element's datetime) and 'Y-m-d H:i:s T'
    (its title; or `title`, in strftime's terms) print it in the shop's time zone, at a
    fraction of the filter's cost. None: empty strings, as the filter prints."""
    if moment is None:
        return "", ""
    local = timezone.localtime(moment)
    return local.isoformat(), local.strftime(title)


def stuck_rows_present(orders, links: OrderLinks | None = None):
    """The stuck queue's rows (from ops.selectors.stuck_holdings_attach): each with its
    step's label, its order's URL, when it got stuck (ISO for the <time> element, the
    shop's local time for its title), its error's excerpt, what it holds, and the action
    forms that fit its saga."""
    links = links or OrderLinks()
    for order in orders:
        order.step_label = str(order.get_current_step_display())  # once, not a lazy label per use
        order.detail_url = links.detail(order.pk)
        if order.stuck_since:
            order.stuck_since_iso, order.stuck_since_title = time_title_strings(order.stuck_since)
        order.error_excerpt = error_excerpt(order.last_error or "")
        order.held_label = held_label(order)
        if order.saga_status == SagaStatus.COMPENSATION_STUCK:
            order.action_forms = [ActionForm(
                "retry_compensation", links.action(order.pk, "retry_compensation"),
                f"reason-retry_compensation-{order.pk}", "Retry compensation",
                f"Retry the stuck compensation of {order.number}", "primary",
            )]
        else:
            order.action_forms = [
                ActionForm("retry", links.action(order.pk, "retry"), f"reason-retry-{order.pk}",
                           "Retry", f"Retry {order.step_label}", "primary"),
                ActionForm("compensate", links.action(order.pk, "compensate"), f"reason-compensate-{order.pk}",
                           "Compensate", f"Roll back {order.number}", "warning",
                           preview=rollback_lines(order.rollback) if order.rollback else []),
            ]
    return orders


# Where a follow-up row's resend and resolve put the endpoint's message (templates/ops/followups.html).
FOLLOWUP_ACTION_RESULT = "#followup-action-result"


def followup_rows_present(followups):
    """Each follow-up row's URLs (its order, claim, release, note, its own re-render), its
    times and reason's excerpt, and its resend (notify follow-ups only) and resolve forms,
    the URLs reversed once per page rather than seven times a row (ReversedOnce)."""
    orders = OrderLinks()
    claim, release, note, row = (ReversedOnce(f"ops:followup_{name}", ReversedOnce.INT)
                                 for name in ("claim", "release", "note_add", "row"))
    for followup in followups:
        followup.claim_url, followup.release_url = claim(followup.pk), release(followup.pk)
        followup.note_url, followup.row_url = note(followup.pk), row(followup.pk)
        followup.order_url = orders.detail(followup.order_id)
        followup.opened_iso, followup.opened_title = time_title_strings(followup.created_at, "%Y-%m-%d %H:%M %Z")
        followup.resolved_iso = time_title_strings(followup.resolved_at)[0]
        followup.last_action_iso = time_title_strings(getattr(followup, "last_action_at", None))[0]
        followup.reason_excerpt = error_excerpt(followup.reason or "")
        # The reason fields' ids carry the follow-up's id: an order may have had several.
        resolve = ActionForm("resolved", orders.action(followup.order_id, "resolved"), f"reason-resolved-{followup.pk}",
                             "Resolve", "Mark resolved", hx_target=FOLLOWUP_ACTION_RESULT)
        if followup.kind == FollowUp.Kind.NOTIFY:
            followup.action_forms = [
                ActionForm("resend", orders.action(followup.order_id, "resend"), f"reason-resend-{followup.pk}",
                           "Resend", "Resend notification", "primary", hx_target=FOLLOWUP_ACTION_RESULT),
                resolve,
            ]
        else:
            followup.action_forms = [resolve]
    return followups
