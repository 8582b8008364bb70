"""What the tests share besides fixtures: names, stacks on free ports, polling, the ``api`` target, lab answers.

Every test folder imports these as ``from helpers import ...`` (``pythonpath = ["tests"]`` in pyproject.toml);
``conftest.py`` holds only the fixtures and pytest hooks, built on the same names.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from statelab import local
from statelab.client import State, StateClient
from statelab.local import Stack

ROOT = Path(__file__).resolve().parents[1]  # the repository: notebooks/, labs/, docs/, scripts/ …

STORES = ("in-memory", "sqlite", "redis")
STORE_NAME = "statestore"
APP_ID = "myapp"
# A test module that sets RUNTIMES = BOTH_RUNTIMES runs every `api` test against statelab's sidecar and a real
# daprd: the same assertions, so any difference between the two fails a test (daprd is the judge).
BOTH_RUNTIMES = ("statelab", "daprd")


def targets(*stores: str, runtimes: tuple[str, ...] = ("statelab",)) -> list[str]:
    """``api`` parameters: the store's name for statelab's sidecar, ``daprd-<store>`` for a real daprd."""
    return [store if runtime == "statelab" else f"{runtime}-{store}" for runtime in runtimes for store in stores or STORES]


def daprd_binary() -> str:
    """A daprd to test against: built by scripts/daprd when Go is here, else one found by ``--no-build``.

    Without either the daprd tests skip with one line saying why; with ``STATELAB_DAPRD_REQUIRED=1`` (CI)
    they fail instead.
    """
    import shutil
    import subprocess

    script = ROOT / "scripts" / "daprd"
    have_go = shutil.which("go") is not None or Path("/usr/local/go/bin/go").is_file()
    done = subprocess.run([str(script)] if have_go else [str(script), "--no-build"], capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1]
    why = (done.stderr.strip().splitlines() or ["scripts/daprd failed"])[-1]
    if os.environ.get("STATELAB_DAPRD_REQUIRED"):
        pytest.fail(f"a real daprd is required here (STATELAB_DAPRD_REQUIRED) and none is available: {why}")
    pytest.skip(f"no real daprd to compare with ({why}); install Go and run ./scripts/daprd")


def soak_factor() -> int:
    """How much longer the fuzz and fault runs go: 1 by default (bounded, CI), more with ``STATELAB_SOAK``.

    ``STATELAB_SOAK=1`` (or ``yes``/``true``) runs 20 times as many cases; ``STATELAB_SOAK=N`` (N > 1) N times.
    """
    raw = os.environ.get("STATELAB_SOAK", "").strip().lower()
    if raw in ("", "0", "no", "false"):
        return 1
    if raw.isdigit() and int(raw) > 1:
        return int(raw)
    return 20


# Figures the reliability tests measure, printed after the run (conftest's pytest_terminal_summary): fuzz
# requests sent per store, fault histories.
FUZZ_REQUESTS: Counter[str] = Counter()
RELIABILITY: list[str] = []


def free_port_base(count: int) -> int:
    """First of ``count`` consecutive free ports, at random below Linux's ephemeral range."""
    return local.free_port_block(count)


def make_stack(run_dir: Path | None, **kwargs: object) -> Stack:
    """A Stack on fresh random ports in run_dir (not started): up to 4 sidecars (HTTP, gRPC and, for daprd,
    internal gRPC) and 4 Redis servers, in one block of 16 ports so none can overlap."""
    layout: dict[str, object] = {"http_port": 20000, "grpc_port": 20008, "redis_port": 20004,
                                 "internal_grpc_port": 20012, "run_dir": run_dir}
    return local.on_free_ports(Stack(**{**layout, **kwargs}), step=16, randomly=True)  # type: ignore[arg-type]


def process_gone(pid: int) -> bool:
    """True if no process with this pid is running (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition()`` for up to ``timeout`` seconds; True as soon as it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@dataclass
class Target:
    """One running sidecar on one store, with raw HTTP access and (for Redis) direct store access."""

    store: str
    stack: Stack
    url: str
    http: requests.Session
    runtime: str = "statelab"

    def key(self, hint: str = "k") -> str:
        return f"{hint}-{uuid.uuid4().hex[:10]}"

    def state_url(self, key: str | None = None, store: str = STORE_NAME) -> str:
        base = f"{self.url}/v1.0/state/{store}"
        return base if key is None else f"{base}/{key}"

    def client(self, **kwargs: object) -> StateClient:
        return StateClient(self.url, **kwargs)  # type: ignore[arg-type]

    def redis(self, index: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url(index))

    def save(self, *items: dict, **kwargs: object) -> requests.Response:
        return self.http.post(self.state_url(), json=list(items), **kwargs)  # type: ignore[arg-type]

    def get(self, key: str, **kwargs: object) -> requests.Response:
        return self.http.get(self.state_url(key), **kwargs)  # type: ignore[arg-type]

    def delete(self, key: str, **kwargs: object) -> requests.Response:
        return self.http.delete(self.state_url(key), **kwargs)  # type: ignore[arg-type]


# --- the labs: their solutions, and one right answer, for tests/labs and the tests that reuse them ------------

LAB_SOLUTIONS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))


def check_lab_solution(path: Path, m: dict) -> None:
    """A solution's recorded checks: every one of its lab's, in order, all passed (on statelab's sidecar in
    tests/labs/test_labs.py, on daprd in tests/lessons/test_notebooks_on_daprd.py)."""
    from statelab import lab as labmod

    assert [c["check"] for c in m["checks"]] == list(labmod.LABS[path.stem])
    assert [c["message"] for c in m["checks"] if not c["passed"]] == []
    assert m["checks_passed"] is True and m["first_failed_check"] is None
    assert all(m[f"check_{name}"] is True for name in labmod.LABS[path.stem])


def good_attempt(client: StateClient, store: str, key: str) -> None:
    """Lab 02's right answer: one read-modify-write of a counter, guarded by the ETag read."""
    state = client.get(store, key) or State(key, 0, None)
    client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
