"""Which process wrote a file, told apart from a later process that reuses its pid.

After a restart (a container's above all) pids are handed out again from the start, so a
bare pid in a lock or a status file can name a live, unrelated process. A process is
named here by its pid, its start time (clock ticks since boot, from /proc) and the boot it
started in; where /proc is missing (macOS) only the pid is known, and it is trusted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def identity(pid: int | None = None) -> dict[str, Any]:
    """What names process `pid` (default: this one) for `alive` to check later."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_ticks": _start_ticks(pid), "boot_id": _boot_id()}


def alive(process: dict[str, Any] | None) -> bool:
    """Whether the process an `identity` names still runs. A record without a start time
    (an older file, or a system without /proc) is judged by its pid alone."""
    pid = (process or {}).get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:  # a child of this process (a job the app started) stays a zombie until it is reaped
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if "boot_id" in process and process["boot_id"] != _boot_id():
        return False
    recorded = process.get("start_ticks")
    return recorded is None or _start_ticks(pid) == recorded
