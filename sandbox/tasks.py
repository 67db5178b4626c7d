"""The sandbox's background job: its carrier reporting parcels' progress (dev and demos)."""

from celery import shared_task

from .carrier_reports import sandbox_carrier_report


@shared_task(name="sandbox.carrier_report", ignore_result=True)
def carrier_report() -> int:
    return sandbox_carrier_report()
