"""Stalled sagas: find sagas that have gone quiet, ask Temporal why, flag them for staff.

A saga is *stalled* when its order is in an active saga status (pending, running,
compensating) and has recorded no saga event for SWEEPER_STALL_SECONDS. Only those are
described in Temporal, so a sweep costs the same whatever the number of healthy orders:
the candidate query walks the (saga_status, last_event_at) index of Order.

Stuck and follow-up sagas are not stalled: they wait for a person by design and have their
own queues. A flag clears itself once its order records a newer event, or finishes.

- inspect.py: what Temporal says about a workflow (describe, history, task-queue pollers),
  as plain snapshots. The only module that talks to Temporal.
- classify.py: why a snapshot shows no progress, as a StallFlag kind and words for staff. Pure.
- selectors.py: reads: the quiet sagas to sweep, the open flags the pages show.
- services.py: writes: the sweep itself, opening and clearing flags, the broadcast after commit.

ops.tasks.stalled_saga_sweep (Celery beat) calls services.stalled_saga_sweep.
"""
