"""The charts as the templates draw them: marks placed by geometry.py, with their words
(titles, descriptions, tooltips, legends, the table alternatives) and CSS classes.

Sizes are the SVG's user units; CSS (static/css/app.css, "charts") scales each drawing to
the width of its card.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from orders.selectors.waterfall import (
    ATTEMPT,
    COMPENSATION,
    FAILED,
    FOLLOWUP_WAIT,
    OPEN,
    OPERATOR_WAIT,
    RETRY_WAIT,
    SUCCEEDED,
    SagaWaterfall,
)

from ..templatetags.saga_timeline import track_label
from . import geometry
from .selectors import AGE_BUCKETS, OUTCOMES, AgeDistribution, DashboardCharts, HourCounts, StepFailures, StepHoldings

OUTCOME_LABELS = {
    "completed": "completed",
    "running": "in progress",
    "followup": "waiting on a follow-up",
    "stuck": "stuck",
    "failed": "failed (compensated)",
    "rejected": "rejected",
    "cancelled": "cancelled",
}
AGE_LABELS = {"5m": "< 5 min", "15m": "5–15 min", "1h": "15–60 min", "4h": "1–4 h", "24h": "4–24 h",
              "older": "> 1 day"}


def coordinate(value: float) -> SafeString:
    """A coordinate as the SVG gets it: a tenth of a unit is finer than a pixel.

    A string, and a safe one: a float in a template goes through number localisation and
    escaping, which measured most of the charts' render time (hundreds of marks)."""
    text = f"{value:.1f}"
    return mark_safe(text[:-2] if text.endswith(".0") else text)


def duration_text(seconds: float) -> str:
    """A duration in the largest units that keep it readable: 350 ms, 1.2 s, 4 min 5 s, 2 h 5 min, 3 d 4 h."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 86400:
        hours, rest = divmod(int(seconds) // 60, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, rest = divmod(int(seconds) // 3600, 24)
    return f"{days} d {rest} h" if rest else f"{days} d"


def tick_text(seconds: float) -> str:
    """A time-axis label: the offset from the saga's start."""
    return "0" if seconds == 0 else f"+{duration_text(seconds)}"


@dataclass(frozen=True)
class Mark:
    """A rectangle with its class and the tooltip (an SVG <title>) that says what it is."""

    x: float
    y: float
    width: float
    height: float
    css: str
    title: str

    def __post_init__(self):
        for name in ("x", "y", "width", "height"):
            object.__setattr__(self, name, coordinate(getattr(self, name)))


@dataclass(frozen=True)
class AxisLabel:
    x: float
    y: float
    text: str

    def __post_init__(self):
        object.__setattr__(self, "x", coordinate(self.x))
        object.__setattr__(self, "y", coordinate(self.y))


@dataclass(frozen=True)
class GridLine:
    x1: float
    y1: float
    x2: float
    y2: float
    label: AxisLabel

    def __post_init__(self):
        for name in ("x1", "y1", "x2", "y2"):
            object.__setattr__(self, name, coordinate(getattr(self, name)))


@dataclass
class ColumnChart:
    """A column chart (stacked or not) with a value axis, labels under some columns, and a table."""

    key: str
    title: str
    description: str
    width: int
    height: int
    marks: list[Mark]
    grid: list[GridLine]
    x_labels: list[AxisLabel]
    legend: list[tuple[str, str]]  # (css class, words)
    table_head: list[str]
    table_rows: list[list[str]]
    empty: str = ""  # the sentence shown instead of the chart when there is nothing to draw
    note: str = ""


# --- the dashboard ---------------------------------------------------------------------------

COLUMN_WIDTH, COLUMN_HEIGHT = 1000, 240
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 40, 8, 10, 24


def _value_grid(top: float, step: float, *, baseline: float, height: float, width: float) -> list[GridLine]:
    return [
        GridLine(x1=PLOT_LEFT, y1=t.position, x2=width - PLOT_RIGHT, y2=t.position,
                 label=AxisLabel(x=PLOT_LEFT - 6, y=t.position + 4, text=f"{t.value:g}"))
        for t in geometry.vertical_ticks(top, step, baseline=baseline, height=height)
    ]


def orders_per_hour_chart(hours: list[HourCounts]) -> ColumnChart:
    total = sum(h.total for h in hours)
    plot_height = COLUMN_HEIGHT - PLOT_TOP - PLOT_BOTTOM
    plot_width = COLUMN_WIDTH - PLOT_LEFT - PLOT_RIGHT
    baseline = COLUMN_HEIGHT - PLOT_BOTTOM
    top, step = geometry.value_axis(max((h.total for h in hours), default=0), integer=True)
    columns = geometry.stacked_columns([[h.counts[o] for o in OUTCOMES] for h in hours], top=top, x0=PLOT_LEFT,
                                       width=plot_width, baseline=baseline, height=plot_height)
    marks = []
    for hour, column in zip(hours, columns):
        span = f"{_hour(hour.start)}–{_hour(hour.start + timedelta(hours=1))}"
        for outcome, rect in zip(OUTCOMES, column.segments):
            if hour.counts[outcome]:
                marks.append(Mark(rect.x, rect.y, rect.width, rect.height, f"chart-outcome-{outcome}",
                                  f"{span}: {hour.counts[outcome]} {OUTCOME_LABELS[outcome]} of {hour.total}"))
    x_labels = [AxisLabel(x=c.x + c.width / 2, y=COLUMN_HEIGHT - 6, text=_hour(h.start))
                for h, c in zip(hours, columns) if h.start.hour % 3 == 0]
    busiest = max(hours, key=lambda h: h.total) if hours else None
    description = (f"{total} order{'s' if total != 1 else ''} placed in the last 24 hours"
                   + (f"; the busiest hour began at {_hour(busiest.start)} with {busiest.total}." if total else "."))
    used = [o for o in OUTCOMES if any(h.counts[o] for h in hours)]
    return ColumnChart(
        key="orders-per-hour", title="Orders per hour by outcome, last 24 hours", description=description,
        width=COLUMN_WIDTH, height=COLUMN_HEIGHT, marks=marks,
        grid=_value_grid(top, step, baseline=baseline, height=plot_height, width=COLUMN_WIDTH), x_labels=x_labels,
        legend=[(f"chart-outcome-{o}", OUTCOME_LABELS[o]) for o in used],
        table_head=["Hour (UTC)", *[OUTCOME_LABELS[o].capitalize() for o in used], "Total"],
        table_rows=[[_hour(h.start), *[str(h.counts[o]) for o in used], str(h.total)] for h in hours if h.total],
        empty="" if total else "No orders were placed in the last 24 hours.",
    )


def _hour(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


def age_chart(key: str, title: str, ages: AgeDistribution, *, noun: str, empty: str, note: str = "") -> ColumnChart:
    width, height = 520, 200
    plot_height = height - PLOT_TOP - PLOT_BOTTOM
    baseline = height - PLOT_BOTTOM
    keys = [k for _, k in AGE_BUCKETS]
    top, step = geometry.value_axis(max(ages.counts.values(), default=0), integer=True)
    columns = geometry.stacked_columns([[ages.counts[k]] for k in keys], top=top, x0=PLOT_LEFT,
                                       width=width - PLOT_LEFT - PLOT_RIGHT, baseline=baseline, height=plot_height,
                                       gap=8)
    marks = [
        Mark(c.segments[0].x, c.segments[0].y, c.segments[0].width, c.segments[0].height,
             "chart-age-old" if k in ("24h", "older") else "chart-age",
             f"{ages.counts[k]} {noun}{'s' if ages.counts[k] != 1 else ''} waiting {AGE_LABELS[k]}")
        for k, c in zip(keys, columns) if ages.counts[k]
    ]
    x_labels = [AxisLabel(x=c.x + c.width / 2, y=height - 6, text=AGE_LABELS[k]) for k, c in zip(keys, columns)]
    oldest = ages.oldest_age
    description = (f"{ages.total} {noun}{'s' if ages.total != 1 else ''} waiting"
                   + (f"; the oldest for {duration_text(oldest.total_seconds())}." if oldest else "."))
    return ColumnChart(
        key=key, title=title, description=description, width=width, height=height, marks=marks,
        grid=_value_grid(top, step, baseline=baseline, height=plot_height, width=width), x_labels=x_labels, legend=[],
        table_head=["Waiting", noun.capitalize() + "s"],
        table_rows=[[AGE_LABELS[k], str(ages.counts[k])] for k in keys],
        empty="" if ages.total else empty, note=note if ages.total else "",
    )


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    width: float
    value_text: str
    css: str
    title: str

    def __post_init__(self):
        object.__setattr__(self, "width", coordinate(self.width))

    @property
    def top(self) -> SafeString:
        return coordinate(self.y)

    @property
    def text_y(self) -> SafeString:
        return coordinate(self.y + 14)  # the baseline of the row's words, level with the bar


@dataclass
class BarChart:
    """Horizontal bars, one per row, each labelled on the left and valued on the right."""

    key: str
    title: str
    description: str
    width: int
    height: int
    label_width: int
    bar_height: int
    bars: list[Bar]
    table_head: list[str]
    table_rows: list[list[str]]
    empty: str = ""

    @property
    def bar_x(self) -> int:
        return self.label_width

    @property
    def label_x(self) -> int:
        return self.label_width - 8

    @property
    def track_width(self) -> int:
        return self.width - self.label_width - BAR_VALUE_ROOM

    @property
    def value_x(self) -> int:
        return self.width - BAR_VALUE_ROOM + 6


BAR_ROW, BAR_HEIGHT, BAR_LABEL_WIDTH, BAR_CHART_WIDTH, BAR_VALUE_ROOM = 28, 18, 150, 520, 150


def failure_rate_chart(rates: list[StepFailures]) -> BarChart:
    track = BAR_CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_ROOM
    bars = []
    for i, row in enumerate(rates):
        rate = row.rate
        if rate is None:
            text, title = "no attempts", f"{row.label}: no attempt ended in the last 24 hours"
        else:
            text = f"{rate:.0%} ({row.failures} of {row.attempts})"
            title = f"{row.label}: {row.failures} of {row.attempts} attempts failed ({rate:.1%})"
        bars.append(Bar(
            label=row.label, y=i * BAR_ROW + 4,
            width=geometry.bar_width(rate or 0, top=1.0, width=track, minimum=2),
            value_text=text, css="chart-rate-high" if (rate or 0) >= 0.25 else "chart-rate", title=title,
        ))
    attempts = sum(r.attempts for r in rates)
    worst = max((r for r in rates if r.rate is not None), key=lambda r: r.rate, default=None)
    description = (f"{attempts} step attempts ended in the last 24 hours"
                   + (f"; {worst.label} failed most often, {worst.rate:.0%} of its attempts." if worst else "."))
    return BarChart(
        key="failure-rate", title="Failure rate per step, last 24 hours", description=description,
        width=BAR_CHART_WIDTH, height=len(rates) * BAR_ROW + 8, label_width=BAR_LABEL_WIDTH, bar_height=BAR_HEIGHT,
        bars=bars, table_head=["Step", "Attempts", "Failed", "Failure rate"],
        table_rows=[[r.label, str(r.attempts), str(r.failures), f"{r.rate:.1%}" if r.rate is not None else "—"]
                    for r in rates],
        empty="" if attempts else "No step finished an attempt in the last 24 hours.",
    )


def _money_text(money: dict[str, Decimal]) -> str:
    return ", ".join(f"{amount:,.2f} {currency}" for currency, amount in sorted(money.items())) or "none"


def holdings_chart(holdings: list[StepHoldings], *, stuck_total: int) -> BarChart:
    """Up to two bars per step the stuck orders are stuck at: money charged and not
    refunded (scaled within its currency) and units of stock reserved for them."""
    track = BAR_CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_ROOM
    money_top: dict[str, Decimal] = {}
    money_total: dict[str, Decimal] = {}
    for h in holdings:
        for currency, amount in h.money.items():
            money_top[currency] = max(money_top.get(currency, Decimal(0)), amount)
            money_total[currency] = money_total.get(currency, Decimal(0)) + amount
    units_top = max((h.units_reserved for h in holdings), default=0)
    bars, y = [], 4
    for h in holdings:
        for currency, amount in sorted(h.money.items()):
            bars.append(Bar(label=f"{h.label}: money", y=y,
                            width=geometry.bar_width(float(amount), top=float(money_top[currency]), width=track,
                                                     minimum=2),
                            value_text=f"{amount:,.2f} {currency}", css="chart-money",
                            title=f"Orders stuck at {h.label} hold {amount:,.2f} {currency} charged and not refunded"))
            y += BAR_ROW
        if h.units_reserved:
            units = h.units_reserved
            bars.append(Bar(label=f"{h.label}: stock", y=y,
                            width=geometry.bar_width(units, top=units_top, width=track, minimum=2),
                            value_text=f"{units} unit{'s' if units != 1 else ''}", css="chart-stock",
                            title=f"Orders stuck at {h.label} hold {units} unit{'s' if units != 1 else ''} of stock "
                                  f"reserved"))
            y += BAR_ROW
    units_total = sum(h.units_reserved for h in holdings)
    money_words = f"{_money_text(money_total)} charged and not refunded" if money_total else "no money"
    description = (f"Stuck orders hold {money_words}, and {units_total} unit{'s' if units_total != 1 else ''} "
                   f"of stock reserved.")
    if not stuck_total:
        empty = "No saga is stuck, so no order holds money or stock."
    elif not holdings:
        empty = "The stuck orders hold no money and no stock."
    else:
        empty = ""
    return BarChart(
        key="stuck-holdings", title="Money and stock held by stuck orders, by the step they are stuck at",
        description=description, width=BAR_CHART_WIDTH, height=max(y + 4, 8), label_width=BAR_LABEL_WIDTH,
        bar_height=BAR_HEIGHT, bars=bars,
        table_head=["Stuck at", "Money charged, not refunded", "Units of stock reserved"],
        table_rows=[[h.label, _money_text(h.money), str(h.units_reserved)] for h in holdings],
        empty=empty,
    )


@dataclass
class DashboardChartsView:
    taken_at: datetime
    per_hour: ColumnChart
    failure_rate: BarChart
    stuck_ages: ColumnChart
    followup_ages: ColumnChart
    holdings: BarChart


def dashboard_charts_present(charts: DashboardCharts) -> DashboardChartsView:
    by_step = ", ".join(f"{s.orders} at {s.label}" for s in charts.stuck.by_step)
    return DashboardChartsView(
        taken_at=charts.taken_at,
        per_hour=orders_per_hour_chart(charts.per_hour),
        failure_rate=failure_rate_chart(charts.failure_rates),
        stuck_ages=age_chart("stuck-ages", "How long stuck sagas have waited for an operator", charts.stuck.ages,
                             noun="stuck saga", empty="No saga is stuck.",
                             note=f"Stuck: {by_step}." if by_step else ""),
        followup_ages=age_chart("followup-ages", "How long open follow-ups have waited", charts.followups,
                                noun="open follow-up", empty="No follow-up is open."),
        holdings=holdings_chart(charts.stuck.holdings, stuck_total=charts.stuck.ages.total),
    )


# --- the order page: the saga as a waterfall ---------------------------------------------------

WATERFALL_WIDTH, WATERFALL_LABEL, WATERFALL_RIGHT, WATERFALL_ROW, WATERFALL_AXIS = 760, 170, 12, 26, 22

SPAN_WORDS = {
    ATTEMPT: "attempt",
    COMPENSATION: "attempt",
    RETRY_WAIT: "waiting to retry",
    OPERATOR_WAIT: "waiting for an operator",
    FOLLOWUP_WAIT: "waiting in the follow-up queue",
}
OUTCOME_WORDS = {SUCCEEDED: "succeeded", FAILED: "failed", OPEN: "still going", "ended": "ended"}


@dataclass
class WaterfallRowView:
    key: str
    label: str
    y: float
    marks: list[Mark] = field(default_factory=list)

    @property
    def text_y(self) -> SafeString:
        return coordinate(self.y + 17)


@dataclass
class WaterfallView:
    order_id: int
    title: str
    description: str
    width: int
    height: int
    label_width: int
    rows: list[WaterfallRowView]
    ticks: list[AxisLabel]
    grid: list[float]
    table_rows: list[list[str]]
    legend: list[tuple[str, str]]
    empty: str = ""
    live: bool = False

    @property
    def label_x(self) -> int:
        return self.label_width - 8

    @property
    def axis_y(self) -> int:
        return self.height - WATERFALL_AXIS


def _span_css(kind: str, outcome: str) -> str:
    if kind in (ATTEMPT, COMPENSATION):
        css = f"wf-{'compensation' if kind == COMPENSATION else 'attempt'} wf-{outcome}"
    else:
        css = f"wf-wait wf-{kind.replace('_', '-')}"
    return css + (" wf-open" if outcome == OPEN else "")


def waterfall_present(waterfall: SagaWaterfall) -> WaterfallView:
    if waterfall.empty:
        return WaterfallView(
            order_id=waterfall.order_id, title="The saga on a time axis", description="",
            width=WATERFALL_WIDTH, height=0, label_width=WATERFALL_LABEL, rows=[], ticks=[], grid=[], table_rows=[],
            legend=[], empty="The saga has not recorded a step yet: its waterfall starts with the first one.",
        )
    total = waterfall.seconds
    plot_width = WATERFALL_WIDTH - WATERFALL_LABEL - WATERFALL_RIGHT
    rows, table = [], []
    for i, row in enumerate(waterfall.rows):
        label = track_label(row)
        view = WaterfallRowView(key=row.key, label=label, y=i * WATERFALL_ROW)
        for span in row.spans:
            start = (span.start - waterfall.start).total_seconds()
            end = (span.end - waterfall.start).total_seconds()
            x, w = geometry.time_span(start, end, total_seconds=total, x0=WATERFALL_LABEL, width=plot_width)
            waiting = span.kind not in (ATTEMPT, COMPENSATION)
            what = (f"attempt {span.attempt}" if not waiting else SPAN_WORDS[span.kind])
            outcome = OUTCOME_WORDS.get(span.outcome, span.outcome)
            took = duration_text(span.seconds)
            title = f"{label}, {what}: {took}" + ("" if waiting and span.outcome != OPEN else f", {outcome}")
            if span.actor:
                title += f" (answered by {span.actor})"
            if span.detail and span.outcome == FAILED:
                title += f" ({span.detail})"
            css = _span_css(span.kind, span.outcome)
            height = WATERFALL_ROW - 10 if not waiting else WATERFALL_ROW - 18
            y = view.y + (WATERFALL_ROW - height) / 2
            view.marks.append(Mark(x, y, w, height, css, title))
            if waiting and span.outcome != OPEN:
                outcome = "ended" + (f" by {span.actor}" if span.actor else "")
            table.append([label, what.capitalize(), tick_text(start), took, outcome])
        rows.append(view)
    axis_y = len(rows) * WATERFALL_ROW
    ticks = geometry.time_ticks(total, x0=WATERFALL_LABEL, width=plot_width)
    legend_all = [
        ("wf-succeeded", "attempt succeeded"), ("wf-failed", "attempt failed"), ("wf-open", "running or waiting now"),
        ("wf-retry-wait", "waiting to retry"), ("wf-operator-wait", "waiting for an operator"),
        ("wf-followup-wait", "waiting in the follow-up queue"),
    ]
    css_seen = {c for r in rows for m in r.marks for c in m.css.split()}
    attempts = sum(1 for r in waterfall.rows for s in r.spans if s.kind in (ATTEMPT, COMPENSATION))
    retries = sum(max(r.attempts - 1, 0) for r in waterfall.rows if not r.compensation)
    waits = [s for r in waterfall.rows for s in r.spans if s.kind in (OPERATOR_WAIT, FOLLOWUP_WAIT)]
    steps = sum(1 for r in waterfall.rows if not r.compensation)
    undone = len(waterfall.rows) - steps
    description = (f"{steps} step{'s' if steps != 1 else ''}"
                   + (f" and {undone} compensation{'s' if undone != 1 else ''}" if undone else "")
                   + f" over {duration_text(total)}{' so far' if waterfall.live else ''}: {attempts} attempt"
                   f"{'s' if attempts != 1 else ''}, {retries} retr{'ies' if retries != 1 else 'y'}"
                   + (f", {len(waits)} wait{'s' if len(waits) != 1 else ''} for staff totalling "
                      f"{duration_text(sum(s.seconds for s in waits))}" if waits else "") + ".")
    return WaterfallView(
        order_id=waterfall.order_id, title="The saga on a time axis", description=description,
        width=WATERFALL_WIDTH, height=axis_y + WATERFALL_AXIS, label_width=WATERFALL_LABEL, rows=rows,
        ticks=[AxisLabel(x=t.position, y=axis_y + 16, text=tick_text(t.value)) for t in ticks],
        grid=[coordinate(t.position) for t in ticks], table_rows=table,
        legend=[(css, words) for css, words in legend_all if css in css_seen], live=waterfall.live,
    )
