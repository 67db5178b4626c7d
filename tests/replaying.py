"""A finished path's history replays on the current code; with RECORD_HISTORIES set it is
also kept under that directory for tests/test_replay.py to replay from then on."""

import os
from pathlib import Path

from temporalio.worker import Replayer

from orders.saga.worker import WORKFLOWS, workflow_runner


async def replays(handle, name: str) -> None:
    """Replay the workflow's history; record it as `<name>-<workflow id>.json` when
    RECORD_HISTORIES names a directory (the id matters: the tracker's derives from it)."""
    history = await handle.fetch_history()
    await Replayer(workflows=WORKFLOWS, workflow_runner=workflow_runner()).replay_workflow(history)
    if record_to := os.environ.get("RECORD_HISTORIES"):
        Path(record_to).mkdir(parents=True, exist_ok=True)
        (Path(record_to) / f"{name}-{handle.id}.json").write_text(history.to_json())
