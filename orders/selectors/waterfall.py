"""An order's saga as a waterfall: spans on a time axis, one row per step and one per
compensation, folded from its SagaEvent rows (the same rows the timeline reads).

A span is an attempt of a step (started/retrying to succeeded/failed), the wait before a
retry (failed to the next attempt), a wait for an operator (stuck to the signal that
unblocked it) or for the follow-up queue (follow-up opened to resolved/resend), or a
compensation's attempt. Spans still open end at `now` unless the saga is over, when they
end at its last event. Data only: where they go on the page is ops/charts/geometry.py.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from ..models import Order
from ..saga.shared import StepName
from ..status import TERMINAL_SAGA_STATUSES
from .timeline import SagaTimeline, TimelineEvent, saga_events_with_commands, saga_timeline_build

# Span kinds
ATTEMPT = "attempt"
RETRY_WAIT = "retry_wait"
OPERATOR_WAIT = "operator_wait"
FOLLOWUP_WAIT = "followup_wait"
COMPENSATION = "compensation"

# Span outcomes
SUCCEEDED = "succeeded"
FAILED = "failed"
OPEN = "open"  # still running or still waiting
ENDED = "ended"  # a wait that ended (a retry began, an operator answered)


@dataclass
class WaterfallSpan:
    kind: str
    start: datetime
    end: datetime | None = None
    outcome: str = OPEN
    attempt: int = 1
    detail: str = ""
    # Who ended a wait for an operator (the signal's sender), if anyone did.
    actor: str = ""

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) if self.end else 0.0


@dataclass
class WaterfallRow:
    step: str
    compensation: bool = False
    spans: list[WaterfallSpan] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{'undo' if self.compensation else 'step'}-{self.step}"

    @property
    def attempts(self) -> int:
        return sum(1 for span in self.spans if span.kind in (ATTEMPT, COMPENSATION))

    def open_span(self, *kinds: str) -> WaterfallSpan | None:
        span = self.spans[-1] if self.spans else None
        return span if span is not None and span.outcome == OPEN and span.kind in kinds else None


@dataclass
class SagaWaterfall:
    order_id: int
    start: datetime | None
    end: datetime | None
    rows: list[WaterfallRow]
    # True while the saga runs: open spans end at `end`, which is "now".
    live: bool

    @property
    def empty(self) -> bool:
        return not any(row.spans for row in self.rows)

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) if self.start and self.end else 0.0


def timeline_events(timeline: SagaTimeline) -> list[TimelineEvent]:
    """Every event of a timeline, in the order the saga recorded them."""
    events = [event for track in (*timeline.steps, *timeline.compensations) for event in track.events]
    return sorted([*events, *timeline.saga_events], key=lambda event: event.id)


def saga_waterfall_build(timeline: SagaTimeline, *, now: datetime | None = None) -> SagaWaterfall:
    """Fold a timeline's events (read already: no query) into waterfall rows."""
    now = now or timezone.now()
    order = timeline.order
    events = timeline_events(timeline)
    rows: dict[tuple[str, bool], WaterfallRow] = {}
    compensating: set[str] = set()
    previous_at = order.created_at
    last_at = None  # the last event folded in: the saga's end when it is over

    def row_of(step: str, compensation: bool) -> WaterfallRow:
        key = (step, compensation)
        if key not in rows:
            rows[key] = WaterfallRow(step=step, compensation=compensation)
        return rows[key]

    for event in events:
        at, kind = event.created_at, event.kind
        last_at = at
        if not event.step:
            if kind == "finished":
                for row in rows.values():
                    _close_waits(row, at, drop_retry_wait=True)
                # The saga's end: later rows (the delivery tracker's, a return's) are not its.
                break
            previous_at = at
            continue
        # A failure after the step's compensation began is the compensation failing (as in the timeline).
        undoing = kind in ("compensating", "compensated") or (
            kind in ("failed", "stuck") and event.step in compensating)
        if kind in ("compensating", "compensated"):
            if not compensating:
                # The saga is undoing what it did: no forward step will be retried now.
                for row in rows.values():
                    if not row.compensation:
                        _close_waits(row, at, drop_retry_wait=True)
            compensating.add(event.step)
        if not undoing and (event.step, False) in rows and any(
                span.kind == ATTEMPT and span.outcome == SUCCEEDED for span in rows[(event.step, False)].spans):
            # A step succeeds once. Later rows on its track are others' (the delivery
            # tracker's shipped email and carrier events on "ship"), not more attempts.
            continue
        row = row_of(event.step, undoing)
        if kind in ("started", "retrying", "compensating"):
            _close_waits(row, at)
            row.spans.append(WaterfallSpan(kind=COMPENSATION if undoing else ATTEMPT, start=at, attempt=event.attempt,
                                           detail=event.detail))
        elif kind in ("succeeded", "compensated", "failed"):
            _close_waits(row, at)
            span = row.open_span(ATTEMPT, COMPENSATION)
            if span is None:
                # Steps that record only their outcome (a local activity's quick write) ran
                # since the saga's previous event.
                span = WaterfallSpan(kind=COMPENSATION if undoing else ATTEMPT, start=min(previous_at, at),
                                     attempt=event.attempt)
                row.spans.append(span)
            span.end, span.attempt = at, max(span.attempt, event.attempt)
            span.outcome = FAILED if kind == "failed" else SUCCEEDED
            if kind == "failed":
                span.detail = event.detail
                # Until the next attempt (or the saga giving up on it) the step waits to retry.
                row.spans.append(WaterfallSpan(kind=RETRY_WAIT, start=at, attempt=event.attempt + 1))
        elif kind == "stuck":
            _close_waits(row, at, drop_retry_wait=True)
            row.spans.append(WaterfallSpan(kind=OPERATOR_WAIT, start=at, detail=event.detail))
        elif kind == "followup":
            _close_waits(row, at, drop_retry_wait=True)
            row.spans.append(WaterfallSpan(kind=FOLLOWUP_WAIT, start=at, detail=event.detail))
        elif kind in ("signal", "ignored"):
            span = row.open_span(OPERATOR_WAIT, FOLLOWUP_WAIT)
            if span is not None and kind == "signal":
                span.end, span.outcome, span.actor = at, ENDED, event.actor
        previous_at = at

    live = order.saga_status not in TERMINAL_SAGA_STATUSES
    end = now if live else last_at
    for row in rows.values():
        for span in row.spans:
            if span.end is None:
                span.end = max(end or span.start, span.start)
        if not live:
            # A retry wait with no retry after it never happened: the saga ended instead.
            row.spans = [s for s in row.spans if not (s.kind == RETRY_WAIT and s.outcome == OPEN)]
    ordered = [rows[key] for key in _row_order(rows)]
    start = order.created_at if events else None
    return SagaWaterfall(order_id=order.pk, start=start, end=end if events else None, rows=ordered, live=live)


def _close_waits(row: WaterfallRow, at: datetime, *, drop_retry_wait: bool = False) -> None:
    span = row.open_span(RETRY_WAIT, OPERATOR_WAIT, FOLLOWUP_WAIT)
    if span is None:
        return
    if drop_retry_wait and span.kind == RETRY_WAIT:
        # No retry came: the saga gave up (the time since the failure is then the
        # operator's wait), turned to compensating, or ended.
        row.spans.pop()
        return
    span.end, span.outcome = at, ENDED


def _row_order(rows: dict[tuple[str, bool], WaterfallRow]) -> list[tuple[str, bool]]:
    """Forward steps in saga order, then compensations in the order they began."""
    order = [s.value for s in StepName]
    forward = sorted((key for key in rows if not key[1]),
                     key=lambda key: order.index(key[0]) if key[0] in order else len(order))
    # Every row holds a span from the event that made it.
    undo = sorted((key for key in rows if key[1]), key=lambda key: rows[key].spans[0].start)
    return forward + undo


def saga_waterfall(order_id: int, *, now: datetime | None = None) -> SagaWaterfall | None:
    """The waterfall of one order: the order and its events, two queries. None if no such order."""
    order = Order.objects.filter(pk=order_id).order_by().first()
    if order is None:
        return None
    return saga_waterfall_build(saga_timeline_build(order, saga_events_with_commands(order.pk)), now=now)
