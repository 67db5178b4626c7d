"""The delivery tracker workflow ("DeliveryTracking"): one per shipped order, started by
the order saga (orders.saga.order_saga) and outliving it. Workflow code only: no Django, no I/O.

Anything that changes the commands it issues must go behind workflow.patched("<change-id>");
tests/test_replay.py replays recorded histories.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from . import activities
    from .shared import DeliveredSignal, DeliveryCheck, DeliveryInput


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
