"""The customer's order page, reached by the unguessable link in their email. No login.

(Staff pages are ops': ops.order_pages and ops.views.)
"""

from django.http import Http404
from django.shortcuts import render

from .presenters import customer_status_present
from .selectors.customer import customer_order, order_by_public_token


def customer_status_view(request, token: str):
    order = order_by_public_token(token)
    if order is None:
        raise Http404("We can't find an order at this address.")
    status = customer_status_present(customer_order(order))
    response = render(request, "orders/customer_status.html", {"status": status, "token": token,
                                                                 "order_id": order.pk})
    # The link is the key to the page: keep it out of Referer headers, caches and search engines.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    response["X-Robots-Tag"] = "noindex"
    return response
