"""The return saga workflow ("ReturnSaga"): one per return, id from the return
(shared.return_workflow_id). Workflow code only: no Django, no I/O.

Waits for the parcel (the `parcel_received` signal, from the carrier's `returned` event or
staff, until its deadline), restocks what came back sellable, refunds through the gateway
under the return's own key, and tells the customer. A refund without a return (goodwill)
starts at the refund. A refund that cannot complete (gateway down past its retries, or
refused) leaves the return stuck until an operator's `return_retry` or `return_abandon`.
Each command acts once per audit row id; one that does not fit is recorded as ignored.

Anything that changes the commands it issues must go behind workflow.patched("<change-id>").
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from ..errors import NOT_COUNTED_TOWARD_STUCK, InfrastructureUnavailable
    # By its full name: `from . import` names the package, which the sandbox does not pass
    # through, and the activities would be defined (and registered) a second time.
    import orders.saga.return_activities as acts
    import orders.saga.search_attributes as sa
    from .attempts import error_cause
    from .policies import (
        BOOKKEEPING_TIMEOUT,
        RETURN_NOTIFY_POLICY,
        RETURN_REFUND_POLICY,
        RETURN_RESTOCK_POLICY,
        bookkeeping_retry_policy,
        lost_attempt_pause,
        return_step_retry_policy,
    )
    from .shared import (
        EventKind,
        OperatorCommand,
        ParcelReceived,
        ReturnCommandName,
        ReturnInput,
        ReturnStep,
        ReturnStepInput,
        ReturnTransition,
        StepName,
    )

# Workflow code, so not passed through (the sandbox imports it afresh, as it does this module).
from .order_saga import STEP_ERRORS, _failure_message

# The refund email's attempts lost to our own outage or a dead worker run again instead of
# leaving the customer untold, as the refund's do (the order saga's outcome email was seen
# losing all three to a 4 s database outage). Asked only when an attempt was lost, so only
# such histories carry the marker.
PATCH_NOTIFY_RERUN = "return-email-rerun"

# Return.State values (the model is Django's; the workflow speaks its values).
RECEIVED, REFUNDING, STUCK, REFUNDED, EXPIRED, ABANDONED = (
    "received", "refunding", "stuck", "refunded", "expired", "abandoned")


def _waited_out(err: Exception) -> bool:
    """Not the refund's failure: our own outage, the gateway's open circuit, a lost worker.
    The saga pauses and runs the refund again instead of calling it stuck."""
    cause = error_cause(err)
    if isinstance(cause, TimeoutError):
        return True
    return isinstance(cause, ApplicationError) and (
        cause.type == InfrastructureUnavailable.__name__ or cause.type in NOT_COUNTED_TOWARD_STUCK)


@workflow.defn(name="ReturnSaga")
class ReturnSagaWorkflow:
    @workflow.init
    def __init__(self, input: ReturnInput) -> None:
        self._input = input
        self._parcel: ParcelReceived | None = None
        self._phase = "waiting_parcel" if input.parcel_deadline_seconds is not None else "running"
        self._awaiting_operator = False
        self._decision: tuple[ReturnCommandName, OperatorCommand] | None = None
        self._seen_actions: set[int] = set()
        self._counts: dict[str, int] = {}
        self._late_parcels: list[ParcelReceived] = []

    @workflow.run
    async def run(self, input: ReturnInput) -> str:
        outcome = await self._run(input)
        await self._answer_late_parcels()
        # A command being recorded as ignored right now gets its row before the run ends.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome

    async def _run(self, input: ReturnInput) -> str:
        if input.parcel_deadline_seconds is not None:
            self._set_status("running", ReturnStep.PARCEL)
            try:
                await workflow.wait_condition(lambda: self._parcel is not None,
                                              timeout=timedelta(seconds=input.parcel_deadline_seconds))
            except asyncio.TimeoutError:
                self._phase = "finished"
                self._set_status("completed", ReturnStep.PARCEL)
                await self._bookkeeping(acts.close_return_unrefunded, ReturnTransition(
                    return_id=input.return_id, kind=EventKind.FINISHED.value, return_state=EXPIRED,
                    detail=(f"Return #{input.return_id}: the parcel did not arrive within "
                            f"{_duration(input.parcel_deadline_seconds)}; closed without a refund"),
                    key=self._key("expired"),
                ))
                return EXPIRED
            self._phase = "running"
            await self._record(EventKind.SIGNAL, ReturnStep.PARCEL,
                               f"Return #{input.return_id}: parcel received ({self._parcel.source})",
                               return_state=RECEIVED, action_id=self._parcel.action_id, source=self._parcel.source)
            self._set_status("running", ReturnStep.RESTOCK)
            await workflow.execute_local_activity(
                acts.return_restock, ReturnStepInput(return_id=input.return_id, step=ReturnStep.RESTOCK.value),
                start_to_close_timeout=RETURN_RESTOCK_POLICY.start_to_close,
                retry_policy=return_step_retry_policy(RETURN_RESTOCK_POLICY, input.retry),
            )
        if not await self._refund():
            self._phase = "finished"
            return ABANDONED
        await self._notify()
        self._phase = "finished"
        self._set_status("completed", ReturnStep.RETURN)
        await self._record(EventKind.FINISHED, ReturnStep.RETURN, f"Return #{input.return_id} refunded",
                           return_state=REFUNDED)
        return REFUNDED

    # --- the steps ----------------------------------------------------------------------

    async def _refund(self) -> bool:
        """Refund; while it cannot, wait for an operator. False when they gave it up."""
        self._set_status("running", ReturnStep.REFUND)
        offset = 0
        while True:
            err, offset = await self._run_waiting_out(acts.return_refund, ReturnStep.REFUND, RETURN_REFUND_POLICY,
                                                      offset, task_queue=self._input.payments_task_queue)
            if err is None:
                return True
            message = _failure_message(err)
            self._set_status("stuck", ReturnStep.REFUND)
            await self._record(EventKind.STUCK, ReturnStep.REFUND,
                               f"Return #{self._input.return_id}: the refund could not complete: {message} "
                               "(waiting for an operator to retry it or give it up)", return_state=STUCK)
            self._awaiting_operator = True
            await workflow.wait_condition(lambda: self._decision is not None)
            (name, command), self._decision = self._decision, None
            self._awaiting_operator = False
            why = f": {command.reason}" if command.reason else ""
            if name == ReturnCommandName.ABANDON:
                await self._record(EventKind.SIGNAL, ReturnStep.REFUND,
                                   f"give up refund requested (action #{command.action_id}){why}",
                                   action_id=command.action_id)
                self._set_status("compensated", ReturnStep.REFUND)
                await self._bookkeeping(acts.close_return_unrefunded, ReturnTransition(
                    return_id=self._input.return_id, kind=EventKind.FINISHED.value, return_state=ABANDONED,
                    detail=f"Return #{self._input.return_id} closed without a refund: an operator gave it up",
                    key=self._key("abandoned"),
                ))
                return False
            await self._record(EventKind.SIGNAL, ReturnStep.REFUND,
                               f"retry refund requested (action #{command.action_id}){why}",
                               return_state=REFUNDING, action_id=command.action_id)
            self._set_status("running", ReturnStep.REFUND)

    async def _notify(self) -> None:
        """After the money moved a failed email rolls nothing back: it is on the timeline."""
        self._set_status("running", ReturnStep.NOTIFY)
        await self._run_waiting_out(acts.return_notify, ReturnStep.NOTIFY, RETURN_NOTIFY_POLICY, 0,
                                    rerun_patch=PATCH_NOTIFY_RERUN)

    async def _run_waiting_out(self, fn, step: ReturnStep, policy, offset: int, *, task_queue: str | None = None,
                               rerun_patch: str | None = None) -> tuple[Exception | None, int]:
        """Run a step; run it again after a pause while its attempts are lost (our own outage,
        an open circuit, a dead worker: _waited_out), up to 20 times. Returns None or the error
        that ended it, and the attempt offset the step's next run counts on from.
        `rerun_patch`: the patch the reruns came with (asked only when an attempt was lost)."""
        reruns = 0
        while True:
            try:
                await workflow.execute_activity(
                    fn, ReturnStepInput(return_id=self._input.return_id, step=step.value, attempt_offset=offset),
                    task_queue=task_queue, start_to_close_timeout=policy.start_to_close,
                    retry_policy=return_step_retry_policy(policy, self._input.retry),
                )
                return None, offset
            except STEP_ERRORS as err:
                offset += policy.max_attempts
                if _waited_out(err) and reruns < 20 and (rerun_patch is None or workflow.patched(rerun_patch)):
                    reruns += 1
                    # Paced as the order saga's step of the same kind.
                    paced_as = StepName.CHARGE if step == ReturnStep.REFUND else StepName.NOTIFY
                    await workflow.sleep(lost_attempt_pause(paced_as, self._input.retry, reruns))
                    continue
                return err, offset

    # --- signals ------------------------------------------------------------------------

    @workflow.signal
    async def parcel_received(self, signal: ParcelReceived) -> None:
        if signal.action_id is not None:
            if signal.action_id in self._seen_actions:
                return
            self._seen_actions.add(signal.action_id)
        if self._phase == "waiting_parcel" and self._parcel is None:
            self._parcel = signal  # recorded (with its action) by run, in order
            return
        if self._phase == "finished":
            self._late_parcels.append(signal)
            return
        await self._record(EventKind.IGNORED, ReturnStep.PARCEL,
                           f"parcel received ({signal.source}) ignored: the parcel is already in",
                           action_id=signal.action_id, action_outcome="ignored")

    @workflow.signal
    async def return_retry(self, command: OperatorCommand) -> None:
        await self._on_command(ReturnCommandName.RETRY, command)

    @workflow.signal
    async def return_abandon(self, command: OperatorCommand) -> None:
        await self._on_command(ReturnCommandName.ABANDON, command)

    async def _on_command(self, name: ReturnCommandName, command: OperatorCommand) -> None:
        if command.action_id in self._seen_actions:
            return
        self._seen_actions.add(command.action_id)
        if not self._awaiting_operator or self._decision is not None:
            await self._record(EventKind.IGNORED, ReturnStep.REFUND,
                               f"{name.value} ignored: the return's refund is not stuck",
                               action_id=command.action_id, action_outcome="ignored")
            return
        self._decision = (name, command)

    async def _answer_late_parcels(self) -> None:
        """A parcel reported after the return closed is recorded, not acted on."""
        for signal in self._late_parcels:
            await self._record(EventKind.IGNORED, ReturnStep.PARCEL,
                               f"parcel received ({signal.source}) ignored: the return is closed",
                               action_id=signal.action_id, action_outcome="ignored")
        self._late_parcels.clear()

    @workflow.query
    def state(self) -> dict:
        return {"phase": self._phase, "awaiting_operator": self._awaiting_operator,
                "parcel": self._parcel.source if self._parcel else None}

    # --- bookkeeping --------------------------------------------------------------------

    def _set_status(self, status: str, step: ReturnStep) -> None:
        workflow.upsert_search_attributes([sa.SAGA_STATUS.value_set(status), sa.CURRENT_STEP.value_set(step.value)])

    def _key(self, what: str) -> str:
        n = self._counts[what] = self._counts.get(what, 0) + 1
        return f"{workflow.info().workflow_id}:t:{what}:{n}"

    async def _record(self, kind: EventKind | str, step: ReturnStep, detail: str, *, return_state: str = "",
                      action_id: int | None = None, action_outcome: str = "applied", source: str = "") -> None:
        kind_value = kind.value if isinstance(kind, EventKind) else kind
        await self._bookkeeping(acts.record_return_transition, ReturnTransition(
            return_id=self._input.return_id, kind=kind_value, step=step.value, detail=detail,
            return_state=return_state, action_id=action_id, source=source,
            action_outcome=action_outcome if action_id is not None else "",
            key=self._key(f"action-{action_id}" if action_id is not None else f"{kind_value}.{step.value}"),
        ))

    async def _bookkeeping(self, fn, transition: ReturnTransition) -> None:
        await workflow.execute_local_activity(
            fn, transition, start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=bookkeeping_retry_policy(self._input.retry),
        )


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 7200:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} s"
