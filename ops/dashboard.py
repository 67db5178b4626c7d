"""The dashboard's figures (counts, recent activity, charts), rendered once per change.

Rendering them costs 70-90 ms at 100,000 orders (a GROUP BY over every order, five chart
aggregates, about 1,900 template nodes of SVG: docs/benchmarks.md), and they are the same
for every member of staff. So the rendered HTML is kept in Django's cache under a version
of the data it was drawn from, read in three index lookups (well under a millisecond):

- the newest saga event: every step, status change, stuck, follow-up and operator action
  of a saga writes one, in the transaction that changes the order;
- the newest order: an order placed before its saga records anything;
- the follow-ups' open count and latest resolution;
- the minute: the charts' ages and their 24-hour window move with the clock alone.

A change that writes none of these (an admin editing an order's status by hand) shows
within the minute. The outage banner is not cached: the breakers live in Redis and open
without a database write (ops.selectors.service_outages, one round trip).
"""

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.template.loader import render_to_string
from django.utils import timezone

from orders.models import FollowUp, Order, SagaEvent

from .charts.presenters import dashboard_charts_present
from .charts.selectors import dashboard_charts
from .selectors import dashboard_snapshot

# Long enough to outlive a quiet spell; a version that moved on is never read again.
CACHE_SECONDS = 300


def dashboard_data_version() -> str:
    """What the figures were drawn from, as a short string (see the module docstring)."""
    last_event = SagaEvent.objects.aggregate(v=Max("id"))["v"]
    last_order = Order.objects.aggregate(v=Max("id"))["v"]
    followups = FollowUp.objects.aggregate(
        open=Count("id", filter=Q(state=FollowUp.State.OPEN)), resolved=Max("resolved_at"), last=Max("id"))
    resolved = followups["resolved"].timestamp() if followups["resolved"] else 0
    minute = timezone.now().strftime("%Y%m%d%H%M")
    return f"{last_event}.{last_order}.{followups['open']}.{followups['last']}.{resolved}.{minute}"


def dashboard_figures_html(*, oob: bool) -> str:
    """The counts, the recent activity and the charts; `oob` marks them for htmx's
    out-of-band swap (the socket's frames) rather than in place (the page)."""
    key = f"ops:dashboard-figures:{int(oob)}:{dashboard_data_version()}"
    html = cache.get(key)
    if html is None:
        html = render_to_string("ops/partials/dashboard_figures.html", {
            "snapshot": dashboard_snapshot(),
            "charts": dashboard_charts_present(dashboard_charts()),
            "oob": oob,
        })
        cache.set(key, html, CACHE_SECONDS)
    return html
