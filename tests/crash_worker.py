"""A saga worker that dies right after one activity committed, once (tests only).

CRASH_AFTER=<activity name>[:<transition kind>] — e.g. `validate_order` or
`record_transition:finished`. The process exits with os._exit (no cleanup, no reply to
Temporal) as a SIGKILL would, so the workflow task is replayed elsewhere and its local
activities run again. Prints "ready" once polling.
"""

import asyncio
import inspect
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
os.environ.setdefault("DJANGO_ENV", "test")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from temporalio import activity  # noqa: E402
from temporalio.client import Client  # noqa: E402

from orders.saga import activities  # noqa: E402
from orders.saga.worker import build_workers  # noqa: E402

NAME, _, KIND = os.environ["CRASH_AFTER"].partition(":")


def crashing(real):
    def crash_after_commit(arg):
        result = real(arg)
        if not KIND or getattr(arg, "kind", "") == KIND:
            print(f"dying after {NAME} {KIND}".strip(), flush=True)
            os._exit(137)
        return result

    # The real signature and types, so arguments decode as the real ones.
    crash_after_commit.__signature__ = inspect.signature(real)
    crash_after_commit.__annotations__ = dict(real.__annotations__)
    return activity.defn(name=NAME)(crash_after_commit)


async def main() -> None:
    client = await Client.connect(settings.TEMPORAL_ADDRESS)
    workers = build_workers(client, activity_overrides={NAME: crashing(getattr(activities, NAME))})
    runs = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(asyncio.gather(*runs), 90)
    finally:
        print("gave up: nothing to crash on within 90 s", flush=True)
        os._exit(1)


asyncio.run(main())
