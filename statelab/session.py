"""What a notebook's setup cell calls: connect to a Dapr sidecar, or start the local stack.

``open_session(endpoint, store=..., replicas=..., sidecars=...)`` uses the ``endpoint`` argument if given;
else ``DAPR_HTTP_ENDPOINT`` or ``DAPR_HTTP_PORT`` (a real ``dapr run`` sidecar, or the stack that
``./scripts/lab`` started, unless that stack runs another store or topology than the notebook asks for); else
it starts a local stack of its own on the first free ports from 3500 up, which stops when the kernel exits.
The session's one-line description says which, and what a sidecar it did not start cannot honour. Either
way the lesson talks to the sidecar over the Dapr HTTP API only, so it runs the same against real Dapr.

The local stack's sidecars are statelab's unless ``runtime="daprd"`` (or ``STATELAB_RUNTIME=daprd`` in the
environment, which is how ``./scripts/run-notebooks --runtime daprd`` reaches every kernel without a notebook
knowing): then they are real daprd processes on the same stores and ports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from statelab.client import StateClient, default_endpoint
from statelab.errors import SidecarUnavailable, StackError

if TYPE_CHECKING:
    import redis

    from statelab.local import Stack

log = logging.getLogger(__name__)

STORE_NAME = "statestore"  # the component name `dapr init` uses, and every profile in components/
RUNTIME_ENV = "STATELAB_RUNTIME"  # "statelab" (default) or "daprd": whose sidecars a local stack starts
RUNTIMES = ("statelab", "daprd")  # statelab.local.RUNTIMES, named here so real-Dapr mode never imports it


@dataclass
class Session:
    """A connected sidecar. ``stack`` is the local stack when this session started one, else None."""

    endpoint: str
    store_name: str = STORE_NAME
    stack: Stack | None = None  # imported for type checking only, so real-Dapr mode never loads statelab.local
    owns_stack: bool = True  # False for the stack of `statelab up` / ./scripts/lab: closing leaves it running
    grpc_endpoint: str | None = None  # the sidecar's gRPC address (for the Dapr SDKs), when known
    notes: list[str] = field(default_factory=list)  # why this sidecar, and what it cannot do that was asked
    client: StateClient = field(init=False)
    _redis_clients: dict[int, Any] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.client = StateClient(self.endpoint)

    def redis(self, index: int = 0) -> redis.Redis:
        """A redis-py client for the local stack's primary (0) or replica ``index``, opened once and kept
        until ``close()`` (lessons read around the sidecar many times; one pool each, not one per call)."""
        if self.stack is None or self.stack.store != "redis":
            raise StackError("only a session on a local Redis stack can open its Redis servers")
        if index not in self._redis_clients:
            import redis

            self._redis_clients[index] = redis.Redis.from_url(self.stack.redis_url(index), socket_timeout=5)
        client: redis.Redis = self._redis_clients[index]
        return client

    def local_stack(self) -> Stack:
        """The local stack this session runs on; a clear error on a remote sidecar (nothing here to start or stop)."""
        if self.stack is None:
            raise StackError(f"this session talks to a sidecar at {self.endpoint} that statelab did not start: "
                             "there is no local stack to inspect or control")
        return self.stack

    @property
    def endpoints(self) -> list[str]:
        """Every sidecar (app instance) of this session: the local stack's, or the one endpoint."""
        if self.stack is not None:
            return list(self.stack.endpoints)
        return [self.endpoint]

    @property
    def local(self) -> bool:
        """True when the sidecar is one this session started (so Redis and its replicas are reachable)."""
        return self.stack is not None

    @property
    def runtime(self) -> str:
        """Whose sidecars a local stack started for this session runs ("statelab" or "daprd"): its own stack's,
        else ``$STATELAB_RUNTIME``'s, else statelab's. Lessons that start extra stacks (lesson 03's store matrix,
        lab 04's second store) use it, so every sidecar of a run is the same kind."""
        if self.stack is not None:
            return self.stack.runtime
        return os.environ.get(RUNTIME_ENV) or "statelab"

    @property
    def store_type(self) -> str:
        """The component type of ``store_name`` as the sidecar reports it (``state.redis``, ...)."""
        for comp in self.client.metadata().get("components", []):
            if comp.get("name") == self.store_name:
                return str(comp.get("type", ""))
        return ""

    def describe(self) -> str:
        if self.stack is not None:
            verb = "Started" if self.owns_stack else "Connected to the"
            line = f"{verb} " + self.stack.describe()
        else:
            meta = self.client.metadata()
            runtime = meta.get("runtimeVersion", "?")
            kind = "the statelab sidecar" if str(runtime).startswith("statelab") else f"Dapr {runtime}"
            line = (f"Connected to {kind} at {self.endpoint} (app id {meta.get('id', '?')}, "
                    f"store type {self.store_type})")
        return "\n".join([line, *self.notes])

    def __repr__(self) -> str:
        return self.describe()

    def peek(self, key: str) -> dict:
        """What the store itself holds for ``key``: the Redis hash or the SQLite row, read around the sidecar.

        Always returns a dict with ``key`` (the stored key, e.g. ``myapp||order-1``, or None) and ``where``;
        when the store cannot be opened from here (a real sidecar, the in-memory store) ``note`` says why.
        """
        if self.stack is None:
            return {"key": None, "where": self.endpoint,
                    "note": "a real sidecar's store is not ours to open; this needs the local stack"}
        stack = self.stack
        full_key = f"{stack.app_id}||{key}"
        if stack.store == "redis":
            r = self.redis(0)
            fields = {_text(k): _text(v) for k, v in r.hgetall(full_key).items()}
            return {"key": full_key, "where": stack.redis_url(0), "type": _text(r.type(full_key)),
                    "fields": fields, "ttl": r.ttl(full_key)}
        if stack.store == "sqlite":
            import sqlite3

            if stack.run_dir is None:
                return {"key": full_key, "where": "nowhere yet", "note": "the local stack has not been started"}
            db = Path(stack.run_dir) / "state.db"
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute("SELECT * FROM state WHERE key = ?", (full_key,)).fetchone()
            return {"key": full_key, "where": str(db), "row": dict(row) if row else None}
        return {"key": full_key, "where": "inside the sidecar process",
                "note": "the in-memory store lives inside the sidecar: there is nothing to open from here"}

    def close(self) -> None:
        self.client.close()
        for client in self._redis_clients.values():
            client.close()
        self._redis_clients.clear()
        if self.stack is not None and self.owns_stack:
            self.stack.stop()


def _text(value: bytes | str) -> str:
    """redis-py answers bytes unless a client decodes; say which text it was either way."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def open_session(
    endpoint: str | None = None,
    *,
    store: str | None = None,
    replicas: int | None = None,
    sidecars: int | None = None,
    app_id: str | None = None,
    run_dir: str | os.PathLike | None = None,
    runtime: str | None = None,
) -> Session:
    """Connect to a sidecar, or start a local stack, that runs what the notebook asks for; wait until ready.

    - ``endpoint`` given: that sidecar, whatever else is asked (``notes`` say what it cannot honour).
    - ``DAPR_HTTP_ENDPOINT``/``DAPR_HTTP_PORT`` set (``./scripts/lab``, ``dapr run -- jupyter lab``): the sidecar
      there. If it is ``./scripts/lab``'s stack but runs another store, fewer replicas or another number of
      sidecars than asked, a stack that matches is started (or reused, in this kernel) on free ports instead,
      and ``notes`` say so. A sidecar statelab did not start is used as it is; ``notes`` name what differs.
    - Neither: a local stack of its own on the first free ports from 3500 up, stopped when the kernel exits.

    ``store``, ``replicas``, ``sidecars`` and ``app_id`` left at None ask for nothing: any sidecar found will do,
    and a stack started here gets ``redis``, 1 replica, 1 sidecar, ``myapp``.
    ``runtime`` chooses the sidecars of a stack started here: ``"statelab"`` or ``"daprd"``; None reads
    ``$STATELAB_RUNTIME`` (default statelab). Either way the lesson talks to the sidecar over the Dapr HTTP API
    only, so it runs the same against real Dapr.
    """
    asked_runtime = runtime or os.environ.get(RUNTIME_ENV)
    runtime = asked_runtime or "statelab"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime (or ${RUNTIME_ENV}) must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    wanted = Wanted(store, replicas, sidecars, app_id, asked_runtime)
    if not endpoint and (os.environ.get("DAPR_HTTP_ENDPOINT") or os.environ.get("DAPR_HTTP_PORT")):
        found = default_endpoint()
        recorded = _recorded_stack(found)
        if recorded is not None:  # ./scripts/lab's stack: the lessons may use its Redis and replicas too
            if not (differences := wanted.differences(recorded)):
                session = Session(found, stack=recorded, owns_stack=False, grpc_endpoint=recorded.grpc_endpoint)
                session.client.wait_until_ready(timeout=30)
                return session
            session = _local_session(wanted, runtime, run_dir)
            session.notes.append(f"(The stack at {found} runs {'; '.join(differences)}: this notebook started "
                                 "its own, above, which stops with the kernel.)")
            return session
        endpoint = found
    if endpoint:
        session = Session(endpoint.rstrip("/"), grpc_endpoint=_grpc_endpoint_from_env())
        session.client.wait_until_ready(timeout=30)
        session.notes += wanted.cannot_honour(session)
        return session
    return _local_session(wanted, runtime, run_dir)


@dataclass(frozen=True)
class Wanted:
    """What a notebook's parameters ask of the sidecar; None asks nothing (a new stack gets the default)."""

    store: str | None
    replicas: int | None
    sidecars: int | None
    app_id: str | None
    runtime: str | None

    def for_new_stack(self) -> tuple[str, int, int, str]:
        return (self.store or "redis", 1 if self.replicas is None else self.replicas,
                1 if self.sidecars is None else self.sidecars, self.app_id or "myapp")

    def differences(self, stack: Stack) -> list[str]:
        """How ``stack`` falls short of what is asked, in words ("sqlite, not redis"); [] when it fits.
        More replicas than asked fit (a lesson that needs none ignores them); sidecars must match."""
        out = []
        if self.store is not None and stack.store != self.store:
            out.append(f"{stack.store}, not {self.store}")
        if stack.store == "redis" and self.replicas is not None and stack.replicas < self.replicas:
            out.append(f"{stack.replicas} Redis replica(s), not {self.replicas}")
        if self.sidecars is not None and stack.sidecars != self.sidecars:
            out.append(f"{stack.sidecars} sidecar(s), not {self.sidecars}")
        if self.app_id is not None and stack.app_id != self.app_id:
            out.append(f"app id {stack.app_id}, not {self.app_id}")
        if self.runtime is not None and stack.runtime != self.runtime:
            out.append(f"{stack.runtime} sidecars, not {self.runtime}")
        return out

    def cannot_honour(self, session: Session) -> list[str]:
        """What a sidecar statelab did not start cannot do of what is asked, one sentence each."""
        out = []
        store_type = session.store_type
        if self.store is not None and store_type and store_type != f"state.{self.store}":
            out.append(f"This notebook asked for store {self.store!r}; this sidecar's {session.store_name!r} is "
                       f"{store_type}, so it runs on that.")
        if self.sidecars is not None and self.sidecars > 1:
            out.append(f"This notebook asked for {self.sidecars} sidecars; a sidecar statelab did not start is one "
                       "sidecar, so every app instance shares it.")
        if self.store == "redis" and self.replicas:
            out.append("This notebook's Redis replica steps need a local stack; on this sidecar they are skipped.")
        return out


_OWN_STACKS: dict[tuple[Wanted, str], Stack] = {}  # stacks started in this kernel, reused by a re-run setup cell


def _local_session(wanted: Wanted, runtime: str, run_dir: str | os.PathLike | None) -> Session:
    key = (wanted, runtime)
    stack = _OWN_STACKS.get(key)
    if stack is not None and stack.running and run_dir is None:
        session = Session(stack.endpoint, stack=stack, owns_stack=False, grpc_endpoint=stack.grpc_endpoint)
        session.notes.append("(Reused: the setup cell started this stack before, in this kernel.)")
    else:
        stack = _start_local_stack(*wanted.for_new_stack(), Path(run_dir) if run_dir else None, runtime)
        _OWN_STACKS[key] = stack
        session = Session(stack.endpoint, stack=stack, grpc_endpoint=stack.grpc_endpoint)
    try:
        session.client.wait_until_ready(timeout=30)
    except SidecarUnavailable:
        stack.stop()
        raise
    return session


def _grpc_endpoint_from_env() -> str | None:
    """The gRPC address the Dapr SDKs take from the environment (``dapr run`` sets DAPR_GRPC_PORT), if any."""
    if address := os.environ.get("DAPR_GRPC_ENDPOINT"):
        return address
    if port := os.environ.get("DAPR_GRPC_PORT"):
        return f"{os.environ.get('DAPR_RUNTIME_HOST') or '127.0.0.1'}:{port}"
    return None


def _recorded_stack(endpoint: str) -> Stack | None:
    """The `statelab up` stack if ``endpoint`` is its first sidecar, else None."""
    try:
        from statelab.local import attach

        stack = attach()
    except Exception:  # noqa: BLE001 - an unreadable record just means "not ours": connect plainly
        log.warning("could not read the local stack's record", exc_info=True)
        return None
    if stack is not None and stack.sidecars and stack.endpoint == endpoint.rstrip("/"):
        return stack
    return None


def _start_local_stack(store: str, replicas: int, sidecars: int, app_id: str, run_dir: Path | None,
                       runtime: str) -> Stack:
    """A Stack on the first free block of the usual ports: 3500/6380, else 3510/6390, ... (never ephemeral)."""
    from statelab.local import Runtime, Stack, Store, on_free_ports

    stack = Stack(
        store=cast(Store, store),  # Stack checks the name itself
        replicas=replicas,
        sidecars=sidecars,
        app_id=app_id,
        http_port=3500,
        redis_port=6380,
        run_dir=run_dir,
        runtime=cast(Runtime, runtime),  # checked by open_session
    )
    return on_free_ports(stack, step=10).start()
