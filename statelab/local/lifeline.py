"""Children that die with the process that started them, however it ends (SIGKILL included).

The obvious tool, ``PR_SET_PDEATHSIG`` set in a ``preexec_fn``, is not safe where lessons run: a Jupyter
kernel always has threads, and Python documents ``preexec_fn`` as unsafe in a threaded process (the
child can deadlock between fork and exec). It is also tied to the forking *thread*, not the process.

So the owner starts one small watchdog process (this file run as a script, standard library only) and
keeps the write end of a pipe whose read end is the watchdog's stdin. The owner writes the pids it wants
looked after. When the owner goes away, for whatever reason, the kernel closes its end of the pipe, the
watchdog reads end-of-file and stops every child that is still the same process: SIGTERM (repeated, as
Redis may ignore one while it writes its AOF), then SIGKILL after a grace period. The watchdog lives in a
session of its own, so a Ctrl-C or a kernel interrupt does not reach it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE_SECONDS = 5.0


def start_time(pid: int) -> str:
    """The process's start time from /proc (Linux), to tell it from a later process with the same pid;
    "-" where there is no /proc or the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return "-" if fields[0] == "Z" else fields[19]


class Lifeline:
    """The owner's side: ``watch(pid)`` after starting a child, ``forget(pid)`` once it has been stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0  # the pid that opened the pipe: a forked copy of the owner must open its own
        self._fd: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watched: dict[int, str] = {}

    def watch(self, pid: int) -> None:
        with self._lock:
            self._watched[pid] = start_time(pid)
            self._send(f"+{pid} {self._watched[pid]}\n")

    def forget(self, pid: int) -> None:
        with self._lock:
            if self._watched.pop(pid, None) is not None:
                self._send(f"-{pid}\n")

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None and self._watchdog.poll() is None else None

    def _send(self, line: str) -> None:
        for _ in range(2):
            if self._fd is None or self._owner != os.getpid():
                self._open()
                line = "".join(f"+{pid} {start}\n" for pid, start in self._watched.items())
            fd = self._fd
            assert fd is not None  # _open() set it
            try:
                os.write(fd, line.encode())
                return
            except OSError:  # the watchdog died (killed by hand): start another and tell it everything
                self._close()
        raise OSError("could not start the statelab watchdog process")

    def _open(self) -> None:
        read_end, write_end = os.pipe()  # both non-inheritable: no other child keeps the pipe open
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._fd, self._owner = write_end, os.getpid()

    def _close(self) -> None:
        if self._fd is not None and self._owner == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._watchdog = None

    def _after_fork(self) -> None:
        # A forked copy must not keep the owner's watchdog waiting; it opens its own pipe on first use.
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._watchdog, self._watched = None, None, {}
        self._lock = threading.Lock()


lifeline = Lifeline()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lifeline._after_fork)


# --- the watchdog process -------------------------------------------------------------------------------


def alive(pid: int, started: str) -> bool:
    """True if ``pid`` is the process that started at ``started`` ("-": any process with that pid)."""
    if started != "-":
        return start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(watched: dict[int, str]) -> None:
    deadline = time.monotonic() + GRACE_SECONDS
    live = [pid for pid, started in watched.items() if alive(pid, started)]
    next_term = 0.0
    while live and time.monotonic() < deadline:
        if time.monotonic() >= next_term:
            for pid in live:
                _signal(pid, signal.SIGTERM)
            next_term = time.monotonic() + 0.5
        time.sleep(0.05)
        live = [pid for pid in live if alive(pid, watched[pid])]
    for pid in live:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _watch() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watched: dict[int, str] = {}
    for raw in sys.stdin.buffer:  # blocks until the owner writes, or is gone (end of file)
        line = raw.decode().split()
        if line and line[0].startswith("+") and len(line) == 2:
            watched[int(line[0][1:])] = line[1]
        elif line and line[0].startswith("-"):
            watched.pop(int(line[0][1:]), None)
    _stop(watched)


if __name__ == "__main__":
    _watch()
