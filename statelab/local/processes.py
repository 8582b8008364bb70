"""One process of the stack (``Child``): started with its log, signalled, stopped with a grace period."""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

from statelab.errors import StackError
from statelab.local.lifeline import lifeline

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0


class Process(Protocol):
    """What the stack needs of a process: a ``subprocess.Popen``, or one adopted by its pid (``detached``)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...
LOG_TAIL_LINES = 20


@dataclass(eq=False)
class Child:
    """One process of the stack and everything needed to start it again the same way."""

    name: str
    role: Literal["primary", "replica", "sidecar"]
    cmd: list[str]
    log: Path
    env: dict[str, str] | None = None
    port: int = 0
    grpc_port: int = 0  # sidecars only
    internal_port: int = 0  # daprd only: its internal gRPC port
    proc: Process | None = None
    _log_file: IO[bytes] | None = None
    _log_start: int = 0  # where this run's lines begin in the (appended) log

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port, self.grpc_port, self.internal_port) if p]

    def spawn(self, cwd: Path, detach: bool) -> None:
        self.close_log()
        self._log_file = self.log.open("ab")
        self._log_start = self._log_file.tell()
        self._log_file.write(
            f"# statelab: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: {shlex.join(self.cmd)}\n".encode()
        )
        self._log_file.flush()

        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C in a terminal or a Jupyter "interrupt kernel" must not hit the stack.
            start_new_session=True,
        )
        if not detach:
            lifeline.watch(self.proc.pid)
        logger.info("started %s (pid %d), log %s", self.name, self.proc.pid, self.log)

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait until the process has exited (and is reaped); True if it did within the timeout."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return False
        lifeline.forget(self.proc.pid)  # gone: nothing for the watchdog to stop any more
        return True

    def close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def died_error(self, doing: str) -> StackError:
        code = self.proc.returncode if self.proc is not None else None
        return StackError(f"{self.name} exited with code {code} {doing}; last lines of {self.log}:\n{self.log_tail()}")


def stop_children(children: list[Child], sig: int = signal.SIGTERM) -> None:
    """Signal all, wait up to STOP_GRACE_SECONDS together, then SIGKILL what is left.

    The signal is repeated every half second: Redis ignores a SIGTERM that arrives while it writes its
    initial AOF ("Writing initial AOF, can't exit") and does not try again by itself.
    """
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while True:
        for child in children:
            child.signal(sig)
        alive = [child for child in children if not child.wait_exit(min(0.5, deadline - time.monotonic()))]
        if not alive or time.monotonic() >= deadline:
            break
    for child in alive:
        logger.warning("%s did not exit within %.0f s of SIGTERM; killing it", child.name, STOP_GRACE_SECONDS)
        child.signal(signal.SIGKILL)
        child.wait_exit(STOP_GRACE_SECONDS)
    for child in children:
        child.close_log()
