"""What the workflow sandbox imports afresh for every workflow run: the workflow modules,
and nothing they only pass through. A module run again per workflow costs CPU on every
saga (the activities module, with its Django imports and activity definitions, was a
few per cent of the worker's CPU: docs/benchmarks.md), and defines its objects twice."""

import sys
import uuid
import warnings
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from temporalio.client import Client
from temporalio.worker import Worker

from orders.saga.worker import workflow_runner

from .factories import make_order
from .sandbox_probe import SandboxImportProbe

# Audit hooks cannot be removed, so the hook is installed once and records only while a
# test holds a list here.
_executed: list[str] | None = None


def _record_exec(event: str, args: tuple) -> None:
    if event == "exec" and _executed is not None:
        code = args[0]
        _executed.append(getattr(code, "co_filename", ""))


sys.addaudithook(_record_exec)


def _ran(files: list[str], module_path: str) -> bool:
    return any(f.endswith(module_path) for f in files)


@pytest.mark.django_db(transaction=True)
async def test_workflow_runs_import_only_workflow_code(saga_env, settings):
    assert settings.WORKFLOW_SANDBOX
    global _executed
    _executed = files = []
    try:
        order = await sync_to_async(make_order)()
        assert await saga_env.result(order) == "completed"  # the saga, and the tracker it starts
    finally:
        _executed = None
    # The hook sees the sandbox's imports: the workflow modules are run for each workflow.
    assert _ran(files, "orders/saga/order_saga.py")
    assert _ran(files, "orders/saga/delivery_tracker.py")
    for passed_through in ("orders/saga/activities.py", "orders/saga/return_activities.py",
                           "orders/saga/search_attributes.py", "orders/saga/shared.py", "orders/saga/policies.py"):
        assert not _ran(files, passed_through), f"{passed_through} was imported again inside the sandbox"


@pytest.mark.parametrize("module", ["redis.observability.recorder", "redis.asyncio.client"])
async def test_a_library_imported_inside_a_workflow_run_is_the_real_one(temporal_server, module):
    # redis's connection pool imports its metrics recorder when it is reset; a finalizer
    # running on a workflow's thread imported redis afresh inside the sandbox (CI warned
    # "Module redis... was imported after initial workflow load", the whole package anew).
    client = await Client.connect(temporal_server.address)
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with Worker(client, task_queue=queue, workflows=[SandboxImportProbe], workflow_runner=workflow_runner(True)):
            seen = await client.execute_workflow(SandboxImportProbe.run, module, id=f"probe-{uuid.uuid4()}", task_queue=queue,
                                                 task_timeout=timedelta(seconds=5), execution_timeout=timedelta(seconds=20))
    assert seen == id(sys.modules[module])
    assert not [w for w in caught if "imported after initial workflow load" in str(w.message)]
