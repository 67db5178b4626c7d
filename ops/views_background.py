"""Pages of the background operations: flagged sagas, reconciliation reports, bulk actions.

Views check permissions, parse input and call one selector or service; the work itself
runs in Celery (ops.tasks).
"""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from orders.selectors.preview import bulk_rollback_preview
from orders.status import Step

from . import bulk, reconciliation, tasks
from .http import safe_next
from .stalls import selectors as sweeper
from .models import BulkOperation, ReconciliationRun
from .order_pages.presenters import ROLLBACK_ACTIONS, bulk_rollback_lines
from .permissions import OPERATE_SAGAS, staff_required

FLAGS_PAGE_LIMIT = 500


# --- stalled sagas -----------------------------------------------------------------------------


@require_GET
@staff_required()
def flags(request: HttpRequest) -> HttpResponse:
    context = {
        "flags": sweeper.stall_flags_open(limit=FLAGS_PAGE_LIMIT),
        "last_run": sweeper.sweeper_last_run(),
        "stall_minutes": settings.SWEEPER_STALL_SECONDS / 60,
        "can_operate": request.user.has_perm(OPERATE_SAGAS),
    }
    if request.htmx:
        return render(request, "ops/background/partials/flags_table.html", context)
    return render(request, "ops/background/flags.html", context)


@require_POST
@staff_required(OPERATE_SAGAS)
def sweep_now(request: HttpRequest) -> HttpResponse:
    tasks.stalled_saga_sweep.delay()
    messages.success(request, "Sweep started: flags update here within a few seconds.")
    return redirect("background:flags")


# --- bulk operator actions ------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@staff_required()
def bulk_operations(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _bulk_create(request)
    return render(request, "ops/background/bulk_list.html", {"operations": bulk.bulk_operations_recent()})


def _bulk_create(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(OPERATE_SAGAS):
        raise PermissionDenied("You are not allowed to retry or compensate sagas.")
    action = request.POST.get("action", "")
    try:
        if action in ROLLBACK_ACTIONS and request.POST.get("confirmed") != "yes":
            # A rollback cannot be taken back: first what it would do, from the ledgers now.
            return _bulk_confirm(request, action)
        operation = bulk.bulk_operation_create(
            action=request.POST.get("action", ""),
            actor=request.user,
            reason=request.POST.get("reason", ""),
            order_ids=request.POST.getlist("order_ids"),
            step=request.POST.get("step", ""),
        )
    except bulk.BulkInputInvalid as exc:
        if request.htmx:
            return render(request, "ops/background/partials/bulk_error.html", {"error": str(exc)})
        messages.error(request, str(exc))
        return redirect(safe_next(request, reverse("ops:stuck"), or_referer=True))
    url = reverse("background:bulk_detail", args=[operation.pk])
    if request.htmx:
        response = render(request, "ops/background/partials/bulk_progress.html",
                          {"progress": bulk.bulk_operation_progress(operation_id=operation.pk)})
        response["HX-Push-Url"] = url
        return response
    return redirect(url)


def _bulk_confirm(request: HttpRequest, action: str) -> HttpResponse:
    order_ids = request.POST.getlist("order_ids")
    step = request.POST.get("step", "").strip()
    ids = bulk.bulk_selection(action=action, actor=request.user, order_ids=order_ids, step=step)
    context = {
        "action": action, "reason": request.POST.get("reason", ""), "step": step,
        # The selection as sent (a step stays a step: the orders stuck there when it runs).
        "order_ids": [] if step else ids, "count": len(ids),
        "preview_lines": bulk_rollback_lines(bulk_rollback_preview(ids)),
        "next": safe_next(request, reverse("ops:stuck"), or_referer=True),
    }
    return render(request, "ops/background/bulk_confirm.html", context)


@require_GET
@staff_required()
def bulk_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        progress = bulk.bulk_operation_progress(operation_id=pk)
    except BulkOperation.DoesNotExist:
        raise Http404("No such bulk operation.") from None
    context = {"progress": progress, "can_operate": request.user.has_perm(OPERATE_SAGAS)}
    if request.htmx:
        return render(request, "ops/background/partials/bulk_progress.html", context)
    return render(request, "ops/background/bulk_detail.html", context)


# --- reconciliation ---------------------------------------------------------------------------


@require_GET
@staff_required()
def reconciliation_list(request: HttpRequest) -> HttpResponse:
    return render(request, "ops/background/reconciliation_list.html", {
        "runs": reconciliation.reconciliation_runs(),
        "can_operate": request.user.has_perm(OPERATE_SAGAS),
    })


@require_POST
@staff_required(OPERATE_SAGAS)
def reconciliation_request(request: HttpRequest) -> HttpResponse:
    run = reconciliation.reconciliation_run_request(actor=request.user)
    messages.success(request, f"Reconciliation #{run.pk} queued: this page shows its report when it is done.")
    return redirect("background:reconciliation_detail", run.pk)


@require_GET
@staff_required()
def reconciliation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        run, groups = reconciliation.reconciliation_report(run_id=pk)
    except ReconciliationRun.DoesNotExist:
        raise Http404("No such reconciliation run.") from None
    context = {"run": run, "groups": groups, "steps": dict(Step.choices)}
    if request.htmx:
        return render(request, "ops/background/partials/reconciliation_report.html", context)
    return render(request, "ops/background/reconciliation_detail.html", context)
