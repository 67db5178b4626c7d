"""Browser tests: the real ASGI app under uvicorn, real sagas, headless Chromium.

The web server runs in a thread of the test process, so it shares the test database,
the settings the fixtures change (task queues, fault injection) and the Temporal dev
server of tests/conftest.py. Workers come from `saga_env`; tests are async and drive
the browser with Playwright's async API on the same event loop as the workers.
"""

import asyncio
import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from asgiref.sync import sync_to_async

from tests.db_threads import close_connections_of_other_threads
from django.test import Client, override_settings
from playwright.async_api import async_playwright, expect

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Waits for the page to catch up with a saga: generous, they return as soon as it does.
LIVE_TIMEOUT_MS = 30_000
expect.set_options(timeout=LIVE_TIMEOUT_MS)

# Recorded in every page from its first byte: a snapshot of what the saga parts of the page
# say (step states, status badges, the customer's headline) each time the DOM changes. The
# tests read the sequence to prove the page moved step by step, not just where it ended.
RECORDER_JS = r"""
(() => {
  const text = (el) => el ? el.textContent.replace(/\s+/g, " ").trim() : null;
  function snapshot() {
    const steps = {};
    for (const li of document.querySelectorAll("li.saga-step")) {
      const m = li.id.match(/^saga-\d+-(step|undo)-(\w+)$/);
      if (!m) continue;
      // The state class sits on the track's head (or, in older markup, the track itself).
      const head = document.getElementById(li.id + "-head") || li;
      const state = [...head.classList].find((c) => c.startsWith("state-"));
      steps[(m[1] === "undo" ? "undo:" : "") + m[2]] = state ? state.slice(6) : "";
    }
    return {
      steps,
      order: text(document.querySelector(".order-summary .order-status")),
      saga: text(document.querySelector(".order-summary .saga-status")),
      headline: text(document.getElementById("customer-headline")),
    };
  }
  window.__snapshots = [];
  let last = "";
  function record() {
    const snap = snapshot();
    const key = JSON.stringify(snap);
    if (key !== last) {
      last = key;
      snap.at = performance.now();
      window.__snapshots.push(snap);
    }
  }
  new MutationObserver(record).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  document.addEventListener("DOMContentLoaded", record);
})();
"""


@pytest.fixture(autouse=True)
def _quick_passwords(settings):
    # Users are made (and one signs in) per test: PBKDF2's 0.8 s per hash buys nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving ordersite.asgi:application in a thread; can be stopped and started
    again on the same port (to cut every websocket, as a deploy or a crash would)."""

    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="browser-test-web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(15)
            assert not self.thread.is_alive(), "uvicorn did not stop"
            self.server = self.thread = None


@pytest.fixture(scope="session")
def web_server(django_db_setup):
    # A fresh instance of the real ASGI module: whitenoise reads its settings when the app
    # is built, and pytest-django has set DEBUG off by now, which would leave the vendored
    # htmx unserved without collectstatic. Serving from the finders is what `make run` does.
    # (Executed from its spec, so an instance other tests imported is left alone.)
    spec = importlib.util.find_spec("ordersite.asgi")
    module = importlib.util.module_from_spec(spec)
    with override_settings(WHITENOISE_USE_FINDERS=True, STATIC_ROOT=None):
        spec.loader.exec_module(module)
    app = module.application
    server = LiveServer(app)
    server.start()
    yield server
    server.stop()
    close_connections_of_other_threads()


@pytest.fixture
async def browser():
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Pages:
    """Opens browser contexts for the live server: anonymous or signed in as a user."""

    def __init__(self, browser, server: LiveServer):
        self.browser = browser
        self.server = server
        self.contexts = []

    async def context(self, user=None):
        context = await self.browser.new_context(base_url=self.server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(LIVE_TIMEOUT_MS)
        await context.add_init_script(RECORDER_JS)
        if user is not None:
            cookie = await sync_to_async(session_cookie)(user)
            await context.add_cookies([{"name": "sessionid", "value": cookie, "url": self.server.url}])
        self.contexts.append(context)
        return context

    async def page(self, user=None):
        return await (await self.context(user)).new_page()

    async def close(self):
        await asyncio.gather(*(c.close() for c in self.contexts), return_exceptions=True)


@pytest.fixture
async def pages(browser, web_server):
    opened = Pages(browser, web_server)
    yield opened
    await opened.close()


class PageWatch:
    """Proves a page was never reloaded: a marker set in its window survives, no further
    load event fires, and the frames its websockets received are counted."""

    def __init__(self, page):
        self.page = page
        self.loads = 0
        self.frames: list[tuple[str, int]] = []
        page.on("load", self._on_load)
        page.on("websocket", self._on_socket)

    def _on_load(self, _page):
        self.loads += 1

    def _on_socket(self, ws):
        ws.on("framereceived", lambda payload: self.frames.append((ws.url, len(payload))))

    async def arm(self):
        """Call once the page has loaded: from here on it must not load again."""
        self.loads = 0
        await self.page.evaluate("window.__notReloaded = true")

    async def assert_not_reloaded(self):
        assert await self.page.evaluate("window.__notReloaded === true"), "the page was reloaded"
        assert self.loads == 0, f"the page loaded {self.loads} more time(s)"

    def frames_from(self, path: str) -> int:
        return sum(1 for url, _ in self.frames if url.endswith(path))

    async def snapshots(self) -> list[dict]:
        return await self.page.evaluate("window.__snapshots")
