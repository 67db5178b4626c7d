"""bench/cpu.py splits CPU time between the parts of a benchmark (bench/saga_latency.py):
a child process named as a part of its own is counted there, not in its parent's part too."""

import os
import subprocess
import sys
import time

from bench.cpu import cpu_snapshot, cpu_spent

BUSY = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\nimport sys; sys.stdin.read()"


def test_a_child_named_as_its_own_part_is_not_counted_in_its_parent():
    child = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
    try:
        before = cpu_snapshot({"parent": [os.getpid()], "child": [child.pid]})
        deadline = time.monotonic() + 30
        while cpu_spent(before)["child"] < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        spent = cpu_spent(before)
    finally:
        child.communicate(b"")
    assert spent["child"] >= 0.5
    # The parent only slept and polled /proc meanwhile: its share is far below the child's.
    assert spent["parent"] < spent["child"] / 2, spent


def test_a_child_not_named_is_counted_in_its_parent():
    child = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
    try:
        before = cpu_snapshot({"parent": [os.getpid()]})
        grand = {"parent": [os.getpid(), child.pid]}
        deadline = time.monotonic() + 30
        while cpu_snapshot(grand)["parent"].get(child.pid, 0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        spent = cpu_spent(before)
    finally:
        child.communicate(b"")
    assert spent["parent"] >= 0.5, spent
