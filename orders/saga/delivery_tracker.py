"""The delivery tracker workflow ("DeliveryTracking"): one per shipped order, started by
the order saga (orders.saga.order_saga) and outliving it. Workflow code only: no Django, no I/O.

Anything that changes the commands it issues must go behind workflow.patched("<change-id>");
tests/test_replay.py replays recorded histories.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # By their full names: `from . import` names the package, which the sandbox does not
    # pass through, so these modules ran again (activities and all) for every workflow run.
    import orders.saga.activities as activities
    from .attempts import lost_attempt
    from .policies import LOST_ATTEMPT_MAX_PAUSE, LOST_ATTEMPT_RERUNS
    from .shared import (
        CarrierEventSignal,
        DeliveredSignal,
        DeliveryCheck,
        DeliveryEnd,
        DeliveryFollowUp,
        DeliveryInput,
        DeliveryNotice,
        DeliveryOutcome,
        EventKind,
        OperatorCommand,
        SagaTransition,
    )

# Issue 8: the tracker ends (delivered, returned, lost, or given up after its deadline),
# takes carrier webhook events and staff commands, opens follow-ups and emails the customer.
# Trackers started before it keep the old loop (ask the carrier, continue-as-new, end on
# `delivered` only); the old branch may go once none of them runs any more.
PATCH_TRACKER_ENDS = "tracker-ends"
# A shipped or delivered email whose attempts were lost to our own outage or a dead worker
# runs again instead of being dropped, as the saga's outcome email does (its fault-suite
# finding). Asked only when an attempt was lost, so only such histories carry the marker.
PATCH_EMAIL_RERUN = "delivery-email-rerun"

ACTIVITY_TIMEOUT = timedelta(seconds=30)
# The tracker's own writes: our database only, retried until it answers (it is not a customer's problem).
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# An email: a few attempts, then the tracker records that it could not and goes on.
EMAIL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                          maximum_attempts=5)


# Carrier events that end the tracker, and what they end it as.
_ENDING_EVENTS = {"delivered": DeliveryOutcome.DELIVERED, "returned": DeliveryOutcome.RETURNED}


@workflow.defn(name="DeliveryTracking")
class DeliveryTrackingWorkflow:
    """Waits for the parcel to arrive: a carrier webhook event, a staff command, or the
    carrier saying so when asked; past the deadline it raises a follow-up, and after the
    give-up time it ends. Continues-as-new every few checks to keep its history small."""

    def __init__(self) -> None:
        self._delivered: DeliveredSignal | None = None
        self._checks_done = 0
        self._carrier_events: list[CarrierEventSignal] = []
        self._seen_event_ids: set[str] = set()
        self._commands: list[tuple[str, OperatorCommand]] = []
        self._seen_action_ids: set[int] = set()
        self._outcome = ""

    @workflow.signal
    def delivered(self, signal: DeliveredSignal) -> None:
        if self._delivered is None:
            self._delivered = signal

    @workflow.signal
    def carrier_event(self, event: CarrierEventSignal) -> None:
        # The webhook stores each event once, but a signal can still arrive twice.
        if event.event_id not in self._seen_event_ids:
            self._seen_event_ids.add(event.event_id)
            self._carrier_events.append(event)

    @workflow.signal
    def mark_delivered(self, command: OperatorCommand) -> None:
        self._command(DeliveryOutcome.DELIVERED.value, command)

    @workflow.signal
    def lost_refund(self, command: OperatorCommand) -> None:
        self._command(DeliveryOutcome.LOST_REFUND.value, command)

    @workflow.signal
    def lost_reship(self, command: OperatorCommand) -> None:
        self._command(DeliveryOutcome.LOST_RESHIP.value, command)

    def _command(self, outcome: str, command: OperatorCommand) -> None:
        if command.action_id not in self._seen_action_ids:  # once per audit row
            self._seen_action_ids.add(command.action_id)
            self._commands.append((outcome, command))

    @workflow.query
    def checks_done(self) -> int:
        """Carrier checks made across all runs of this tracker."""
        return self._checks_done

    @workflow.query
    def outcome(self) -> str:
        """How it ended ("" while it runs)."""
        return self._outcome

    @workflow.run
    async def run(self, input: DeliveryInput) -> str:
        if workflow.patched(PATCH_TRACKER_ENDS):
            return await self._track_to_an_end(input)
        check = DeliveryCheck(order_id=input.order_id)
        interval = timedelta(seconds=input.check_interval_seconds)
        self._checks_done = input.checks_done
        for _ in range(input.checks_per_run):
            try:
                await workflow.wait_condition(lambda: self._delivered is not None, timeout=interval)
            except asyncio.TimeoutError:
                status = await workflow.execute_activity(
                    activities.check_delivery, check, start_to_close_timeout=timedelta(seconds=30)
                )
                self._checks_done += 1
                if status.delivered:
                    self._delivered = DeliveredSignal(source="carrier")
            if self._delivered is not None:
                await workflow.execute_activity(
                    activities.mark_delivered,
                    DeliveryCheck(order_id=input.order_id, source=self._delivered.source),
                    start_to_close_timeout=timedelta(seconds=30),
                )
                return "delivered"
        workflow.continue_as_new(
            DeliveryInput(
                order_id=input.order_id,
                check_interval_seconds=input.check_interval_seconds,
                checks_per_run=input.checks_per_run,
                checks_done=self._checks_done,
            )
        )

    # --- issue 8: a tracker that ends -----------------------------------------------------

    async def _track_to_an_end(self, input: DeliveryInput) -> str:
        now = workflow.now().timestamp()
        deadline = input.deadline_at if input.deadline_at is not None else now + input.deadline_seconds
        give_up_at = deadline + input.give_up_seconds
        overdue = input.overdue_reported
        self._checks_done = input.checks_done
        if not input.shipped_notified:
            await self._email(input.order_id, "shipped")
        for _ in range(input.checks_per_run):
            ending = await self._take_news(input.order_id)
            if ending is not None:
                return await self._end(input.order_id, *ending)
            now = workflow.now().timestamp()
            if now >= deadline and not overdue:
                overdue = True
                days = round(input.deadline_seconds / 86400, 1)
                await self._followup(input.order_id, "delivery_overdue", "overdue",
                                     f"Not delivered by its deadline ({days:g} days after shipping): "
                                     "call the customer and the carrier, then mark it delivered or report it lost.")
            if now >= give_up_at:
                return await self._end(input.order_id, DeliveryOutcome.GIVEN_UP, "deadline", None)
            # Ask the carrier every interval until the deadline; after it only staff or the
            # carrier's webhook end the wait (or the give-up time).
            wait = min(input.check_interval_seconds, (deadline if now < deadline else give_up_at) - now)
            try:
                await workflow.wait_condition(self._has_news, timeout=timedelta(seconds=max(wait, 1)))
            except asyncio.TimeoutError:
                if workflow.now().timestamp() < deadline:
                    status = await workflow.execute_activity(
                        activities.check_delivery, DeliveryCheck(order_id=input.order_id),
                        start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=BOOKKEEPING_RETRY,
                    )
                    self._checks_done += 1
                    if status.delivered:
                        self._delivered = DeliveredSignal(source="carrier, when asked")
                    elif status.returned:
                        self._carrier_events.append(CarrierEventSignal(event_id="asked", event="returned"))
        ending = await self._take_news(input.order_id)
        if ending is not None:
            return await self._end(input.order_id, *ending)
        workflow.continue_as_new(
            DeliveryInput(
                order_id=input.order_id, check_interval_seconds=input.check_interval_seconds,
                checks_per_run=input.checks_per_run, checks_done=self._checks_done,
                deadline_seconds=input.deadline_seconds, give_up_seconds=input.give_up_seconds,
                deadline_at=deadline, overdue_reported=overdue, shipped_notified=True,
            )
        )

    def _has_news(self) -> bool:
        return self._delivered is not None or bool(self._carrier_events) or bool(self._commands)

    async def _take_news(self, order_id: int) -> tuple[DeliveryOutcome, str, int | None] | None:
        """Act on what arrived; returns how to end (outcome, source, action id), if it ends.

        The first ending wins; staff commands that arrive with or after it are answered as ignored.
        """
        ending: tuple[DeliveryOutcome, str, int | None] | None = None
        events, self._carrier_events = self._carrier_events, []
        for event in events:
            if event.event == "delivery_failed":
                await self._followup(order_id, "delivery_failed", f"failed-{event.event_id}",
                                     "The carrier could not deliver the parcel: call the customer "
                                     f"(event {event.event_id}).")
            elif event.event in _ENDING_EVENTS and ending is None:
                ending = (_ENDING_EVENTS[event.event], "carrier webhook", None)
        if self._delivered is not None and ending is None:
            ending = (DeliveryOutcome.DELIVERED, self._delivered.source, self._delivered.action_id)
        commands, self._commands = self._commands, []
        for outcome, command in commands:
            if ending is None:
                ending = (DeliveryOutcome(outcome), "staff", command.action_id)
            else:
                await self._record(SagaTransition(
                    order_id=order_id, kind=EventKind.IGNORED.value, step="ship",
                    detail=f"Ignored: the delivery was already settled ({ending[0].value})",
                    action_id=command.action_id, action_outcome="ignored",
                    key=f"{workflow.info().workflow_id}:action-{command.action_id}",
                ))
        return ending

    async def _end(self, order_id: int, outcome: DeliveryOutcome, source: str, action_id: int | None) -> str:
        self._outcome = outcome.value
        await workflow.execute_activity(
            activities.delivery_end,
            DeliveryEnd(order_id=order_id, outcome=outcome.value, source=source, action_id=action_id,
                        key=f"{workflow.info().workflow_id}:end"),
            start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=BOOKKEEPING_RETRY,
        )
        if outcome == DeliveryOutcome.DELIVERED:
            await self._email(order_id, "delivered")
        return outcome.value

    async def _followup(self, order_id: int, kind: str, what: str, reason: str) -> None:
        await workflow.execute_activity(
            activities.delivery_followup_open,
            DeliveryFollowUp(order_id=order_id, kind=kind, reason=reason,
                             key=f"{workflow.info().workflow_id}:followup:{what}"),
            start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=BOOKKEEPING_RETRY,
        )

    async def _record(self, transition: SagaTransition) -> None:
        await workflow.execute_activity(
            activities.record_transition, transition, start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _email(self, order_id: int, outcome: str) -> None:
        """Email the customer once (the key dedupes); a mail server that keeps failing is
        recorded on the timeline by the activity and does not hold up the tracking."""
        reruns = worker_losses = 0
        while True:
            try:
                await workflow.execute_activity(
                    activities.notify_delivery, DeliveryNotice(order_id=order_id, outcome=outcome),
                    start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=EMAIL_RETRY,
                )
                return
            except ActivityError as err:
                lost = lost_attempt(err)
                # Our outage is waited out; lost workers a bounded number of times, as a step's.
                if lost and (lost != "worker" or worker_losses < LOST_ATTEMPT_RERUNS) \
                        and workflow.patched(PATCH_EMAIL_RERUN):
                    reruns += 1
                    worker_losses += lost == "worker"
                    await workflow.sleep(min(EMAIL_RETRY.initial_interval * 2 ** (reruns - 1), LOST_ATTEMPT_MAX_PAUSE))
                    continue
                workflow.logger.warning("Delivery email %s for order %s not sent: %s", outcome, order_id, err.cause)
                return
