"""An order's saga as tracks: one per step, one per compensation (in the order they ran),
and the events of the saga as a whole. Operator commands come with their record (who,
why) through SagaEvent.operator_action.
"""

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..models import Order, SagaEvent
from ..saga.shared import StepName
from ..status import STUCK_SAGA_STATUSES, TERMINAL_SAGA_STATUSES

Kind = SagaEvent.Kind


@dataclass
class TimelineEvent:
    id: int
    step: str
    kind: str
    detail: str
    attempt: int
    created_at: datetime
    # Who asked for it, for signals and ignored commands (from the command's record).
    actor: str = ""
    reason: str = ""

    @property
    def operator(self) -> bool:
        return self.kind in (Kind.SIGNAL, Kind.IGNORED)


@dataclass
class StepTrack:
    """One step (or one compensation) and what happened to it, in order.

    state: pending, running, retrying, failed, stuck, succeeded, compensating,
    compensated, followup, resolved or skipped.
    """

    step: str
    number: int = 0
    compensation: bool = False
    state: str = "pending"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str = ""
    events: list[TimelineEvent] = field(default_factory=list)
    # Time spent stuck, waiting for an operator: not the step's own running time.
    waited: timedelta = timedelta(0)
    stuck_at: datetime | None = None
    # Attempts made before an operator's retry, when the new run counts its own from 1
    # (sagas started before attempts were numbered across runs).
    attempt_base: int = 0

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at - self.waited
        return None

    @property
    def duration_ms(self) -> int | None:
        duration = self.duration
        return None if duration is None else int(duration.total_seconds() * 1000)


@dataclass
class SagaTimeline:
    order: Order
    steps: list[StepTrack]
    # Compensations in the order they ran (the reverse of the steps they undo).
    compensations: list[StepTrack]
    # Saga-level events that belong to no step: finished, could not start.
    saga_events: list[TimelineEvent]
    event_count: int
    last_event_id: int | None

    @property
    def undid_something(self) -> bool:
        """Whether a compensation undid an effect (a refund, a restock, a release...)."""
        return any(track.state == "compensated" for track in self.compensations)

    @property
    def shipment_refused(self) -> bool:
        track = self.step_track(StepName.SHIP.value)
        return track is not None and track.state == "refused"

    @property
    def terminal(self) -> bool:
        return self.order.saga_status in TERMINAL_SAGA_STATUSES

    def step_track(self, step: str) -> StepTrack | None:
        return next((track for track in self.steps if track.step == step), None)

    def forward_track_of(self, event_id: int) -> StepTrack | None:
        """The forward step whose track holds this event, or None (a compensation, a
        saga-level event, or not loaded): the socket then re-renders the whole timeline."""
        for track in self.steps:
            if any(event.id == event_id for event in track.events):
                return track
        return None


def saga_events_with_commands(order_id: int) -> list[SagaEvent]:
    """The order's events in order, each with the command (and its sender) that caused it. One query."""
    return list(
        SagaEvent.objects.filter(order_id=order_id).select_related("operator_action__actor").order_by("id")
    )


def saga_timeline_build(order: Order, events: list[SagaEvent]) -> SagaTimeline:
    """Fold the event log into one track per step plus a reverse track of compensations.

    `events` come from saga_events_with_commands (their commands are read, not queried).
    """
    steps = {s.value: StepTrack(step=s.value, number=i) for i, s in enumerate(StepName, 1)}
    compensations: dict[str, StepTrack] = {}
    saga_events: list[TimelineEvent] = []

    for event in events:
        action = event.operator_action if event.operator_action_id else None
        item = TimelineEvent(
            id=event.pk, step=event.step, kind=event.kind, detail=event.detail, attempt=event.attempt,
            created_at=event.created_at,
            actor=(action.actor.get_username() if action and action.actor else ""),
            reason=(action.reason if action else ""),
        )
        if event.step not in steps:
            saga_events.append(item)
            continue
        undoing = event.kind in (Kind.COMPENSATING, Kind.COMPENSATED)
        # A failure after the step's compensation began is the compensation failing.
        if undoing or (event.kind in (Kind.FAILED, Kind.STUCK) and event.step in compensations):
            track = compensations.get(event.step)
            if track is None:
                track = compensations[event.step] = StepTrack(step=event.step, compensation=True)
            _advance(track, item)
        else:
            _advance(steps[event.step], item)

    for step, undo in compensations.items():
        forward = steps[step]
        if forward.state == "failed":
            # The saga also undoes the step that failed, in case it partly acted; the step
            # itself still failed (a refused shipment is not "undone").
            if _refused_by_carrier(forward):
                forward.state = "refused"
            continue
        forward.state = "compensated" if undo.state == "succeeded" else "compensating"
    for track in compensations.values():
        if track.state == "succeeded":
            # "Nothing was charged/booked...": the undo found nothing to undo.
            done = next((e for e in reversed(track.events) if e.kind == Kind.COMPENSATED), None)
            track.state = "nothing_to_undo" if done and done.detail.startswith("Nothing was") else "compensated"
        elif track.state == "running":
            track.state = "compensating"
    if order.saga_status not in STUCK_SAGA_STATUSES:
        # Nobody is waiting any more (an operator compensated or cancelled): the step failed.
        for track in (*steps.values(), *compensations.values()):
            if track.state == "stuck":
                track.state = "failed"
    if order.saga_status in TERMINAL_SAGA_STATUSES:
        # Steps the saga never reached are "not run", not "not started yet".
        for track in steps.values():
            if track.state == "pending":
                track.state = "skipped"
    return SagaTimeline(
        order=order,
        steps=list(steps.values()),
        compensations=list(compensations.values()),
        saga_events=saga_events,
        event_count=len(events),
        last_event_id=events[-1].pk if events else None,
    )


def _refused_by_carrier(track: StepTrack) -> bool:
    # The carrier's refusal is final (ShippingRejected is not retried): its words say so.
    return track.step == StepName.SHIP.value and "refused" in track.last_error.lower()


def _advance(track: StepTrack, event: TimelineEvent) -> None:
    track.events.append(event)
    kind = event.kind
    if kind in (Kind.STARTED, Kind.RETRYING, Kind.COMPENSATING) and track.stuck_at is not None:
        # An operator's retry: the wait for them is not part of the step's duration, and
        # the attempts go on from those already made.
        track.waited += event.created_at - track.stuck_at
        track.stuck_at = None
        if track.attempt_base + event.attempt <= track.attempts:
            track.attempt_base = track.attempts
    attempt = track.attempt_base + event.attempt
    if kind in (Kind.STARTED, Kind.RETRYING, Kind.COMPENSATING):
        track.state = "retrying" if attempt > 1 else "running"
        track.attempts = max(track.attempts, attempt)
        track.started_at = track.started_at or event.created_at
        track.finished_at = None
    elif kind == Kind.FAILED:
        track.state = "failed"
        track.attempts = max(track.attempts, attempt)
        track.last_error = event.detail
    elif kind == Kind.STUCK:
        track.state = "stuck"
        track.last_error = event.detail
        track.stuck_at = track.stuck_at or event.created_at
    elif kind in (Kind.SUCCEEDED, Kind.COMPENSATED):
        track.state = "succeeded"
        track.attempts = max(track.attempts, attempt)
        track.started_at = track.started_at or event.created_at
        track.finished_at = event.created_at
    elif kind == Kind.FOLLOWUP:
        track.state = "followup"
        track.last_error = event.detail
    elif kind == Kind.SIGNAL and event.detail.startswith(("resolved", "Follow-up resolved")) and track.state == "followup":
        track.state = "resolved"


# Kinds that a fold leaves to the build: an undo (the compensation track and the states it
# gives its forward step) and operator commands (who sent them is read with the event).
_NOT_FOLDED = frozenset({Kind.COMPENSATING, Kind.COMPENSATED, Kind.SIGNAL, Kind.IGNORED})
_FORWARD_STEPS = frozenset(s.value for s in StepName)


def saga_timeline_fold(timeline: SagaTimeline, order: Order, event: TimelineEvent) -> SagaTimeline | None:
    """The timeline with one more event on a forward step, without reading: equal to
    saga_timeline_build(order, <the events of `timeline`> + [event]), `order` being the order
    as that event left it. None when this cannot be told without the build: the event is not
    newer than the timeline, or is not on a forward step, or is an undo or an operator
    command; the timeline has compensations; the saga is (or was) finished; or it has just
    become stuck (a step shown failed may then read stuck again).

    A new timeline: `timeline` is not changed (a live page may still render from it). The
    tracks the event does not touch, and the saga-level events, are shared with it: nothing
    changes a built timeline's tracks or lists (only this module builds them, and it folds
    into copies).
    """
    was, now = timeline.order.saga_status, order.saga_status
    if (event.step not in _FORWARD_STEPS or event.kind in _NOT_FOLDED or timeline.compensations
            or (timeline.last_event_id is not None and event.id <= timeline.last_event_id)
            or was in TERMINAL_SAGA_STATUSES or now in TERMINAL_SAGA_STATUSES
            or (now in STUCK_SAGA_STATUSES and was not in STUCK_SAGA_STATUSES)):
        return None
    # What the build does after its fold, for a saga not finished and with no compensation:
    # a stuck step nobody waits on any more reads failed. While the saga was stuck the kept
    # tracks show their states as folded; otherwise a stuck one already reads failed, and
    # stays so (the saga is not stuck now either).
    settled = now in STUCK_SAGA_STATUSES
    steps = []
    for track in timeline.steps:
        if track.step == event.step:
            track = replace(track, events=list(track.events))
            _advance(track, event)
        if track.state == "stuck" and not settled:
            track = replace(track, state="failed")
        steps.append(track)
    return SagaTimeline(order=order, steps=steps, compensations=[], saga_events=timeline.saga_events,
                        event_count=timeline.event_count + 1, last_event_id=event.id)


def saga_timeline(order: Order) -> SagaTimeline:
    """The timeline of one order: its events and their commands in one query."""
    return saga_timeline_build(order, saga_events_with_commands(order.pk))
