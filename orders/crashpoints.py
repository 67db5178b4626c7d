"""Crash points: named places where the fault suite kills this process with SIGKILL.

`crash_point("charge.after_gateway")` does nothing unless ORDERSITE_CRASH_AT names that
point, and then it kills the process on the spot, as a power cut or the OOM killer would:
no `finally`, no commit, no graceful shutdown. The points sit where a crash leaves the
outside world and our database disagreeing (the gateway acted, we did not commit), so
tests can show the saga heals it.

ORDERSITE_CRASH_AT is a comma-separated list of `point`, `point@N` (crash at the N-th time
this process reaches the point) or `point%P` (crash with probability P each time, 0-1).
With ORDERSITE_CRASH_ONCE_DIR set, each point fires once across every process sharing
that directory (a marker file is created with O_EXCL), so a restarted worker does not
crash again at the same place; the marker says which process died where.

The environment is read once per process; with nothing named, a call is a dict lookup.
"""

import os
import random
import signal
import sys
import threading
import time

ENV_POINTS = "ORDERSITE_CRASH_AT"
ENV_ONCE_DIR = "ORDERSITE_CRASH_ONCE_DIR"

# Every point hooked in the code, so the suite can name them and catch typos.
POINTS = (
    "charge.after_gateway",  # the gateway charged, our ledger row not yet committed
    "charge.after_commit",  # the charge is in our ledger, the activity has not returned
    "refund.after_gateway",
    "refund.after_commit",
    "bookkeeping.after_commit",  # record_transition wrote its event, the local activity has not returned
    "notify.after_send",  # the mailer has the email, our attempt row not yet committed
    "notify.after_commit",
    "ship.after_booking",  # the carrier booked a parcel, our shipment row not yet updated
    "broadcast.first_publish",  # a fresh worker's first broadcast, before it is published
)

_lock = threading.Lock()
_rules: dict[str, tuple[str, float]] | None = None
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, tuple[str, float]]:
    rules: dict[str, tuple[str, float]] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if "@" in item:
            name, _, nth = item.partition("@")
            rules[name] = ("nth", float(nth))
        elif "%" in item:
            name, _, probability = item.partition("%")
            rules[name] = ("probability", float(probability))
        else:
            rules[item] = ("nth", 1.0)
    unknown = set(rules) - set(POINTS)
    if unknown:
        raise ValueError(f"{ENV_POINTS} names unknown crash points: {', '.join(sorted(unknown))}")
    return rules


def _load() -> dict[str, tuple[str, float]]:
    global _rules
    if _rules is None:
        _rules = _parse(os.environ.get(ENV_POINTS, ""))
    return _rules


def _claim_once(name: str, detail: str) -> bool:
    """True if this process may fire the point (first across processes, when once-only)."""
    directory = os.environ.get(ENV_ONCE_DIR)
    if not directory:
        return True
    try:
        fd = os.open(os.path.join(directory, f"{name}.fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as marker:
        marker.write(f"{name} pid={os.getpid()} at={time.time():.3f} {detail}\n")
        marker.flush()
        os.fsync(marker.fileno())
    return True


def crash_point(name: str, **context) -> None:
    """SIGKILL this process here if the environment names this point (see the module doc)."""
    rules = _load()
    if name not in rules:
        return
    mode, value = rules[name]
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if mode == "nth" and hit != int(value):
        return
    if mode == "probability" and random.random() >= value:
        return
    detail = " ".join(f"{k}={v}" for k, v in context.items())
    if not _claim_once(name, detail):
        return
    sys.stderr.write(f"crash point {name}: SIGKILL pid {os.getpid()} {detail}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
