"""Temporal server settings (dynamic config) this app's latency depends on: the one list.

Read by three things, so keep this file free of imports and the entries plain values:
- tests/temporal_server.py (the tests' and benchmarks' dev server) imports it;
- scripts/run_dev.py loads it by path and hands each entry to the `temporal` line of
  Procfile.dev as `start-dev --dynamic-config-value key=value`;
- deploy/temporal/dynamicconfig.yaml says the same for docker-compose's server (a test
  checks the two agree).

history.transferProcessorMaxPollRPS: how often a history shard may read its queue of
tasks to hand over (a workflow task after an activity completes, an activity for another
task queue, a child workflow). Temporal's default, 20 a second, spaced every hand-over of a
lightly loaded shard ~40-50 ms apart: a bare workflow of six no-op activities took 350 ms
on the dev server (one shard), 55 ms with this, and an order's saga 350 -> ~210 ms
(bench/saga_latency.py, docs/benchmarks.md). Under load a read takes a batch, so this
raises the reads' rate, not the work per task.
"""

DYNAMIC_CONFIG = {
    "history.transferProcessorMaxPollRPS": 1000,
}


def start_dev_flags() -> list[str]:
    """The entries as `temporal server start-dev` options."""
    return [flag for key, value in DYNAMIC_CONFIG.items() for flag in ("--dynamic-config-value", f"{key}={value}")]
