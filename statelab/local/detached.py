"""The CLI's detached stack: ``statelab up`` starts it, ``status`` / ``down`` find it by its record, and
``attach()`` gives a notebook the same stack as a ``Stack``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from statelab.errors import StackError
from statelab.local.paths import status_path
from statelab.local.probes import healthz
from statelab.local.processes import STOP_GRACE_SECONDS
from statelab.local.records import pid_alive, read_status
from statelab.local.stack import Stack

logger = logging.getLogger(__name__)


def up(**kwargs: Any) -> Stack:
    """Start a detached stack (it outlives this process) and record it in status_path().

    Takes the same keyword arguments as Stack. Refuses if a recorded stack still has live processes.
    """
    current = status()
    if current is not None and any(p["alive"] for p in current["processes"]):
        raise StackError(f"a local stack is already running ({current['describe']}); run `statelab down` first")
    stack = Stack(**{**kwargs, "detach": True})
    stack._recorded = True
    return stack.start()


def status() -> dict[str, Any] | None:
    """The recorded stack, or None.

    Adds ``alive`` per process, ``healthy`` per sidecar endpoint, ``running`` (all alive and healthy) and a
    one-line ``summary``.
    """
    record = read_status()
    if record is None:
        return None
    problems = []
    for proc in record["processes"]:
        proc["alive"] = pid_alive(proc["pid"], proc.get("start_time"))
        if not proc["alive"]:
            problems.append(f"{proc['name']} has exited")
    sidecars = [p for p in record["processes"] if p["name"].startswith("sidecar-")]
    record["healthy"] = [healthz(p["port"]) for p in sidecars]
    problems += [
        f"{p['name']} is not healthy"
        for p, ok in zip(sidecars, record["healthy"], strict=True)
        if p["alive"] and not ok
    ]
    record["running"] = not problems
    record.setdefault("runtime", "statelab")
    record["summary"] = (
        f"running: {record['describe']}"
        if not problems
        else f"not running properly ({', '.join(problems)}): {record['describe']}"
    )
    return record


def down() -> bool:
    """Stop the recorded stack and forget it. False if none was recorded."""
    record = status()
    if record is None:
        return False
    live = [p for p in record["processes"] if p["alive"]]
    # As in stop_children: SIGTERM repeated (Redis may ignore one), then SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while live and time.monotonic() < deadline:
            for proc in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc["pid"], sig)
            until = min(deadline, time.monotonic() + 0.5)
            while live and time.monotonic() < until:
                time.sleep(0.05)
                live = [p for p in live if pid_alive(p["pid"], p.get("start_time"))]
    if live:
        raise StackError(f"could not stop pids {', '.join(str(p['pid']) for p in live)} of the local stack")
    status_path().unlink(missing_ok=True)
    logger.info("stopped the local stack in %s", record["run_dir"])
    return True


class _Adopted:
    """A process that another Python started (``statelab up``), handled through its pid like a Popen."""

    def __init__(self, pid: int, start_time: int | None) -> None:
        self.pid = pid
        self._start_time = start_time
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not pid_alive(self.pid, self._start_time):
            self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.02)
        return self.returncode or 0


def attach() -> Stack | None:
    """The stack that ``statelab up`` (or ``./scripts/lab``) recorded, if all its processes live, as a Stack.

    The Stack can do everything a started one can (replicas down and up, sidecars killed and restarted);
    processes it starts again are detached like the originals. The API token is not on disk, so a
    sidecar restarted from here runs without one.
    """
    record = read_status()
    if record is None or not record.get("processes"):
        return None
    procs = {p["name"]: p for p in record["processes"]}
    if not all(pid_alive(p["pid"], p.get("start_time")) for p in procs.values()):
        return None
    sidecar0, redis0 = procs.get("sidecar-0"), procs.get("redis-0")
    run_dir = Path(record["run_dir"])
    stack = Stack(
        store=record["store"],
        replicas=int(record.get("replicas", 0)),
        sidecars=int(record.get("sidecars", 0)),
        app_id=record.get("app_id", "myapp"),
        http_port=sidecar0["port"] if sidecar0 else 3500,
        redis_port=redis0["port"] if redis0 else 6380,
        grpc_port=sidecar0.get("grpc_port") if sidecar0 else None,
        internal_grpc_port=sidecar0.get("internal_grpc_port") if sidecar0 else None,
        runtime=record.get("runtime", "statelab"),
        run_dir=run_dir,
        appendonly=bool(record.get("appendonly", False)),
        redis_password=_recorded_redis_password(run_dir, record["store"]),
        detach=True,
    )
    stack._recorded = True
    stack._components_dir = run_dir / "components" / stack.store
    if stack.store == "redis":
        stack._redis = [stack._redis_child(i) for i in range(1 + stack.redis_replicas)]
    env = stack._sidecar_env()
    stack._sidecars = [stack._sidecar_child(i, env) for i in range(stack.sidecars)]
    for child in stack._redis + stack._sidecars:
        found = procs.get(child.name)
        if found is None:
            return None
        child.proc = _Adopted(found["pid"], found.get("start_time"))
    return stack


def _recorded_redis_password(run_dir: Path, store: str) -> str | None:
    if store != "redis":
        return None
    for path in sorted((run_dir / "components" / "redis").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for item in ((doc or {}).get("spec") or {}).get("metadata") or []:
                if item.get("name") == "redisPassword" and item.get("value"):
                    return str(item["value"])
    return None
