"""A long-lived Jupyter kernel doing what a learner does, round after round, leaks nothing.

The bugs this guards against showed only in a real kernel that stays up (and some only on Python 3.12+):
handlers that broke after the first strong save, client sockets left open, writer threads still running
after the stop button, descriptors piling up until select() refused them. So this test starts a real
ipykernel with jupyter_client (the native "python3" kernel runs this very interpreter, so each venv tests
its own Python), opens a session on a local Redis stack inside it, and repeats one round: a fresh sidecar
(every other round the whole stack stopped and started again under the same session), strong and eventual
saves read back through the sidecar and around it, a concurrent writers run stopped by a real SIGINT (the
interrupt button), a Redis replica stopped and started, the primary killed and restarted. From outside, through /proc, it counts the kernel's and the sidecar's descriptors and threads;
after one warm-up round (lazy pools exist by then) no round may end with more than the warm-up left.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from helpers import RELIABILITY, process_gone, soak_factor, wait_until
from jupyter_client import BlockingKernelClient, KernelManager

ROUNDS = 4 * soak_factor()  # after the warm-up round; about 3 s each
# pytest's 300 s default would cut a long soak (STATELAB_SOAK=1 means 80 rounds) short
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, 60 + 10 * ROUNDS))]

WRITERS = 8
INTERRUPT_DEADLINE = 3.0  # s from SIGINT to the cell's KeyboardInterrupt; run_threads gives threads 5 s at most
SETTLE = 5.0  # s for counts to come back down (a closed socket's peer notices EOF on its next loop turn)
CELL_TIMEOUT = 60.0

# What the learner's notebook holds, defined once in the kernel. Each helper returns nothing or prints one
# JSON line, which the test reads from the cell's stdout.
SETUP = """
import json, os, platform, threading
from statelab import open_session
from statelab.local.lifeline import lifeline
from statelab.writers import WritersConfig, run_writers

lab = open_session(store="redis", replicas=1, run_dir={run_dir!r})

def soak_saves(tag):
    key = "soak-" + tag
    lab.client.save("statestore", key, {{"tag": tag}}, consistency="strong")
    lab.client.save("statestore", key + "-e", {{"tag": tag}}, consistency="eventual")
    assert lab.client.get("statestore", key).value == {{"tag": tag}}
    assert lab.client.get("statestore", key + "-e").value == {{"tag": tag}}
    assert json.loads(lab.peek(key)["fields"]["data"]) == {{"tag": tag}}
    # a strong save returns once the replica has it: read the replica directly, around the sidecar
    assert lab.redis(1).exists(lab.stack.app_id + "||" + key) == 1

def soak_state():
    print(json.dumps({{
        "python": platform.python_version(),
        "pid": os.getpid(),
        "pids": lab.stack.pids,
        "watchdog": lifeline.watchdog_pid,
        "watched": len(lifeline._watched),
        "writers": [t.name for t in threading.enumerate() if t.name.startswith("writer-")],
    }}))
"""

RESTART_SIDECAR = "lab.stack.kill_sidecar(0); lab.stack.start_sidecar(0)"
RESTART_STACK = "lab.stack.stop(); lab.stack.start()"  # every process anew: Redis, its replica, the sidecar
WRITERS_RUN = (f"run_writers(lab.endpoints, WritersConfig(writers={WRITERS}, operations=1_000_000, "
               "consistency='strong'))")
RESTART_REDIS = "lab.stack.stop_replica(0); lab.stack.start_replica(0)\nlab.stack.restart_redis_primary()"


@dataclass(frozen=True)
class Counts:
    fds: int
    threads: int

    def __str__(self) -> str:
        return f"{self.fds} fds, {self.threads} threads"


def counts(pid: int) -> Counts:
    """Open descriptors and threads of a live process, from /proc."""
    return Counts(len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")))


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (zombies included: an unreaped child is a leak too)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def at_rest(pid: int, seconds: float = 0.5) -> Counts:
    """The process's counts at rest: the least seen over ``seconds``. A reference taken while something was
    briefly open (IPython's history thread holds a journal file while it writes) would let a leak of one pass."""
    samples = [counts(pid)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        samples.append(counts(pid))
    return Counts(min(c.fds for c in samples), min(c.threads for c in samples))


def settled(pid: int, limit: Counts) -> Counts:
    """The process's counts once they are within ``limit`` (or, after SETTLE seconds, whatever they are)."""
    wait_until(lambda: _within(counts(pid), limit), timeout=SETTLE)
    return counts(pid)


def _within(now: Counts, limit: Counts) -> bool:
    return now.fds <= limit.fds and now.threads <= limit.threads


class Kernel:
    """A BlockingKernelClient that runs cells and fails with the kernel's traceback when one raises."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km, self.kc = km, kc

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> str:
        reply, stdout = self.execute(code, timeout)
        if reply["status"] != "ok":
            pytest.fail(f"cell failed: {code!r}\n{reply.get('ename')}: {reply.get('evalue')}\n{stdout}")
        return stdout

    def state(self) -> dict:
        return json.loads(self.run("soak_state()").strip().splitlines()[-1])

    def run_interrupted(self, code: str, started: Callable[[], bool]) -> tuple[dict, float]:
        """Run ``code``, send SIGINT once ``started()`` holds; the reply and the seconds from SIGINT to it."""
        msg_id = self.kc.execute(code)
        if not wait_until(started, timeout=CELL_TIMEOUT):
            pytest.fail(f"{code!r} did not get going")
        time.sleep(0.3)  # let requests be in flight when the interrupt lands
        sent = time.monotonic()
        self.km.interrupt_kernel()
        reply = self._reply(msg_id, CELL_TIMEOUT)
        elapsed = time.monotonic() - sent
        self._drain(msg_id, CELL_TIMEOUT)
        return reply, elapsed

    def execute(self, code: str, timeout: float) -> tuple[dict, str]:
        """The execute reply's content and what the cell printed."""
        stdout: list[str] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                stdout.append(msg["content"]["text"])

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
        return reply["content"], "".join(stdout)

    def _reply(self, msg_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def _drain(self, msg_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"):
                return


@dataclass
class RoundEnd:
    kernel: Counts
    kernel_children: int
    pids: dict[str, int]  # the stack's processes at the end of the round
    sidecar_pid: int
    sidecar_fresh: Counts  # the new sidecar after its first saves
    sidecar_end: Counts  # the same sidecar after the interrupted writers and both Redis restarts
    interrupt_seconds: float
    watched: int


def one_round(kernel: Kernel, kernel_pid: int, n: int, reference: RoundEnd | None) -> RoundEnd:
    """One learner's round; ``reference`` (the warm-up's end) bounds the counts the round may end with. Odd
    rounds start on a whole new stack under the same session, even ones on a new sidecar."""
    kernel.run(RESTART_STACK if n % 2 else RESTART_SIDECAR)
    kernel.run(f"soak_saves('r{n}-a')")
    sidecar = kernel.state()["pids"]["sidecar-0"]
    sidecar_fresh = at_rest(sidecar)

    before = counts(kernel_pid)
    reply, elapsed = kernel.run_interrupted(
        WRITERS_RUN, started=lambda: counts(kernel_pid).threads >= before.threads + WRITERS)
    assert (reply["status"], reply.get("ename")) == ("error", "KeyboardInterrupt"), reply
    assert elapsed < INTERRUPT_DEADLINE, f"the interrupted writers cell took {elapsed:.1f} s to end"
    state = kernel.state()
    assert state["writers"] == [], f"writer threads still running after the interrupt: {state['writers']}"
    assert state["pids"]["sidecar-0"] == sidecar, "the interrupt reached the sidecar"

    kernel.run(RESTART_REDIS)
    kernel.run(f"soak_saves('r{n}-b')")  # the sidecar reconnects to the restarted primary and replica
    state = kernel.state()
    assert state["pids"]["sidecar-0"] == sidecar
    if reference is None:
        kernel_end, sidecar_end = at_rest(kernel_pid), at_rest(sidecar)
    else:
        kernel_end = settled(kernel_pid, reference.kernel)
        sidecar_end = settled(sidecar, Counts(min(sidecar_fresh.fds, reference.sidecar_end.fds),
                                              min(sidecar_fresh.threads, reference.sidecar_end.threads)))
    return RoundEnd(kernel_end, len(children(kernel_pid)), state["pids"], sidecar, sidecar_fresh, sidecar_end,
                    elapsed, state["watched"])


def test_a_long_lived_kernel_doing_the_lessons_leaks_no_fds_threads_or_processes(tmp_path: Path) -> None:
    started = time.monotonic()
    km = KernelManager(kernel_name="python3")
    # IPython's history database in a folder of our own, not the developer's ~/.ipython
    km.start_kernel(env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}, cwd=str(tmp_path))
    kc = km.client()
    kernel = Kernel(km, kc)
    seen_pids: set[int] = set()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=CELL_TIMEOUT)
        kernel.run(SETUP.format(run_dir=str(tmp_path / "stack")))
        state = kernel.state()
        kernel_pid = state["pid"]
        assert state["python"] == platform.python_version(), "the kernel runs another Python than this venv's"
        seen_pids |= {kernel_pid, state["watchdog"], *state["pids"].values()}

        warmup = one_round(kernel, kernel_pid, 0, None)
        base, base_children = warmup.kernel, warmup.kernel_children
        ends = []
        for n in range(1, ROUNDS + 1):
            end = one_round(kernel, kernel_pid, n, warmup)
            ends.append(end)
            seen_pids |= set(end.pids.values())
            assert end.kernel.fds <= base.fds, f"round {n}: kernel fds grew {base.fds} → {end.kernel.fds}"
            assert end.kernel.threads <= base.threads, (
                f"round {n}: kernel threads grew {base.threads} → {end.kernel.threads}")
            assert end.watched == warmup.watched, (
                f"round {n}: the watchdog looks after {end.watched} pids, {warmup.watched} after warm-up")
            assert end.kernel_children == base_children, (
                f"round {n}: the kernel has {end.kernel_children} child processes, {base_children} after warm-up")
            # The same sidecar process, before and after an interrupted run and two Redis restarts...
            assert _within(end.sidecar_end, end.sidecar_fresh), (
                f"round {n}: sidecar {end.sidecar_fresh} → {end.sidecar_end}")
            # ...and each round's fresh sidecar against the warm-up round's.
            assert _within(end.sidecar_end, warmup.sidecar_end), (
                f"round {n}: a fresh sidecar ends the round with {end.sidecar_end}, {warmup.sidecar_end} in warm-up")
        state = kernel.state()
        seen_pids.add(state["watchdog"])
        last = ends[-1]
        RELIABILITY.append(
            f"kernel soak (Python {state['python']}): {ROUNDS} rounds in {time.monotonic() - started:.0f} s, "
            f"kernel fds {base.fds}→{last.kernel.fds} (max {max(e.kernel.fds for e in ends)}), "
            f"threads {base.threads}→{last.kernel.threads} (max {max(e.kernel.threads for e in ends)}), "
            f"sidecar fds {warmup.sidecar_end.fds}→{last.sidecar_end.fds} "
            f"(max {max(e.sidecar_end.fds for e in ends)}), "
            f"sidecar threads {warmup.sidecar_end.threads}→{last.sidecar_end.threads}, "
            f"interrupt→KeyboardInterrupt max {max(e.interrupt_seconds for e in ends):.2f} s, "
            f"lifeline watching {warmup.watched}→{last.watched} pids"
        )
    finally:
        try:
            if km.is_alive():  # after a failed set-up there is no lab: the watchdog stops what was started
                kernel.execute("if 'lab' in globals(): lab.close()", timeout=30)
        finally:  # the check below says if anything outlived the kernel
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    left = [pid for pid in seen_pids if pid and not wait_until(partial(process_gone, pid), timeout=10)]
    assert left == [], f"processes left after the kernel shut down: {left}"
