"""A workflow for tests/test_sandbox_imports.py: which module object code running inside the
workflow sandbox gets when it imports a library lazily (as redis's connection pool does
when it is reset, from a finalizer that may run on a workflow's thread)."""

import importlib

from temporalio import workflow


@workflow.defn(name="SandboxImportProbe")
class SandboxImportProbe:
    @workflow.run
    async def run(self, module: str) -> int:
        return id(importlib.import_module(module))
