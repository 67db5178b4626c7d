"""One long-lived event loop in a daemon thread, for sync code that must talk asyncio.

The Temporal client and the channel layer keep connections bound to the loop that made
them; Django views, activities and Celery tasks are synchronous and short-lived. Running
every such call on one persistent loop reuses those connections instead of opening new
ones per call (which async_to_sync would do, leaking a connection pool each time).
"""

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="async-bridge", daemon=True).start()
            _loop = loop
        return _loop


def submit(make_coro: Callable[[], Awaitable[T]]) -> Future:
    """Schedule a coroutine on the bridge loop; returns a concurrent future."""
    return asyncio.run_coroutine_threadsafe(_call(make_coro), _get_loop())


async def _call(make_coro: Callable[[], Awaitable[T]]) -> T:
    return await make_coro()


def run(make_coro: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """Run a coroutine on the bridge loop and wait for its result."""
    if threading.current_thread().name == "async-bridge":
        raise RuntimeError("async_bridge.run called from the bridge loop itself; await instead")
    return submit(make_coro).result(timeout)
