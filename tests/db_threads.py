"""Closing database connections that other threads keep, so Postgres can drop the test DB."""

import gc


def close_connections_of_other_threads() -> None:
    """Postgres refuses to drop the test database while any session is open on it. Two
    long-lived threads keep theirs: the websockets' reader (it would close it after 2 s
    idle) and asgiref's shared thread behind the tests' sync_to_async calls. Connections of
    threads that have ended (request and activity threads) wait in reference cycles for
    the garbage collector."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from orders.live import _reader

    for executor in (_reader.pool, SyncToAsync.single_thread_executor):
        executor.submit(connections.close_all).result(10)
    gc.collect()
