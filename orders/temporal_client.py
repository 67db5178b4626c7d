"""The app's Temporal client, shared by every sync caller through the async bridge."""

from django.conf import settings
from temporalio.client import Client

from ordersite import tracing

from . import async_bridge

_clients: dict[tuple[str, str, bool], Client] = {}


async def get_client() -> Client:
    """A connected client for the configured address (connections are made once per address)."""
    # With tracing on, the client carries each caller's trace into Temporal (StartWorkflow,
    # SignalWorkflow headers), so the workflow and its activities join the request's trace.
    key = (settings.TEMPORAL_ADDRESS, settings.TEMPORAL_NAMESPACE, tracing.tracing_on())
    client = _clients.get(key)
    if client is None:
        client = await Client.connect(key[0], namespace=key[1], interceptors=tracing.temporal_interceptors())
        _clients[key] = client
    return client


def workflow_ui_url(workflow_id: str) -> str:
    """Where staff see a workflow in Temporal's UI; empty when the order has no workflow yet."""
    if not workflow_id:
        return ""
    base = settings.TEMPORAL_UI_URL.rstrip("/")
    return f"{base}/namespaces/{settings.TEMPORAL_NAMESPACE}/workflows/{workflow_id}"


def run_with_client(action, timeout: float = 30):
    """Run `action(client)` (a coroutine function) on the bridge loop and return its result."""

    async def call():
        return await action(await get_client())

    return async_bridge.run(call, timeout)
