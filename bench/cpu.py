"""CPU time by process, from /proc (Linux): where a benchmark phase's CPU went.

    before = cpu_snapshot({"bench process": [os.getpid()], "dev server": [server_pid]})
    ... the phase ...
    spent = cpu_spent(before)   # {"bench process": 12.3, "dev server": 8.1, "postgres": 5.0}

A part's processes include their descendants, except another part's (the dev server, a
child of the benchmark process, counts as itself only); "postgres" is every process named
postgres on the machine (its backends come and go), so measure on an otherwise quiet machine.
"""

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds used) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # Fields after the name: state(0) ppid(1) ... utime(11) stime(12)
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICK


def _processes() -> dict[int, tuple[int, str, float]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def cpu_snapshot(parts: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each part's processes (with their descendants) and of Postgres."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    snapshot = {}
    # A part's descendants stop at another part's processes: the dev server, started by the
    # benchmark process, is its own part and must not be counted in the benchmark's too.
    claimed = {pid for roots in parts.values() for pid in roots}
    for part, roots in parts.items():
        pids, todo = set(), list(roots)
        while todo:
            pid = todo.pop()
            if pid in claimed and pid not in roots:
                continue
            if pid in procs and pid not in pids:
                pids.add(pid)
                todo.extend(children.get(pid, []))
        snapshot[part] = {pid: procs[pid][2] for pid in pids}
    snapshot["postgres"] = {pid: cpu for pid, (_, name, cpu) in procs.items() if name == "postgres"}
    return snapshot


def cpu_spent(before: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each part used since `before` (processes that ended meanwhile are lost;
    ones that started are counted from zero)."""
    parts = {part: list(pids) for part, pids in before.items() if part != "postgres"}
    after = cpu_snapshot(parts)
    spent = {}
    for part, now in after.items():
        then = before.get(part, {})
        spent[part] = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
    return spent
