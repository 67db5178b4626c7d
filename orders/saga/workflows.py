"""The order saga and the delivery tracker. Workflow code only: no Django, no I/O.

Anything that changes the commands these workflows issue must go behind
workflow.patched("<change-id>") so running sagas replay; tests/test_replay.py replays
histories recorded from earlier versions.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from ..errors import NON_RETRYABLE_ERRORS
    from . import activities
    from . import search_attributes as sa
    from .policies import (
        BOOKKEEPING_TIMEOUT,
        COMPENSATION_TIMEOUT,
        STEP_POLICIES,
        bookkeeping_pause,
        bookkeeping_retry_policy,
        compensation_retry_policy,
        step_retry_policy,
    )
    from .shared import (
        DeliveredSignal,
        DeliveryCheck,
        DeliveryInput,
        EventKind,
        OperatorCommand,
        OperatorCommandName,
        SagaInput,
        SagaState,
        SagaTransition,
        StepInput,
        StepName,
    )

Cmd = OperatorCommandName

# Patches (workflow.patched ids). Histories of sagas started before a patch replay its
# old branch; remove the old branch only once no such saga can still be running.
PATCH_TRACKER_WITH_NOTIFY = "tracker-starts-with-notify"
# Bookkeeping that exhausts its (now bounded) attempts is logged, shown on the SagaStatus
# search attribute and tried again after a timer. Only reached when bookkeeping fails, so
# only such histories carry the marker; histories from before could not fail there (their
# attempts were unbounded), so the old branch is a plain raise and may go at any time.
PATCH_BOOKKEEPING_BOUNDED = "bookkeeping-bounded"
BOOKKEEPING_FAILING = "bookkeeping_failing"  # SagaStatus search attribute value meanwhile

FORWARD_STEPS = [StepName.VALIDATE, StepName.RESERVE, StepName.CHARGE, StepName.CONFIRM, StepName.SHIP]
STEP_ACTIVITIES = {
    StepName.VALIDATE: activities.validate_order,
    StepName.RESERVE: activities.reserve_inventory,
    StepName.CHARGE: activities.charge_payment,
    StepName.CONFIRM: activities.confirm_inventory,
    StepName.SHIP: activities.arrange_shipping,
    StepName.NOTIFY: activities.notify_customer,
}
COMPENSATIONS = {
    StepName.RESERVE: activities.release_reservation,
    StepName.CHARGE: activities.refund_payment,
    StepName.CONFIRM: activities.restock_inventory,
    StepName.SHIP: activities.cancel_shipment,
}
# Payments go to their own task queue, whose workers bound how many run at once.
PAYMENT_STEPS = {StepName.CHARGE}


class StepFailed(Exception):
    """A step the saga will not run again: the saga compensates and ends with `outcome`."""

    def __init__(self, step: StepName, message: str, outcome: SagaState, effect_uncertain: bool):
        super().__init__(message)
        self.step = step
        self.message = message
        self.outcome = outcome
        # True when the step may have acted before failing (a timeout, a partial shipment):
        # its own compensation runs too, and finds nothing to undo if nothing was done.
        self.effect_uncertain = effect_uncertain


# What a failed activity raises in workflow code: regular activities wrap the cause in an
# ActivityError; local activities raise the ApplicationError (or TimeoutError) itself.
STEP_ERRORS = (ActivityError, ApplicationError, TimeoutError)


def _cause(err: Exception) -> BaseException:
    return (err.cause or err) if isinstance(err, ActivityError) else err


def _failure_message(err: Exception) -> str:
    cause = _cause(err)
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)


def _is_non_retryable(err: Exception) -> bool:
    cause = _cause(err)
    return isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type in NON_RETRYABLE_ERRORS)


async def _shielded(coro):
    """Run to the end even if the workflow is cancelled meanwhile (compensations must)."""
    task = asyncio.ensure_future(coro)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()


@workflow.defn(name="OrderSaga")
class OrderSagaWorkflow:
    @workflow.init
    def __init__(self, input: SagaInput) -> None:
        self._input = input
        self._completed: list[StepName] = []
        self._step: StepName | None = None
        self._phase = "running"  # running | compensating | finished
        # What the saga waits on an operator for: "stuck" (retry/compensate) or "followup".
        self._awaiting: str | None = None
        self._decision: OperatorCommandName | None = None
        # Set when a command is accepted, before it is recorded, so a second command that
        # arrives while the first is being recorded sees it and is ignored.
        self._decision_claimed = False
        self._cancel_claimed = False
        self._cancel_requested = False
        self._seen_actions: set[int] = set()
        # Bookkeeping keys: how many transitions of each kind so far (deterministic).
        self._bookkeeping_counts: dict[str, int] = {}
        self._bookkeeping_failures = 0  # bookkeeping calls currently failing
        self._bookkeeping_error = ""
        self._status_before_bookkeeping_failed = ""

    # --- the saga -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: SagaInput) -> str:
        try:
            outcome = await self._forward()
        except asyncio.CancelledError:
            await _shielded(self._on_workflow_cancelled())
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome.value

    async def _forward(self) -> SagaState:
        for step in FORWARD_STEPS:
            # A cancel being recorded right now must be seen before shipping starts.
            await workflow.wait_condition(lambda: not self._cancel_claimed or self._cancel_requested)
            if self._cancel_requested:
                return await _shielded(self._compensate(SagaState.CANCELLED, "Cancelled by staff"))
            try:
                await self._run_step(step)
            except StepFailed as failure:
                extra = [failure.step] if failure.effect_uncertain else []
                return await _shielded(self._compensate(failure.outcome, failure.message, also_undo=extra))
        if workflow.patched(PATCH_TRACKER_WITH_NOTIFY):
            # The parcel is booked: start tracking it while the customer is told, so the
            # tracker's start round trip no longer adds to the saga's latency.
            tracker = asyncio.ensure_future(self._start_delivery_tracking())
            await self._notify_customer()
            await tracker
        else:
            await self._notify_customer()
            await self._start_delivery_tracking()
        await self._finish(SagaState.COMPLETED, "Order completed")
        return SagaState.COMPLETED

    async def _run_step(self, step: StepName) -> None:
        self._step = step
        workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(step.value)])
        while True:
            try:
                await self._execute(step)
                self._completed.append(step)
                return
            except STEP_ERRORS as err:
                message = _failure_message(err)
                if _is_non_retryable(err):
                    outcome = SagaState.REJECTED if step == StepName.VALIDATE else SagaState.COMPENSATED
                    raise StepFailed(step, message, outcome, effect_uncertain=step == StepName.SHIP)
                decision = await self._wait_while_stuck(step, message)
                if decision == Cmd.RETRY:
                    continue
                outcome = SagaState.CANCELLED if decision == Cmd.CANCEL else SagaState.COMPENSATED
                raise StepFailed(step, message, outcome, effect_uncertain=True)

    async def _execute(self, step: StepName) -> None:
        policy = STEP_POLICIES[step]
        arg = StepInput(order_id=self._input.order_id, step=step, idempotency_key=self._key(step))
        retry = step_retry_policy(step, self._input.retry)
        if policy.local:
            await workflow.execute_local_activity(
                STEP_ACTIVITIES[step], arg, start_to_close_timeout=policy.start_to_close, retry_policy=retry
            )
            return
        await workflow.execute_activity(
            STEP_ACTIVITIES[step],
            arg,
            task_queue=self._input.payments_task_queue if step in PAYMENT_STEPS else None,
            start_to_close_timeout=policy.start_to_close,
            heartbeat_timeout=policy.heartbeat,
            retry_policy=retry,
            # On cancellation, wait for the attempt to end so we know whether it acted.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    def _key(self, step: StepName, suffix: str = "") -> str:
        return f"{workflow.info().workflow_id}:{step.value}{suffix}"

    # --- stuck and follow-up: waiting for an operator ----------------------------------

    async def _wait_while_stuck(self, step: StepName, message: str) -> OperatorCommandName:
        attempts = STEP_POLICIES[step].max_attempts
        self._set_saga_status(SagaState.STUCK)
        await self._record(
            EventKind.STUCK, step=step,
            detail=f"{message} (gave up after {attempts} attempts; waiting for an operator to retry or compensate)",
            saga_status=SagaState.STUCK,
        )
        deadline = self._input.retry.stuck_auto_compensate_seconds
        decision = await self._await_operator("stuck", timedelta(seconds=deadline) if deadline else None)
        if decision is None:
            await self._record(
                EventKind.SIGNAL, step=step,
                detail=f"No operator decision within {deadline:g} s: compensating automatically",
            )
            return Cmd.COMPENSATE
        if decision == Cmd.RETRY:
            self._set_saga_status(SagaState.RUNNING)
        return decision

    async def _await_operator(self, what: str, timeout: timedelta | None) -> OperatorCommandName | None:
        self._awaiting, self._decision, self._decision_claimed = what, None, False
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=timeout)
        except asyncio.TimeoutError:
            if not self._decision_claimed:
                self._awaiting = None
                return None
            # A command was accepted just as the deadline passed: it wins.
            await workflow.wait_condition(lambda: self._decision is not None)
        decision, self._awaiting, self._decision, self._decision_claimed = self._decision, None, None, False
        return decision

    async def _notify_customer(self) -> None:
        self._step = StepName.NOTIFY
        workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(StepName.NOTIFY.value)])
        followup_open = False
        while True:
            try:
                await self._execute(StepName.NOTIFY)
                if followup_open:
                    await self._followup_activity(activities.close_followup, "resent")
                self._completed.append(StepName.NOTIFY)
                return
            except STEP_ERRORS as err:
                # Notifying is after the sale: a failure never rolls back, a person follows up.
                await self._followup_activity(
                    activities.open_followup, f"Could not notify the customer: {_failure_message(err)}"
                )
                followup_open = True
                self._set_saga_status(SagaState.NEEDS_FOLLOWUP)
                decision = await self._await_operator("followup", None)
                if decision == Cmd.RESOLVED:
                    await self._followup_activity(activities.close_followup, "resolved")
                    return
                self._set_saga_status(SagaState.RUNNING)

    async def _followup_activity(self, fn, detail: str) -> None:
        await self._bookkeeping(fn, SagaTransition(
            order_id=self._input.order_id, kind=EventKind.FOLLOWUP.value, step="notify", detail=detail,
            key=self._bookkeeping_key(fn.__name__),
        ))

    # --- compensation -----------------------------------------------------------------

    async def _compensate(self, outcome: SagaState, reason: str, also_undo: list[StepName] = ()) -> SagaState:
        self._phase = "compensating"
        to_undo = [s for s in [*self._completed, *also_undo] if s in COMPENSATIONS]
        if to_undo:
            self._set_saga_status(SagaState.COMPENSATING)
            await self._record("", saga_status=SagaState.COMPENSATING)
        for step in reversed(to_undo):
            arg = StepInput(order_id=self._input.order_id, step=step, idempotency_key=self._key(step, ":compensate"))
            retry = compensation_retry_policy(self._input.retry)
            if STEP_POLICIES[step].local:
                await workflow.execute_local_activity(
                    COMPENSATIONS[step], arg, start_to_close_timeout=COMPENSATION_TIMEOUT, retry_policy=retry
                )
            else:
                await workflow.execute_activity(
                    COMPENSATIONS[step], arg, start_to_close_timeout=COMPENSATION_TIMEOUT, retry_policy=retry,
                    task_queue=self._input.payments_task_queue if step in PAYMENT_STEPS else None,
                )
        await self._finish(outcome, reason)
        return outcome

    async def _on_workflow_cancelled(self) -> None:
        """The workflow itself was cancelled (from Temporal, not the app's cancel signal)."""
        if StepName.SHIP in self._completed:
            # The sale is committed and the parcel booked: nothing to roll back.
            await self._finish(SagaState.COMPLETED, "Workflow cancelled after shipping; nothing rolled back")
            return
        in_flight = [self._step] if self._step and self._step not in self._completed else []
        await self._compensate(SagaState.CANCELLED, "Workflow cancelled", also_undo=in_flight)

    async def _finish(self, outcome: SagaState, detail: str) -> None:
        self._phase = "finished"
        self._set_saga_status(outcome)
        await self._record(EventKind.FINISHED, detail=detail, saga_status=outcome)

    async def _start_delivery_tracking(self) -> None:
        await workflow.start_child_workflow(
            DeliveryTrackingWorkflow.run,
            DeliveryInput(
                order_id=self._input.order_id,
                check_interval_seconds=self._input.delivery_check_interval_seconds,
                checks_per_run=self._input.delivery_checks_per_run,
            ),
            id=f"delivery-{self._input.order_id}",
            # The tracker outlives the saga, which ends once the customer is told.
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )

    # --- bookkeeping ------------------------------------------------------------------

    def _set_saga_status(self, state: SagaState) -> None:
        workflow.upsert_search_attributes([sa.SAGA_STATUS.value_set(state.value)])

    async def _record(
        self, kind: EventKind | str, *, step: StepName | None = None, detail: str = "",
        saga_status: SagaState | None = None, action_id: int | None = None, action_outcome: str = "",
    ) -> None:
        transition = SagaTransition(
            order_id=self._input.order_id,
            kind=kind.value if isinstance(kind, EventKind) else kind,
            step=step.value if step else "",
            detail=detail,
            saga_status=saga_status.value if saga_status else "",
            action_id=action_id,
            action_outcome=action_outcome,
            key=self._bookkeeping_key(
                f"action-{action_id}" if action_id is not None else f"{kind or 'state'}.{step or ''}"
            ),
        )
        await self._bookkeeping(activities.record_transition, transition)

    def _bookkeeping_key(self, what: str) -> str:
        """A key per bookkeeping fact: the same on a replay, so a re-run local activity
        writes nothing new (the read model's unique SagaEvent.idempotency_key)."""
        n = self._bookkeeping_counts[what] = self._bookkeeping_counts.get(what, 0) + 1
        return f"{workflow.info().workflow_id}:t:{what}:{n}"

    async def _bookkeeping(self, fn, transition: SagaTransition) -> None:
        """Run a bookkeeping local activity until it succeeds: bounded attempts, then a
        visible failure (error log, search attribute, query) and a durable pause."""
        failing = False
        while True:
            try:
                await workflow.execute_local_activity(
                    fn, transition, start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                    retry_policy=bookkeeping_retry_policy(self._input.retry),
                )
                break
            except STEP_ERRORS as err:
                if is_cancelled_exception(err) or not workflow.patched(PATCH_BOOKKEEPING_BOUNDED):
                    raise
                self._bookkeeping_error = f"{fn.__name__}: {_failure_message(err)}"
                pause = bookkeeping_pause(self._input.retry)
                workflow.logger.error("Saga bookkeeping failing (%s); trying again in %s", self._bookkeeping_error, pause)
                if not failing:
                    failing = True
                    self._bookkeeping_failures += 1
                    if self._bookkeeping_failures == 1:
                        self._status_before_bookkeeping_failed = (
                            workflow.info().typed_search_attributes.get(sa.SAGA_STATUS) or ""
                        )
                        workflow.upsert_search_attributes([sa.SAGA_STATUS.value_set(BOOKKEEPING_FAILING)])
                await workflow.sleep(pause)
        if failing:
            self._bookkeeping_failures -= 1
            if self._bookkeeping_failures == 0:
                self._bookkeeping_error = ""
                if self._status_before_bookkeeping_failed:
                    workflow.upsert_search_attributes(
                        [sa.SAGA_STATUS.value_set(self._status_before_bookkeeping_failed)]
                    )

    # --- operator signals ---------------------------------------------------------------

    @workflow.signal
    async def retry(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.RETRY, command)

    @workflow.signal
    async def compensate(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.COMPENSATE, command)

    @workflow.signal
    async def cancel(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.CANCEL, command)

    @workflow.signal
    async def resend(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.RESEND, command)

    @workflow.signal
    async def resolved(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.RESOLVED, command)

    def _why_not(self, name: OperatorCommandName) -> str | None:
        """Why a command does not fit the saga's state now, or None if it does."""
        if self._phase == "finished":
            return "the saga has already finished"
        if name in (Cmd.RETRY, Cmd.COMPENSATE):
            if self._awaiting != "stuck" or self._decision_claimed:
                return "the saga is not stuck"
        elif name in (Cmd.RESEND, Cmd.RESOLVED):
            if self._awaiting != "followup" or self._decision_claimed:
                return "no follow-up is waiting"
        elif name == Cmd.CANCEL:
            if self._cancel_claimed or self._phase == "compensating":
                return "the order is already being cancelled or rolled back"
            if self._step in (StepName.SHIP, StepName.NOTIFY):
                return "shipping has already been arranged"
            if self._awaiting == "stuck" and self._decision_claimed:
                return "another operator decision is being applied"
        return None

    async def _on_command(self, name: OperatorCommandName, command: OperatorCommand) -> None:
        if command.action_id in self._seen_actions:
            return  # the same action signalled twice: it already had its effect
        self._seen_actions.add(command.action_id)
        reason = f": {command.reason}" if command.reason else ""
        why_not = self._why_not(name)
        if why_not:
            await self._record(
                EventKind.IGNORED, step=self._step, detail=f"{name.value} ignored: {why_not}",
                action_id=command.action_id, action_outcome="ignored",
            )
            return
        stuck_decision = name != Cmd.CANCEL or self._awaiting == "stuck"
        if name == Cmd.CANCEL:
            self._cancel_claimed = True
        if stuck_decision:
            self._decision_claimed = True
        new_status = {Cmd.RETRY: SagaState.RUNNING, Cmd.RESEND: SagaState.RUNNING}.get(name)
        await self._record(
            EventKind.SIGNAL, step=self._step, detail=f"{name.value} requested (action #{command.action_id}){reason}",
            saga_status=new_status, action_id=command.action_id, action_outcome="applied",
        )
        if name == Cmd.CANCEL:
            self._cancel_requested = True
        if stuck_decision:
            self._decision = name

    @workflow.query
    def state(self) -> dict:
        return {
            "phase": self._phase,
            "step": self._step.value if self._step else None,
            "awaiting": self._awaiting,
            "completed": [s.value for s in self._completed],
            "bookkeeping_error": self._bookkeeping_error,
        }


@workflow.defn(name="DeliveryTracking")
class DeliveryTrackingWorkflow:
    """Waits for the parcel to arrive: a `delivered` signal (carrier webhook or staff), or
    the carrier saying so when asked. Continues-as-new every few checks to keep its history small."""

    def __init__(self) -> None:
        self._delivered: DeliveredSignal | None = None
        self._checks_done = 0

    @workflow.signal
    def delivered(self, signal: DeliveredSignal) -> None:
        if self._delivered is None:
            self._delivered = signal

    @workflow.query
    def checks_done(self) -> int:
        """Carrier checks made across all runs of this tracker."""
        return self._checks_done

    @workflow.run
    async def run(self, input: DeliveryInput) -> str:
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
