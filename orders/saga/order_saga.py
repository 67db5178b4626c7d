"""The order saga workflow ("OrderSaga"). Workflow code only: no Django, no I/O.

Anything that changes the commands this workflow issues must go behind
workflow.patched("<change-id>") so running sagas replay; tests/test_replay.py replays
histories recorded from earlier versions. Once the parcel is booked the saga starts the
delivery tracker (orders.saga.delivery_tracker) as an abandoned child.

This module is over 400 lines because it is one workflow class: its steps, compensation,
operator signals, bookkeeping and the waits between them share the workflow's state and read
best together, and every branch kept for running sagas (the patches below) sits next to the
new path it replays against.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

# Workflow code, so not passed through: the sandbox imports it afresh, as it does this module.
from .delivery_tracker import DeliveryTrackingWorkflow

with workflow.unsafe.imports_passed_through():
    from ..errors import NON_RETRYABLE_ERRORS
    # By their full names: `from . import` names the package, which the sandbox does not
    # pass through, so these modules ran again (activities and all) for every workflow run.
    import orders.saga.activities as activities
    import orders.saga.search_attributes as sa
    from .attempts import error_cause, lost_attempt
    from .policies import (
        BOOKKEEPING_TIMEOUT,
        COMPENSATION_TIMEOUT,
        LOST_ATTEMPT_RERUNS,
        STEP_POLICIES,
        bookkeeping_pause,
        bookkeeping_retry_policy,
        compensation_retry_policy,
        lost_attempt_pause,
        step_retry_policy,
    )
    from .shared import (
        COMPENSATION_LABELS,
        DeliveryInput,
        EventKind,
        OperatorCommand,
        OutcomeNotice,
        OperatorCommandName,
        SagaInput,
        SagaState,
        SagaTransition,
        StepInput,
        StepName,
        delivery_workflow_id,
    )

Cmd = OperatorCommandName

# Patches (workflow.patched ids). Histories of sagas started before a patch replay its
# old branch; remove the old branch only once no such saga can still be running.
PATCH_TRACKER_WITH_NOTIFY = "tracker-starts-with-notify"
# v3 (issue 7). Each is asked where its behaviour begins, so a saga running from before
# the deploy takes the new path from the next such point on.
# Charge, ship and notify are scheduled with a short heartbeat timeout (policies.HEARTBEAT_TIMEOUT).
PATCH_STEP_HEARTBEATS = "step-heartbeats"
# A step whose last attempt was lost to a worker crash (a timeout) or to our own
# infrastructure runs again (with a 'retrying' event) instead of going stuck or to follow-up.
PATCH_LOST_ATTEMPTS = "lost-attempts-rerun"
# One cancellation rule, from the app (cancel signal) and from Temporal (workflow cancel),
# at every step: before shipping compensate what was done, the step in flight included;
# after shipping finish without rollback. A staff cancel accepted during a step wins over
# a later stuck or retry.
PATCH_CANCEL_RULE = "one-cancellation-rule"
# Compensations retry a bounded number of times; one that cannot complete leaves the
# saga compensation_stuck (the others still run) until an operator's retry_compensation.
PATCH_BOUNDED_COMPENSATIONS = "bounded-compensations"
# The delivery tracker's id derives from the saga's workflow id (with its random part).
PATCH_TRACKER_ID = "tracker-id-from-saga-id"
# Bookkeeping that exhausts its (now bounded) attempts is logged, shown on the SagaStatus
# search attribute and tried again after a timer. Only reached when bookkeeping fails, so
# only such histories carry the marker; histories from before could not fail there (their
# attempts were unbounded), so the old branch is a plain raise and may go at any time.
PATCH_BOOKKEEPING_BOUNDED = "bookkeeping-bounded"
# A lost worker's reruns are bounded on their own, not together with the reruns that waited
# out our own outage or an open circuit (_rerun_allowed).
PATCH_WORKER_LOSSES_APART = "worker-losses-bounded-apart"
BOOKKEEPING_FAILING = "bookkeeping_failing"  # SagaStatus search attribute value meanwhile
# v4 (issue 8). A saga that ends failed, rejected or cancelled tells the customer (once, after
# its compensations, saying what was refunded). Asked where the saga ends, so a saga running
# from before the deploy emails too if it ends after; the old branch (no email) may go once
# no saga started before v4 can still be compensating.
PATCH_OUTCOME_TOLD = "customer-told-of-outcome"
# The outcome email's attempts lost to our own outage or a dead worker run again, as a
# step's do (_rerun_allowed), instead of leaving the customer untold: the fault suite saw a
# 4 s database outage use up all three attempts (1 s and 2 s apart). Asked only when an
# attempt was lost, so only such histories carry the marker.
PATCH_OUTCOME_RERUN = "outcome-email-rerun"
# An outcome email the mailer refused for good puts the order on the follow-up queue (kind
# outcome_untold) before the saga ends as it would; before, only the notification ledger
# showed it. Asked only when the email failed, so only such histories carry the marker.
PATCH_OUTCOME_FOLLOWUP = "outcome-untold-followup"
OUTCOME_EMAILS = {SagaState.COMPENSATED: "failed", SagaState.REJECTED: "failed", SagaState.CANCELLED: "cancelled"}

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

WORKFLOW_CANCELLED = "Workflow cancelled"
CANCELLED_BY_STAFF = "Cancelled by staff"


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


def _failure_message(err: Exception) -> str:
    cause = error_cause(err)
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)


def _is_non_retryable(err: Exception) -> bool:
    cause = error_cause(err)
    return isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type in NON_RETRYABLE_ERRORS)


def _rerun_allowed(lost: str | None, reruns: int, worker_losses: int) -> bool:
    """Only lost workers are bounded: an outage of ours or an open circuit is waited out.

    `reruns` counts every rerun of the step, `worker_losses` those after a lost worker.
    Before PATCH_WORKER_LOSSES_APART the bound was on all reruns, so a step that had waited
    out an open circuit three times went stuck at the first lost worker (a healthy order,
    seen in the fault suite); histories from before keep that answer on replay.
    """
    if not lost:
        return False
    if lost != "worker" or reruns < LOST_ATTEMPT_RERUNS:
        return True
    return worker_losses < LOST_ATTEMPT_RERUNS and workflow.patched(PATCH_WORKER_LOSSES_APART)


def _circuit_wait(err: Exception) -> timedelta | None:
    """The seconds until an open circuit's probe, as the activity reported them."""
    cause = error_cause(err)
    details = getattr(cause, "details", None) or ()
    if details and isinstance(details[0], (int, float)):
        return timedelta(seconds=max(float(details[0]), 0.2))
    return None


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
        # What the saga waits on an operator for: "stuck" (retry/compensate), "followup",
        # or "compensation" (retry_compensation).
        self._awaiting: str | None = None
        self._decision: OperatorCommandName | None = None
        # Set when a command is accepted, before it is recorded, so a second command that
        # arrives while the first is being recorded sees it and is ignored.
        self._decision_claimed = False
        self._cancel_claimed = False
        self._cancel_requested = False
        self._seen_actions: set[int] = set()
        self._attempts_made: dict[StepName, int] = {}
        # The workflow was cancelled from Temporal (UI, CLI) and the saga applies the
        # cancellation rule itself: the saga runs in its own task, which Temporal's cancel
        # never interrupts, so bookkeeping and compensations are shielded by construction.
        self._temporal_cancel = False
        self._saga: asyncio.Task | None = None
        # The regular activity of the step in flight: a Temporal cancel cancels it (the
        # activity finishes what it started and reports the cancel).
        self._step_activity: asyncio.Task | None = None
        # Bookkeeping keys: how many transitions of each kind so far (deterministic).
        self._bookkeeping_counts: dict[str, int] = {}
        self._bookkeeping_failures = 0  # bookkeeping calls currently failing
        self._bookkeeping_error = ""
        self._status_before_bookkeeping_failed = ""

    # --- the saga -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: SagaInput) -> str:
        self._saga = asyncio.ensure_future(self._run_saga())
        while True:
            try:
                outcome = await asyncio.shield(self._saga)
                break
            except asyncio.CancelledError:
                if self._saga.done():
                    outcome = self._saga.result()  # (re-raises a cancellation, v2's way)
                    break
                self._on_temporal_cancel()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._temporal_cancel:
            # The rule has been applied (compensated, or finished after shipping); the
            # workflow itself still ends as cancelled, as Temporal was asked.
            raise asyncio.CancelledError(WORKFLOW_CANCELLED)
        return outcome.value

    def _on_temporal_cancel(self) -> None:
        if self._temporal_cancel:
            return
        if not workflow.patched(PATCH_CANCEL_RULE):
            # v2: the cancel interrupts whatever the saga awaits; _run_saga compensates.
            self._saga.cancel()
            return
        self._temporal_cancel = True
        if self._step_activity is not None and not self._step_activity.done():
            self._step_activity.cancel()

    async def _run_saga(self) -> SagaState:
        try:
            return await self._forward()
        except asyncio.CancelledError:
            # Only sagas on v2's cancellation path get here (PATCH_CANCEL_RULE).
            await _shielded(self._on_workflow_cancelled())
            raise

    def _cancel_reason(self) -> str:
        return CANCELLED_BY_STAFF if self._cancel_requested else WORKFLOW_CANCELLED

    async def _cancel_wins(self) -> bool:
        """Whether a cancel accepted while the step ran decides what happens after it failed
        (instead of stuck, a retry or a follow-up)."""
        if self._temporal_cancel:
            return True
        if not (self._cancel_claimed or self._cancel_requested):
            return False
        if not workflow.patched(PATCH_CANCEL_RULE):
            return False
        # A cancel being recorded right now counts.
        await workflow.wait_condition(lambda: self._cancel_requested)
        return True

    async def _forward(self) -> SagaState:
        for step in FORWARD_STEPS:
            # A cancel being recorded right now must be seen before shipping starts.
            await workflow.wait_condition(
                lambda: not self._cancel_claimed or self._cancel_requested or self._temporal_cancel
            )
            if self._cancel_requested or self._temporal_cancel:
                return await _shielded(self._compensate(SagaState.CANCELLED, self._cancel_reason()))
            try:
                await self._run_step(step)
            except StepFailed as failure:
                extra = [failure.step] if failure.effect_uncertain else []
                return await _shielded(self._compensate(failure.outcome, failure.message, also_undo=extra))
        if self._temporal_cancel:
            # Cancelled while shipping, and the parcel got booked: the sale stands.
            await self._start_delivery_tracking()
            await self._finish(SagaState.COMPLETED, f"{WORKFLOW_CANCELLED} after shipping; nothing rolled back")
            return SagaState.COMPLETED
        if workflow.patched(PATCH_TRACKER_WITH_NOTIFY):
            # The parcel is booked: start tracking it while the customer is told, so the
            # tracker's start round trip no longer adds to the saga's latency.
            tracker = asyncio.ensure_future(self._start_delivery_tracking())
            await self._notify_customer()
            await tracker
        else:
            await self._notify_customer()
            await self._start_delivery_tracking()
        if self._temporal_cancel:
            await self._finish(SagaState.COMPLETED, f"{WORKFLOW_CANCELLED} after shipping; nothing rolled back")
        else:
            await self._finish(SagaState.COMPLETED, "Order completed")
        return SagaState.COMPLETED

    async def _run_step(self, step: StepName) -> None:
        self._step = step
        workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(step.value)])
        reruns = worker_losses = 0
        while True:
            try:
                await self._execute(step)
                self._completed.append(step)
                return
            except (*STEP_ERRORS, asyncio.CancelledError) as err:
                if self._temporal_cancel and is_cancelled_exception(err):
                    # Cancelled from Temporal mid-step: what the step did is undone with the rest.
                    raise StepFailed(step, WORKFLOW_CANCELLED, SagaState.CANCELLED, effect_uncertain=True)
                if isinstance(err, asyncio.CancelledError):
                    raise  # v2's cancellation path
                message = _failure_message(err)
                if await self._cancel_wins():
                    raise StepFailed(step, self._cancel_reason(), SagaState.CANCELLED, effect_uncertain=True)
                if _is_non_retryable(err):
                    outcome = SagaState.REJECTED if step == StepName.VALIDATE else SagaState.COMPENSATED
                    raise StepFailed(step, message, outcome, effect_uncertain=step == StepName.SHIP)
                lost = lost_attempt(err)
                if _rerun_allowed(lost, reruns, worker_losses) and workflow.patched(PATCH_LOST_ATTEMPTS):
                    reruns += 1
                    worker_losses += lost == "worker"
                    await self._pause_before_rerun(step, lost, message, reruns, _circuit_wait(err),
                                                   worker_losses=worker_losses)
                    if await self._cancel_wins():
                        raise StepFailed(step, self._cancel_reason(), SagaState.CANCELLED, effect_uncertain=True)
                    continue
                decision = await self._wait_while_stuck(step, message)
                if decision == Cmd.RETRY:
                    continue
                if self._temporal_cancel and decision == Cmd.CANCEL:
                    message = WORKFLOW_CANCELLED
                outcome = SagaState.CANCELLED if decision == Cmd.CANCEL else SagaState.COMPENSATED
                raise StepFailed(step, message, outcome, effect_uncertain=True)

    async def _pause_before_rerun(self, step: StepName, lost: str, message: str, rerun: int,
                                  circuit_wait: timedelta | None = None, *, wake_on_cancel: bool = True,
                                  worker_losses: int) -> None:
        """Record why the step runs again, then wait a little (waking early for a cancel,
        except in a compensation, which runs whatever was cancelled). The pause grows with
        every rerun; the bound the event states is on lost workers only (_rerun_allowed)."""
        if lost == "worker":
            detail = (f"The worker running this step was lost ({message}); not the step's failure: "
                      f"running it again (rerun {worker_losses} of {LOST_ATTEMPT_RERUNS} "
                      "after a lost worker)")
        else:
            detail = f"{message}; not the step's failure: running it again (rerun {rerun})"
        if lost != "circuit":  # the activity already recorded that it waits for the circuit
            try:
                await self._record(EventKind.RETRYING, step=step, detail=detail)
            except STEP_ERRORS:
                pass  # our database is what is down: the rerun matters more than its event
        pause = circuit_wait or lost_attempt_pause(step, self._input.retry, rerun)
        if not wake_on_cancel:
            await workflow.sleep(pause)
            return
        try:
            await workflow.wait_condition(
                lambda: self._temporal_cancel or self._cancel_requested or self._cancel_claimed, timeout=pause
            )
        except asyncio.TimeoutError:
            pass

    async def _execute(self, step: StepName) -> None:
        offset = self._attempts_made.get(step, 0)
        arg = StepInput(order_id=self._input.order_id, step=step, idempotency_key=self._key(step),
                        attempt_offset=offset)
        try:
            await self._execute_run(step, arg)
        except STEP_ERRORS:
            # The run used its attempts (a retryable failure exhausts them): the next run of
            # this step goes on counting from there.
            self._attempts_made[step] = offset + STEP_POLICIES[step].max_attempts
            raise

    async def _execute_run(self, step: StepName, arg: StepInput) -> None:
        policy = STEP_POLICIES[step]
        retry = step_retry_policy(step, self._input.retry)
        if policy.local:
            await workflow.execute_local_activity(
                STEP_ACTIVITIES[step], arg, start_to_close_timeout=policy.start_to_close, retry_policy=retry
            )
            return
        if self._temporal_cancel:
            raise asyncio.CancelledError(WORKFLOW_CANCELLED)
        heartbeat = policy.legacy_heartbeat
        if policy.heartbeat != policy.legacy_heartbeat and workflow.patched(PATCH_STEP_HEARTBEATS):
            heartbeat = policy.heartbeat
        self._step_activity = workflow.start_activity(
            STEP_ACTIVITIES[step],
            arg,
            task_queue=self._input.payments_task_queue if step in PAYMENT_STEPS else None,
            start_to_close_timeout=policy.start_to_close,
            heartbeat_timeout=heartbeat,
            retry_policy=retry,
            # On cancellation, wait for the attempt to end so we know whether it acted.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        try:
            await self._step_activity
        finally:
            self._step_activity = None

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
        if decision is None and self._temporal_cancel:
            return Cmd.CANCEL
        if decision is None:
            await self._record(
                EventKind.SIGNAL, step=step,
                detail=f"No operator decision within {deadline:g} s: compensating automatically",
            )
            return Cmd.COMPENSATE
        if decision == Cmd.RETRY:
            self._set_saga_status(SagaState.RUNNING)
        return decision

    async def _await_operator(self, what: str, timeout: timedelta | None,
                              wake_on_cancel: bool = True) -> OperatorCommandName | None:
        """The operator's decision; None when `timeout` passed or (`wake_on_cancel`) the
        workflow was cancelled from Temporal with no decision being applied."""
        self._awaiting, self._decision, self._decision_claimed = what, None, False

        def cancelled() -> bool:
            return wake_on_cancel and self._temporal_cancel and not self._decision_claimed

        try:
            await workflow.wait_condition(lambda: self._decision is not None or cancelled(), timeout=timeout)
        except asyncio.TimeoutError:
            if not self._decision_claimed:
                self._awaiting = None
                return None
            # A command was accepted just as the deadline passed: it wins.
            await workflow.wait_condition(lambda: self._decision is not None)
        if self._decision is None:  # cancelled from Temporal
            self._awaiting = None
            return None
        decision, self._awaiting, self._decision, self._decision_claimed = self._decision, None, None, False
        return decision

    async def _notify_customer(self) -> None:
        self._step = StepName.NOTIFY
        workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(StepName.NOTIFY.value)])
        followup_open = False
        reruns = worker_losses = 0
        while True:
            if self._temporal_cancel:
                # After shipping a cancel rolls nothing back; nobody needs to follow up.
                if followup_open:
                    await self._followup_activity(activities.close_followup, "cancelled")
                return
            try:
                await self._execute(StepName.NOTIFY)
                if followup_open:
                    await self._followup_activity(activities.close_followup, "resent")
                self._completed.append(StepName.NOTIFY)
                return
            except (*STEP_ERRORS, asyncio.CancelledError) as err:
                if self._temporal_cancel and is_cancelled_exception(err):
                    continue
                if isinstance(err, asyncio.CancelledError):
                    raise  # v2's cancellation path
                lost = lost_attempt(err)
                if _rerun_allowed(lost, reruns, worker_losses) and workflow.patched(PATCH_LOST_ATTEMPTS):
                    # No mail was attempted, or the worker died: not the customer's address.
                    reruns += 1
                    worker_losses += lost == "worker"
                    await self._pause_before_rerun(StepName.NOTIFY, lost, _failure_message(err), reruns,
                                                   worker_losses=worker_losses)
                    continue
                reruns = worker_losses = 0
                # Notifying is after the sale: a failure never rolls back, a person follows up.
                await self._followup_activity(
                    activities.open_followup, f"Could not notify the customer: {_failure_message(err)}"
                )
                followup_open = True
                self._set_saga_status(SagaState.NEEDS_FOLLOWUP)
                decision = await self._await_operator("followup", None)
                if decision is None:
                    continue  # cancelled from Temporal
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
        to_undo = list(dict.fromkeys(to_undo))  # a step both completed and in flight is undone once
        if to_undo:
            self._set_saga_status(SagaState.COMPENSATING)
            await self._record("", saga_status=SagaState.COMPENSATING)
        bounded = bool(to_undo) and workflow.patched(PATCH_BOUNDED_COMPENSATIONS)
        failed = await self._run_compensations(list(reversed(to_undo)), bounded=bounded)
        while failed:
            failed = await self._wait_while_compensation_stuck(failed)
        if outcome in OUTCOME_EMAILS and workflow.patched(PATCH_OUTCOME_TOLD):
            await self._tell_outcome(outcome)
        await self._finish(outcome, reason)
        return outcome

    async def _tell_outcome(self, outcome: SagaState) -> None:
        """Email the customer how the order ended. Nothing rolls back on a failure: the
        failed attempts are in the notification ledger, and the order goes on the follow-up
        queue for staff to reach the customer another way."""
        notice = OutcomeNotice(order_id=self._input.order_id, outcome=OUTCOME_EMAILS[outcome],
                               idempotency_key=self._key(StepName.NOTIFY))
        reruns = worker_losses = 0
        while True:
            try:
                await workflow.execute_activity(
                    activities.notify_outcome, notice,
                    start_to_close_timeout=STEP_POLICIES[StepName.NOTIFY].start_to_close,
                    retry_policy=step_retry_policy(StepName.NOTIFY, self._input.retry),
                )
                return
            except STEP_ERRORS as err:
                lost = lost_attempt(err)
                if _rerun_allowed(lost, reruns, worker_losses) and workflow.patched(PATCH_OUTCOME_RERUN):
                    # The same key: the mailer sends the message once, whichever run gets it.
                    # No event: the order's timeline ends as it did (the ledger shows the email).
                    reruns += 1
                    worker_losses += lost == "worker"
                    await workflow.sleep(_circuit_wait(err)
                                         or lost_attempt_pause(StepName.NOTIFY, self._input.retry, reruns))
                    continue
                message = _failure_message(err)
                workflow.logger.warning("could not tell the customer of order %s: %s", self._input.order_id, message)
                if workflow.patched(PATCH_OUTCOME_FOLLOWUP):
                    ended = "was cancelled" if outcome == SagaState.CANCELLED else "did not go through"
                    await self._followup_activity(
                        activities.open_outcome_followup,
                        f"Could not tell the customer that their order {ended}: {message}")
                return

    async def _run_compensations(self, steps: list[StepName], *, bounded: bool) -> list[tuple[StepName, str]]:
        """Run each compensation; returns those that could not complete, with why. Every one
        runs even when an earlier one failed (v2's unbounded ones ended the workflow instead)."""
        failed = []
        for step in steps:
            arg = StepInput(order_id=self._input.order_id, step=step, idempotency_key=self._key(step, ":compensate"))
            retry = compensation_retry_policy(self._input.retry, bounded=bounded)
            reruns = worker_losses = 0
            while True:
                try:
                    if STEP_POLICIES[step].local:
                        await workflow.execute_local_activity(
                            COMPENSATIONS[step], arg, start_to_close_timeout=COMPENSATION_TIMEOUT, retry_policy=retry
                        )
                    else:
                        await workflow.execute_activity(
                            COMPENSATIONS[step], arg, start_to_close_timeout=COMPENSATION_TIMEOUT, retry_policy=retry,
                            task_queue=self._input.payments_task_queue if step in PAYMENT_STEPS else None,
                        )
                    break
                except STEP_ERRORS as err:
                    if not bounded:
                        raise
                    # A lost worker, our own outage or an open circuit is not the compensation
                    # failing: waited out (as for steps) instead of ending compensation_stuck.
                    lost = lost_attempt(err)
                    if _rerun_allowed(lost, reruns, worker_losses):
                        reruns += 1
                        worker_losses += lost == "worker"
                        await self._pause_before_rerun(step, lost, _failure_message(err), reruns,
                                                       _circuit_wait(err), wake_on_cancel=False,
                                                       worker_losses=worker_losses)
                        continue
                    failed.append((step, _failure_message(err)))
                    break
        return failed

    async def _wait_while_compensation_stuck(self, failed: list[tuple[StepName, str]]) -> list[tuple[StepName, str]]:
        """Say which compensations could not complete and why, wait for retry_compensation,
        then run those again; returns the ones still failing."""
        self._set_saga_status(SagaState.COMPENSATION_STUCK)
        for step, message in failed:
            await self._record(
                EventKind.STUCK, step=step,
                detail=f"{COMPENSATION_LABELS[step]} could not complete: {message} "
                       "(waiting for an operator to retry compensation)",
                saga_status=SagaState.COMPENSATION_STUCK,
            )
        # A cancel from Temporal does not end this wait: money or stock would stay out.
        await self._await_operator("compensation", None, wake_on_cancel=False)
        self._set_saga_status(SagaState.COMPENSATING)
        return await self._run_compensations([step for step, _ in failed], bounded=True)

    async def _on_workflow_cancelled(self) -> None:
        """v2: the workflow itself was cancelled (from Temporal, not the app's cancel signal)."""
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
        if workflow.patched(PATCH_TRACKER_ID):
            tracker_id = delivery_workflow_id(workflow.info().workflow_id)
        else:
            tracker_id = f"delivery-{self._input.order_id}"
        await workflow.start_child_workflow(
            DeliveryTrackingWorkflow.run,
            DeliveryInput(
                order_id=self._input.order_id,
                check_interval_seconds=self._input.delivery_check_interval_seconds,
                checks_per_run=self._input.delivery_checks_per_run,
                deadline_seconds=self._input.delivery_deadline_seconds,
                give_up_seconds=self._input.delivery_give_up_seconds,
            ),
            id=tracker_id,
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

    @workflow.signal
    async def retry_compensation(self, command: OperatorCommand) -> None:
        await self._on_command(Cmd.RETRY_COMPENSATION, command)

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
        elif name == Cmd.RETRY_COMPENSATION:
            if self._awaiting != "compensation" or self._decision_claimed:
                return "no compensation is stuck"
        elif name == Cmd.CANCEL:
            if self._cancel_claimed or self._phase == "compensating":
                return "the order is already being cancelled or rolled back"
            if self._temporal_cancel:
                return "the workflow is already being cancelled"
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
        new_status = {
            Cmd.RETRY: SagaState.RUNNING, Cmd.RESEND: SagaState.RUNNING,
            Cmd.RETRY_COMPENSATION: SagaState.COMPENSATING,
        }.get(name)
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
