"""Creating an order: the form, its live validation, and extra line rows."""

from django.conf import settings
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from orders.selectors.catalog import products_for_sale
from orders.services.ordering import OrderRejected, order_create

from ...permissions import CREATE_ORDER_PERMISSIONS, staff_required
from ..forms import MAX_LINES, OrderCreateForm


# Creating orders is for operators and admins (or a user granted orders.add_order).
create_order_required = staff_required(*CREATE_ORDER_PERMISSIONS, message="Only operators and admins can create orders.")


def _form(request, data=None) -> OrderCreateForm:
    return OrderCreateForm(data, products=products_for_sale(), faults_enabled=settings.SANDBOX_FAULTS_ENABLED)


@create_order_required
def order_create_view(request):
    if request.method != "POST":
        return render(request, "orders/create.html", {"form": _form(request), "can_create": True})
    form = _form(request, request.POST)
    if form.is_valid():
        try:
            order = order_create(
                customer_name=form.cleaned_data["customer_name"],
                customer_email=form.cleaned_data["customer_email"],
                lines=form.line_requests(),
                fault_plan=form.fault_plan(),
                created_by=request.user,
                shipping_address=form.shipping_address(),
            )
        except OrderRejected as rejected:
            form.add_service_errors(rejected.errors)
        else:
            return redirect("orders:detail", pk=order.pk)
    return render(request, "orders/create.html", {"form": form, "can_create": True}, status=400)


@require_POST
@create_order_required
def order_create_validate_view(request):
    """Live validation: per-field error slots, swapped out of band (empty ones clear)."""
    form = _form(request, request.POST)
    form.is_valid()
    return render(request, "orders/partials/order_form_errors.html", {"form": form, "errors": form.live_errors()})


@require_GET
@create_order_required
def order_create_line_view(request):
    """One more product line row for the form (the "Add a line" button)."""
    try:
        index = int(request.GET.get("index", ""))
    except ValueError:
        index = MAX_LINES
    context = {"next_index": index + 1, "max_lines": MAX_LINES, "row": None}
    if 0 <= index < MAX_LINES:
        form = OrderCreateForm(None, products=products_for_sale(),
                               faults_enabled=settings.SANDBOX_FAULTS_ENABLED, indices=[index])
        context["row"] = form.line_rows()[0]
    return render(request, "orders/partials/order_line_new.html", context)
