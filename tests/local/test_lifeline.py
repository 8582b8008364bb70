"""The watchdog stops an owner's children when the owner goes away, and only those children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import process_gone, wait_until

from statelab.local import lifeline
from statelab.local import paths as local_paths

OWNER = textwrap.dedent("""
    import subprocess, sys, threading
    from statelab.local.lifeline import lifeline
    children = []
    def start():
        # sleep ignores nothing; the second child ignores SIGTERM, so only SIGKILL ends it
        children.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        children.append(subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('armed', flush=True); time.sleep(300)"],
            stdout=subprocess.PIPE, text=True, start_new_session=True))
        for child in children:
            lifeline.watch(child.pid)
    t = threading.Thread(target=start)
    t.start(); t.join()
    children[1].stdout.readline()
    forgotten = subprocess.Popen(["sleep", "300"], start_new_session=True)
    lifeline.watch(forgotten.pid)
    lifeline.forget(forgotten.pid)
    print(*(c.pid for c in children), forgotten.pid, lifeline.watchdog_pid, flush=True)
    sys.stdin.read()
""")


def _owner() -> tuple[subprocess.Popen[str], list[int]]:
    env = {**os.environ, "PYTHONPATH": str(local_paths.REPO)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    assert owner.stdout is not None
    return owner, [int(p) for p in owner.stdout.readline().split()]


def test_children_are_stopped_when_the_owner_is_sigkilled_and_a_stubborn_one_is_killed() -> None:
    owner, (child, stubborn, forgotten, watchdog) = _owner()
    try:
        assert not process_gone(child) and not process_gone(stubborn)
        owner.kill()
        owner.wait()
        assert wait_until(lambda: process_gone(child), timeout=3)
        # SIGTERM is ignored: the watchdog's grace period ends in SIGKILL.
        assert wait_until(lambda: process_gone(stubborn), timeout=lifeline.GRACE_SECONDS + 3)
        assert wait_until(lambda: process_gone(watchdog), timeout=3)
        assert not process_gone(forgotten)  # forgotten: not the watchdog's business any more
    finally:
        for pid in (child, stubborn, forgotten):
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_watchdog_killed_by_hand_is_replaced_and_told_every_child(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    guard = lifeline.Lifeline()
    try:
        guard.watch(sleeper.pid)
        first = guard.watchdog_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: guard.watchdog_pid is None, timeout=3)
        other = subprocess.Popen(["sleep", "300"], start_new_session=True)
        guard.watch(other.pid)  # the write fails, a new watchdog starts and is told about both
        second = guard.watchdog_pid
        assert second is not None and second != first
        guard._close()  # as if this process had died: the new watchdog stops both
        assert wait_until(lambda: sleeper.poll() is not None and other.poll() is not None, timeout=5)
    finally:
        for proc in (sleeper, other) if "other" in locals() else (sleeper,):
            if proc.poll() is None:
                proc.kill()
