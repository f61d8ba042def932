"""Process bookkeeping through ``/proc``: liveness, identity, waiting and killing.

Every server of the local topology daemonizes, so none of them is our child: they are found again
through pid files, and a PostgreSQL node's processes (postmaster and children) are recognised by
their executable and their working directory, which PostgreSQL sets to the data directory. That
also finds the children left behind for a moment after the postmaster was SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from dbscale.errors import LocalTopologyError

_PROC = Path("/proc")


def is_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (zombies count as exited)."""
    if pid <= 0:
        return False
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        # /proc unreadable for this pid: fall back to signal 0.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Field 3 (after the parenthesised command, which may itself contain spaces) is the state.
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    return state not in ("Z", "X")


def exe_of(pid: int) -> str | None:
    """The resolved executable path of ``pid``, or None when unknown or not permitted."""
    try:
        return os.readlink(_PROC / str(pid) / "exe")
    except OSError:
        return None


def cwd_of(pid: int) -> str | None:
    """The working directory of ``pid``, or None when unknown or not permitted."""
    try:
        return os.readlink(_PROC / str(pid) / "cwd")
    except OSError:
        return None


def read_pidfile(path: Path) -> int | None:
    """The pid in the first line of ``path``, or None if the file is missing or malformed."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def is_process_of(pid: int, executable: Path) -> bool:
    """Whether ``pid`` is alive and runs ``executable`` (guards against pid reuse)."""
    if not is_alive(pid):
        return False
    exe = exe_of(pid)
    if exe is None:
        return True  # cannot tell; trust the pid file
    return os.path.realpath(exe.removesuffix(" (deleted)")) == os.path.realpath(executable)


def live_pid_from_file(pidfile: Path, executable: Path) -> int | None:
    """The pid recorded in ``pidfile`` if that process is alive and runs ``executable``."""
    pid = read_pidfile(pidfile)
    if pid is not None and is_process_of(pid, executable):
        return pid
    return None


def cmdline_of(pid: int) -> list[str]:
    """The argv of ``pid`` (empty when unknown or gone)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def live_pid_running(pidfile: Path, argument: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and ``argument`` is in its argv (e.g. its config file).

    For interpreted servers (Patroni is a Python script) whose executable says nothing.
    """
    pid = read_pidfile(pidfile)
    if pid is not None and is_alive(pid) and argument in cmdline_of(pid):
        return pid
    return None


def pids_in_dir(directory: Path, executable: Path) -> list[int]:
    """Live processes running ``executable`` whose working directory is ``directory``."""
    want_dir = os.path.realpath(directory)
    want_exe = os.path.realpath(executable)
    found: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        exe = exe_of(pid)
        if exe is None or os.path.realpath(exe.removesuffix(" (deleted)")) != want_exe:
            continue
        if cwd_of(pid) == want_dir and is_alive(pid):
            found.append(pid)
    return sorted(found)


def send_signal(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to every pid, ignoring the ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float, poll: float = 0.05) -> list[int]:
    """Wait until every pid has exited; return the ones still alive after ``timeout`` seconds."""
    remaining = [p for p in pids if is_alive(p)]
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        time.sleep(poll)
        remaining = [p for p in remaining if is_alive(p)]
    return remaining


def terminate(pids: Iterable[int], sig: signal.Signals, timeout: float) -> list[int]:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL survivors; return any that still live."""
    targets = list(pids)
    send_signal(targets, sig)
    send_signal(targets, signal.SIGCONT)  # a stopped (SIGSTOP, "hung") process acts on it only then
    left = wait_gone(targets, timeout)
    if left:
        send_signal(left, signal.SIGKILL)
        left = wait_gone(left, 5.0)
    return left


def sigkill(pid: int | None) -> int | None:
    """SIGKILL one process (if any) and wait for it to go; return the pid for the caller's records."""
    if pid is not None:
        send_signal([pid], signal.SIGKILL)
        wait_gone([pid], 5.0)
    return pid


def stop_main(label: str, pid: int | None, timeout: float) -> None:
    """SIGTERM one process, SIGKILL after ``timeout``; raise if it survives even that."""
    if pid is not None and terminate([pid], signal.SIGTERM, timeout):
        raise LocalTopologyError(f"{label} (pid {pid}) did not exit even after SIGKILL")
