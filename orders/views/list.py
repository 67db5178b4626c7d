"""The order list: filters, search, sorting and pages; htmx re-renders only the table."""

from django.shortcuts import render

from ops.permissions import staff_required

from ..forms import OrderFilterForm, parse_page
from ..selectors import order_list
from .common import can_create_orders, htmx_partial

TABLE_ID = "order-table"


@staff_required()
def order_list_view(request):
    form = OrderFilterForm(request.GET)
    form.is_valid()  # invalid filters are shown and left out, never an error page
    page = order_list(form.filters(), page=parse_page(request.GET.get("page")))
    context = {"form": form, "page": page, "can_create": can_create_orders(request.user)}
    template = "orders/partials/order_table.html" if htmx_partial(request, TABLE_ID) else "orders/list.html"
    return render(request, template, context)
