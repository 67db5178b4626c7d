"""The order list: filters, search, sorting and pages; htmx re-renders only the table."""

from django.shortcuts import render

from ...http import htmx_partial
from ...permissions import can_create_orders, staff_required
from ...keyset import PageRequest
from ..forms import OrderFilterForm
from ..presenters import order_row_present
from ..selectors import order_list

TABLE_ID = "order-table"


@staff_required()
def order_list_view(request):
    form = OrderFilterForm(request.GET)
    form.is_valid()  # invalid filters are shown and left out, never an error page
    page = order_list(form.filters(), PageRequest.from_query(request.GET))
    page.object_list = [order_row_present(order) for order in page.object_list]
    context = {"form": form, "page": page, "can_create": can_create_orders(request.user)}
    template = "orders/partials/order_table.html" if htmx_partial(request, TABLE_ID) else "orders/list.html"
    return render(request, template, context)
