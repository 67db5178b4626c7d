"""Operations pages: the dashboard, the stuck and follow-up queues, the audit log.

Views check permissions, parse input and call one selector or service. Retry, compensate,
resend and resolve buttons post to the order pages' action endpoint (orders:action);
bulk actions post to the background jobs app (background:bulk_create).
"""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from orders.models import FollowUp
from orders.status import Step

from . import selectors
from .dashboard import dashboard_figures_html
from .followups import FollowUpNotAllowed, followup_claim, followup_note_add, followup_release
from .forms import AuditFilterForm, FollowUpNoteForm, FollowUpViewForm, StuckFilterForm
from .http import safe_next
from .keyset import COUNT_CAP, PageRequest, keyset_page
from .permissions import OPERATE_SAGAS, VIEW_AUDIT_LOG, WORK_FOLLOWUPS, staff_required
from .presenters import followup_rows_present, stuck_rows_present


def _page(request: HttpRequest, queryset, *, count_cap: int | None = None):
    # Keyset pages in the queryset's own order: a bad or stale cursor shows the first page.
    # The queues count exactly (their headers say how many; they are small next to the
    # orders); the audit log grows for ever, so its count is capped.
    return keyset_page(queryset, PageRequest.from_query(request.GET), count_cap=count_cap)


@require_GET
@staff_required()
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "ops/home.html", {
        "outages": selectors.service_outages(),
        "figures": dashboard_figures_html(oob=False),
    })


@require_GET
@staff_required()
def stuck(request: HttpRequest) -> HttpResponse:
    form = StuckFilterForm(request.GET or None)
    step = form.cleaned_data["step"] if form.is_bound and form.is_valid() else ""
    page = _page(request, selectors.stuck_orders(step=step))
    stuck_rows_present(selectors.stuck_holdings_attach(page.object_list))
    return render(request, "ops/stuck.html", {
        "oldest_stuck_since": selectors.stuck_oldest_since(),
        "form": form,
        "step": step,
        "step_label": dict(Step.choices).get(step, ""),
        "page": page,
        "by_step": selectors.stuck_counts_by_step(),
        "can_operate": request.user.has_perm(OPERATE_SAGAS),
        "next_url": request.get_full_path(),  # where each row's action forms come back to
    })


@require_GET
@staff_required()
def followups(request: HttpRequest) -> HttpResponse:
    form = FollowUpViewForm(request.GET or None)
    view = form.selected()
    page = _page(request, selectors.followup_queue(view=view))
    followup_rows_present(page.object_list)
    return render(request, "ops/followups.html", {
        "form": form,
        "view": view,
        "view_label": selectors.FOLLOWUP_VIEWS[view],
        "page": page,
        "can_work": request.user.has_perm(WORK_FOLLOWUPS),
        "note_form": FollowUpNoteForm(),
        "next_url": request.get_full_path(),  # where each row's forms come back to
    })


def _followup_row(request: HttpRequest, followup_id: int, *, error: str = "", note_form=None, status: int = 200):
    try:
        followup = selectors.followup_get(followup_id)
    except FollowUp.DoesNotExist:
        raise Http404("No such follow-up.") from None
    response = render(request, "ops/partials/followup.html", {
        "followup": followup_rows_present([followup])[0],
        "can_work": request.user.has_perm(WORK_FOLLOWUPS),
        "note_form": note_form or FollowUpNoteForm(),
        "row_error": error,
        "next_url": reverse("ops:followups"),
    }, status=status)
    if followup.state != FollowUp.State.OPEN:
        # The queue's header counts open follow-ups: it re-reads itself on this event.
        response["HX-Trigger"] = "followup-closed"
    return response


@require_GET
@staff_required()
def followup_row(request: HttpRequest, pk: int) -> HttpResponse:
    """One queue row, for htmx to re-render after a resend or resolve was posted."""
    return _followup_row(request, pk)


def _followup_act(request: HttpRequest, pk: int, act, *, success: str, note_form=None) -> HttpResponse:
    """Run one follow-up service; answer htmx with the re-rendered row, others with a redirect.

    A refusal (claimed by someone else, resolved, empty note) is shown in the row for htmx,
    which only swaps 2xx responses, and as a flash message otherwise. Nothing is written then.
    """
    error = ""
    try:
        act()
    except FollowUp.DoesNotExist:
        raise Http404("No such follow-up.") from None
    except FollowUpNotAllowed as exc:
        error = str(exc)
    if request.htmx:
        return _followup_row(request, pk, error=error, note_form=note_form if error else None)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, success)
    return redirect(safe_next(request, reverse("ops:followups")))


@require_POST
@staff_required(WORK_FOLLOWUPS)
def followup_claim_view(request: HttpRequest, pk: int) -> HttpResponse:
    return _followup_act(
        request, pk, lambda: followup_claim(followup_id=pk, actor=request.user), success="You claimed the follow-up."
    )


@require_POST
@staff_required(WORK_FOLLOWUPS)
def followup_release_view(request: HttpRequest, pk: int) -> HttpResponse:
    return _followup_act(
        request, pk, lambda: followup_release(followup_id=pk, actor=request.user), success="The follow-up is back in the queue."
    )


@require_POST
@staff_required(WORK_FOLLOWUPS)
def followup_note_add_view(request: HttpRequest, pk: int) -> HttpResponse:
    form = FollowUpNoteForm(request.POST)

    def add_note():
        # An unknown id is a 404 even when the note is empty.
        if not FollowUp.objects.filter(pk=pk).exists():
            raise FollowUp.DoesNotExist
        if not form.is_valid():
            raise FollowUpNotAllowed(" ".join(form.errors["text"]))
        followup_note_add(followup_id=pk, actor=request.user, text=form.cleaned_data["text"])

    return _followup_act(request, pk, add_note, success="Note added.", note_form=form)


@require_GET
@staff_required()
def audit(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(VIEW_AUDIT_LOG):
        raise PermissionDenied("You do not have permission to see the audit log.")
    form = AuditFilterForm(request.GET or None)
    page = _page(request, selectors.operator_actions(form.filters()), count_cap=COUNT_CAP)
    return render(request, "ops/audit.html", {"form": form, "page": page})
