"""Stop every Ray process a search started when the search's driver dies, even by ``kill -9``.

Measured with ray 2.60.0: after a SIGKILL of a driver that had called ``ray.init()``, the GCS, raylet and
workers go, but ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` stay (re-parented to PID 1, forever).
Nothing inside a SIGKILLed process can clean up, so the driver starts this small watchdog first, in its own
session, connected by a pipe on its stdin:

- every second it records the driver's descendants whose command line names Ray (with their start
  times, so a recycled PID is never mistaken for one of them);
- the pipe reaches end-of-file when the driver closes it (a normal stop, after ``ray.shutdown()``) or when the
  kernel closes it because the driver died; then every recorded process still alive is SIGKILLed.

Linux only (it reads /proc); elsewhere it just waits for the pipe to close.

Run as ``python -m anytime.search.reaper DRIVER_PID [RAY_TEMP_DIR]``; the directory given, Ray's session
directory for this run, is removed last.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from pathlib import Path

POLL_S = 1.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def ray_processes() -> set[int]:
    """Every live Ray process on this machine (its binaries and services, its renamed workers and agents); for
    checks that a search left nothing behind."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _stat(int(entry)):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::") or b"site-packages/ray/" in cmdline:
                found.add(int(entry))
    return found


def kill_recorded(recorded: dict[int, int]) -> list[int]:
    """SIGKILL each recorded process that is still the same process; returns the PIDs signalled."""
    killed = []
    for pid, start in recorded.items():
        st = _stat(pid)
        if st and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def main(argv: list[str]) -> int:
    driver = int(argv[0])
    me = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe ends this process
    recorded: dict[int, int] = {}
    linux = Path("/proc/self/stat").exists()
    fd = sys.stdin.fileno()
    while True:
        if linux:
            for pid, start in descendants(driver).items():
                if pid != me and pid not in recorded and _is_ray(pid):
                    recorded[pid] = start
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 4096):
            break
    if linux:
        kill_recorded(recorded)
    if len(argv) > 1:  # the run's own Ray directory: nothing in it is needed once its processes are gone
        shutil.rmtree(argv[1], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
