"""Shared fixtures: real sidecar processes on each store, on random free ports.

``api`` is parametrised over the three stores, so every test that takes it runs three times against
a real sidecar: in-memory, a SQLite file, and Redis with one replica. The stacks are started once per
session; tests keep apart by using fresh keys (``api.key()``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from statelab import local
from statelab.client import StateClient
from statelab.local import Stack

STORES = ("in-memory", "sqlite", "redis")
STORE_NAME = "statestore"
APP_ID = "myapp"
# A test module that sets RUNTIMES = BOTH_RUNTIMES runs every `api` test against statelab's sidecar and a real
# daprd: the same assertions, so any difference between the two fails a test (daprd is the judge).
BOTH_RUNTIMES = ("statelab", "daprd")


def targets(*stores: str, runtimes: tuple[str, ...] = ("statelab",)) -> list[str]:
    """``api`` parameters: the store's name for statelab's sidecar, ``daprd-<store>`` for a real daprd."""
    return [store if runtime == "statelab" else f"{runtime}-{store}" for runtime in runtimes for store in stores or STORES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test that takes ``api`` one run per store (and per runtime where its module asks for both),
    unless the test chooses its targets itself with ``@pytest.mark.parametrize("api", targets(...), indirect=True)``."""
    if "api" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "api" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    metafunc.parametrize("api", targets(runtimes=getattr(metafunc.module, "RUNTIMES", ("statelab",))), indirect=True)


def daprd_binary() -> str:
    """A daprd to test against: built by scripts/daprd when Go is here, else one found by ``--no-build``.

    Without either the daprd tests skip with one line saying why; with ``STATELAB_DAPRD_REQUIRED=1`` (CI)
    they fail instead.
    """
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "daprd"
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


# Figures the reliability tests measure, printed after the run: fuzz requests sent per store, fault histories.
FUZZ_REQUESTS: Counter[str] = Counter()
RELIABILITY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_REQUESTS or RELIABILITY:
        terminalreporter.section("reliability figures")
        if FUZZ_REQUESTS:
            per_store = ", ".join(f"{store} {n}" for store, n in sorted(FUZZ_REQUESTS.items()))
            terminalreporter.write_line(f"fuzz requests per store: {per_store}")
        for line in RELIABILITY:
            terminalreporter.write_line(line)


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


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment() -> Iterator[None]:
    """Tests start their own sidecars: a developer's DAPR_* variables (e.g. from ./scripts/lab) must not leak in."""
    import os

    names = ("DAPR_HTTP_ENDPOINT", "DAPR_HTTP_PORT", "DAPR_GRPC_ENDPOINT", "DAPR_GRPC_PORT", "DAPR_API_TOKEN")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    started: dict[str, Stack] = {}
    try:
        for store in STORES:
            stack = make_stack(tmp_path_factory.mktemp(f"stack-{store}"), store=store, replicas=1, app_id=APP_ID)
            started[store] = stack.start()
        yield started
    finally:
        for stack in started.values():
            stack.stop()


@pytest.fixture(scope="session")
def daprd_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    """The same three stacks as ``stacks``, with real daprd sidecars (started on first use)."""
    binary = daprd_binary()
    started: dict[str, Stack] = {}
    previous = os.environ.get("STATELAB_DAPRD")
    os.environ["STATELAB_DAPRD"] = binary
    try:
        for store in STORES:
            stack = make_stack(tmp_path_factory.mktemp(f"daprd-{store}"), store=store, replicas=1, app_id=APP_ID,
                               runtime="daprd")
            started[store] = stack.start()
        yield started
    finally:
        for stack in started.values():
            stack.stop()
        if previous is None:
            os.environ.pop("STATELAB_DAPRD", None)
        else:
            os.environ["STATELAB_DAPRD"] = previous


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Target]:
    """One running sidecar on one store: ``redis`` is statelab's, ``daprd-redis`` a real daprd (see ``targets``)."""
    runtime, _, store = request.param.partition("-") if request.param.startswith("daprd-") else ("", "", request.param)
    stack = request.getfixturevalue("daprd_stacks" if runtime else "stacks")[store]
    with requests.Session() as http:
        yield Target(store, stack, stack.endpoint, http, runtime or "statelab")
