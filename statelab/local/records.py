"""What a stack writes down about its processes, so another Python can tell whether they still run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statelab.local.lifeline import alive, start_time
from statelab.local.paths import status_path

if TYPE_CHECKING:
    from statelab.local.stack import Stack

logger = logging.getLogger(__name__)


def proc_start_time(pid: int) -> int | None:
    """Start time of a live, non-zombie process (Linux /proc), to tell it from a later one with the same pid."""
    started = start_time(pid)
    return None if started == "-" else int(started)


def pid_alive(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` is still the process that was recorded (same start time, where /proc tells it)."""
    if start_time is None and Path("/proc").is_dir():
        return False  # recorded without a start time: nothing proves it is the same process
    return alive(pid, "-" if start_time is None else str(start_time))


def read_status() -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(status_path().read_text())
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable status file %s: %s", status_path(), exc)
        return None


def write_status(stack: Stack) -> None:
    record = {
        "run_dir": str(stack.run_dir),
        "store": stack.store,
        "runtime": stack.runtime,
        "app_id": stack.app_id,
        "sidecars": stack.sidecars,
        "replicas": stack.redis_replicas,
        "appendonly": stack.appendonly,
        "api_token_set": bool(stack.api_token),  # the token itself is not written to disk
        "endpoints": stack.endpoints,
        "grpc_endpoints": stack.grpc_endpoints,
        "redis_urls": (
            [stack.redis_url(i, password=False) for i in range(1 + stack.redis_replicas)] if stack.store == "redis" else []
        ),
        "describe": stack.describe(),
        "started_at": time.time(),
        "processes": stack._process_records(),
    }
    write_json(status_path(), record)


def write_json(path: Path, data: object) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def forget_status(run_dir: Path) -> None:
    recorded = read_status()
    if recorded is not None and recorded.get("run_dir") == str(run_dir):
        status_path().unlink(missing_ok=True)
