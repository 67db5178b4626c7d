"""Opening the app's websockets in tests, signed in as a user, and reading frames."""

import time

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from ordersite.asgi import application


def session_cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(path: str, user=None) -> WebsocketCommunicator:
    """Connect (and assert the connection was accepted) as `user`, or anonymously."""
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        cookie = await sync_to_async(session_cookie_for)(user)
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def receive_until(communicator: WebsocketCommunicator, needle: str, timeout: float = 10) -> str:
    """The first frame containing `needle`; frames before it are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no frame containing {needle!r} within {timeout}s")
        html = await communicator.receive_from(timeout=remaining)
        if needle in html:
            return html
