"""``Stack``: a store (Redis with replicas, SQLite or in-memory) and K sidecars for one app id, as processes."""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml

from statelab.errors import StackError
from statelab.local.paths import REPO, components_source, find_daprd, find_redis_server, state_dir
from statelab.local.probes import (
    HOST,
    accepts,
    free_ports,
    healthz,
    port_is_free,
    redis_ready,
    replica_linked,
    wait_for,
)
from statelab.local.processes import STOP_GRACE_SECONDS, Child, stop_children
from statelab.local.records import forget_status, pid_alive, proc_start_time, write_json, write_status

logger = logging.getLogger(__name__)

Store = Literal["redis", "sqlite", "in-memory"]
STORES: tuple[str, ...] = ("redis", "sqlite", "in-memory")
Runtime = Literal["statelab", "daprd"]
RUNTIMES: tuple[str, ...] = ("statelab", "daprd")
GRPC_PORT_OFFSET = 50  # default gRPC port of sidecar i: http_port + GRPC_PORT_OFFSET + i (3550 for 3500)
# daprd also listens on an internal gRPC port (service invocation between sidecars): 3600 + i for 3500.
KEEP_RUN_DIRS = 20  # default run folders kept under the state dir; older ones are pruned at start

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

    The sidecars load ``components/<store>/`` pointed at this stack's store, or ``resources_path``: a folder of
    Dapr resources of your own (Component files, a Resiliency for daprd) given the same treatment. With
    ``start_store=False`` the stack starts no store at all and the sidecars load ``resources_path`` exactly as
    written, so its components say where the store is (what ``dapr run --resources-path`` does).
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
    resources_path: Path | None = None  # Dapr resources to load instead of components/<store>/ (see the docstring)
    start_store: bool = True  # False: no store process; the sidecars load resources_path as written
    daprd: str | None = None  # runtime="daprd": the binary to run; None: find_daprd() (which may build one)

    _redis: list[Child] = field(default_factory=list, init=False, repr=False)
    _sidecars: list[Child] = field(default_factory=list, init=False, repr=False)
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
        if self.resources_path is not None:
            self.resources_path = Path(self.resources_path)
            if not self.resources_path.is_dir():
                raise ValueError(f"resources_path {self.resources_path} is not a folder")
        elif not self.start_store:
            raise ValueError("start_store=False needs a resources_path whose components say where the store is")
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
        """Number of Redis replicas actually started (0 unless the stack starts a Redis store)."""
        return self.replicas if self._own_redis else 0

    @property
    def _own_redis(self) -> bool:
        return self.store == "redis" and self.start_store

    @property
    def ports(self) -> list[int]:
        """Every port the stack binds: sidecars first (HTTP, then gRPC), then the Redis primary and replicas."""
        ports = [self.http_port + i for i in range(self.sidecars)]
        ports += [self._grpc_base + i for i in range(self.sidecars)]
        if self.runtime == "daprd":
            ports += [self._internal_base + i for i in range(self.sidecars)]
        if self._own_redis:
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
        if not self.start_store:
            raise StackError(f"this stack started no Redis: its sidecars use the store that {self.resources_path} names")
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

    def app_env(self) -> dict[str, str]:
        """The environment ``dapr run`` gives the app it starts beside the first sidecar.

        dapr/cli sets ``APP_ID``, ``APP_PROTOCOL`` (``http`` unless told otherwise), ``DAPR_HTTP_PORT`` and
        ``DAPR_GRPC_PORT`` (and ``APP_PORT`` / ``DAPR_METRICS_PORT`` when there are such ports; here there are
        none). ``env()`` adds the endpoints, which dapr run leaves out: the SDKs prefer them to the ports, so a
        value left in the shell by ``statelab up``'s export line would otherwise send the app elsewhere.
        """
        return {"APP_ID": self.app_id, "APP_PROTOCOL": "http", **self.env()}

    def store_component(self, name: str = "statestore", **metadata: str) -> dict[str, Any]:
        """The Component of this stack's store profile (``components/<store>/statestore.yaml``) as a dict, named
        ``name``, pointed at this stack's Redis or SQLite file, with ``metadata`` set (``keyPrefix="name"``…): for a
        resources folder of your own, e.g. a second sidecar on the same store (``start_store=False``)."""
        if not self.start_store:
            raise StackError(f"this stack started no store: its components are in {self.resources_path}")
        if self.run_dir is None:
            raise StackError("this stack has not been started: there is no store to point at yet")
        path = components_source() / self.store / "statestore.yaml"
        doc: dict[str, Any] = self._rewrite(next(d for d in yaml.safe_load_all(path.read_text()) if d))
        doc["metadata"]["name"] = name
        items = doc["spec"].setdefault("metadata", [])
        for key, value in metadata.items():
            found = [item for item in items if item.get("name") == key]
            if found:
                found[0]["value"] = value
            else:
                items.append({"name": key, "value": value})
        return doc

    def describe(self) -> str:
        """One line saying what runs where."""
        noun = f"{self.runtime} sidecar{'' if self.sidecars == 1 else 's'}"  # "statelab sidecar", "daprd sidecars"
        store: str = self.store
        if not self.start_store:
            store = f"the store its components name ({self.resources_path})"
        elif self.store == "redis":
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
            if self._own_redis:
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
        stop_children(self._sidecars + self._redis[1:] + self._redis[:1])
        if self._redis or self._sidecars:
            logger.info("stopped local stack in %s", self.run_dir)
        self._redis.clear()
        self._sidecars.clear()
        _running.discard(self)
        if self._recorded and self.run_dir is not None:
            forget_status(self.run_dir)

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
        stop_children([self._replica(j)])

    def start_replica(self, j: int) -> None:
        """Start Redis replica j again and wait until its link to the primary is up."""
        self._restart(self._replica(j))

    def restart_redis_primary(self, sig: int = signal.SIGKILL) -> None:
        """Kill the Redis primary with ``sig`` and start it on the same port and data folder.

        Waits until it answers PING (after replaying its AOF, if any) and every running replica is linked
        again. Without ``appendonly`` the primary comes back empty, and so do its replicas after resyncing.
        """
        self.stop_redis_primary(sig)
        self.start_redis_primary()

    def stop_redis_primary(self, sig: int = signal.SIGKILL) -> None:
        """Stop the Redis primary with ``sig`` (SIGKILL after a grace period) and wait until it has exited: the
        sidecars' connections to it are refused until ``start_redis_primary()``."""
        if self.store != "redis" or not self._redis:
            raise StackError("this stack has no Redis primary")
        primary = self._redis[0]
        primary.signal(sig)
        if not primary.wait_exit(STOP_GRACE_SECONDS):
            primary.signal(signal.SIGKILL)
            primary.wait_exit(STOP_GRACE_SECONDS)

    def start_redis_primary(self) -> None:
        """Start the stopped Redis primary on the same port and data folder; return once it answers PING (after
        replaying its AOF, if any) and every running replica is linked again."""
        if self.store != "redis" or not self._redis:
            raise StackError("this stack has no Redis primary")
        self._restart(self._redis[0])
        for replica in self._redis[1:]:
            if replica.running:
                self._wait_ready(replica)

    # --- internals ---

    def _process_records(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "pid": c.proc.pid, "port": c.port, **({"grpc_port": c.grpc_port} if c.grpc_port else {}),
             **({"internal_grpc_port": c.internal_port} if c.internal_port else {}),
             "start_time": proc_start_time(c.proc.pid)}
            for c in self._redis + self._sidecars
            if c.proc is not None
        ]

    def _save_records(self) -> None:
        """Note the current pids in the run folder (and the status file for up()), so others can tell if it is live."""
        assert self.run_dir is not None
        write_json(self.run_dir / "processes.json", self._process_records())
        if self._recorded:
            write_status(self)

    def _replica(self, j: int) -> Child:
        if not 0 <= j < self.redis_replicas or len(self._redis) <= 1 + j:
            raise IndexError(f"replica {j} does not exist (this stack has {self.redis_replicas})")
        return self._redis[1 + j]

    def _wait_ready(self, child: Child) -> None:
        """Wait until a primary answers PING, a replica follows the primary, a sidecar is healthy."""
        if child.role == "primary":
            wait_for(child, partial(redis_ready, child.port, self.redis_password), "ready", self.start_timeout)
        elif child.role == "replica":
            wait_for(
                child,
                partial(replica_linked, child.port, self.redis_port, self.redis_password),
                "linked to the primary",
                self.start_timeout,
            )
        else:  # the sidecar answers healthz only once both its servers listen; checking gRPC too costs nothing
            wait_for(
                child, lambda: healthz(child.port) and accepts(child.grpc_port), "healthy", self.start_timeout
            )

    def _restart(self, child: Child) -> None:
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
        if self._own_redis:
            names[self.redis_port] = "Redis primary"
            names.update({self.redis_port + 1 + j: f"Redis replica {j}" for j in range(self.redis_replicas)})
        return names

    def _redis_child(self, index: int) -> Child:
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
        return Child(
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
        """Copy components/<store>/ (or resources_path) into the run folder, pointing its state stores at this
        stack's Redis or SQLite file. Without a store of its own the sidecars load resources_path itself."""
        assert self.run_dir is not None
        if not self.start_store:
            assert self.resources_path is not None  # __post_init__ requires it
            return self.resources_path.resolve()
        source = self.resources_path or components_source() / self.store
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
        package_root = str(REPO)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # so a crash's last words reach the log
        env.pop("DAPR_API_TOKEN", None)  # the stack's api_token decides, not whatever the caller had set
        if self.api_token:
            env["DAPR_API_TOKEN"] = self.api_token
        # daprd finds "its" address by opening a UDP socket towards a LAN address; on loopback it needs none.
        env["DAPR_HOST_IP"] = HOST
        return env

    def _sidecar_child(self, i: int, env: dict[str, str]) -> Child:
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
        return Child(
            name=f"sidecar-{i}", role="sidecar", cmd=cmd, log=self.run_dir / f"sidecar-{i}.log", env=env,
            port=port, grpc_port=grpc_port, internal_port=self._internal_base + i if self.runtime == "daprd" else 0,
        )

    @property
    def _daprd(self) -> str:
        if self._daprd_path is None:
            self._daprd_path = self.daprd or find_daprd()
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


def on_free_ports(stack: Stack, *, step: int = 10, randomly: bool = False) -> Stack:
    """``stack`` (not started) moved by the first multiple of ``step`` at which every port it binds is free;
    its HTTP, gRPC, internal gRPC and Redis blocks keep their distances."""

    def moved(base: int) -> Stack:
        shift = base - stack.http_port
        return replace(stack, http_port=stack.http_port + shift, grpc_port=stack._grpc_base + shift,
                       internal_grpc_port=stack._internal_base + shift, redis_port=stack.redis_port + shift)

    return moved(free_ports(lambda base: moved(base).ports, first=stack.http_port, step=step, randomly=randomly))


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
    return any(pid_alive(r["pid"], r.get("start_time")) for r in records)
