"""The local stack: Redis (primary + replicas), SQLite or in-memory, and K sidecars, as processes.

``Stack(...).start()`` gives a lesson everything it needs on 127.0.0.1 and ``stop()`` takes it down again;
``up()`` / ``status()`` / ``down()`` do the same for the ``statelab`` CLI, with the stack outliving the
command. This package only starts processes and speaks to them over sockets: it imports neither the
server wing nor the learner library, so what it runs is exactly what a learner would run by hand. The
sidecars are statelab's (``runtime="statelab"``) or real daprd processes (``runtime="daprd"``, built by
``scripts/daprd``).

Each sidecar serves the Dapr HTTP API and the gRPC API (what the official SDKs use for state) on two ports
from fixed blocks below 32768: HTTP on 3500, 3501, … and gRPC on 3550, 3551, … by default (the gRPC block
sits ``GRPC_PORT_OFFSET`` above the HTTP one, so it moves with ``http_port`` and cannot meet the HTTP ports
of up to 50 sidecars). daprd's own gRPC default, 50001, lies in Linux's ephemeral range (32768–60999),
where any outgoing connection may already hold it; ``env()`` tells the SDKs where to look instead.

Processes started by a ``Stack`` (unless ``detach=True``) die with the Python process that started them,
even when that process is killed with SIGKILL: a watchdog process stops them when its pipe from the owner
closes (``lifeline``), and an ``atexit`` hook stops them gracefully on a normal exit.

Modules: ``stack`` (Stack), ``processes`` (one child process), ``probes`` (ports, health, Redis readiness),
``paths`` (where programs and files are), ``records`` and ``detached`` (the CLI's stack), ``lifeline``.
"""

from statelab.errors import StackError
from statelab.local.detached import attach, down, status, up
from statelab.local.paths import components_source, find_daprd, find_redis_server, state_dir, status_path
from statelab.local.probes import HOST, accepts, free_port_block, healthz, port_is_free
from statelab.local.records import proc_start_time
from statelab.local.stack import GRPC_PORT_OFFSET, KEEP_RUN_DIRS, RUNTIMES, STORES, Runtime, Stack, Store, on_free_ports

__all__ = [
    "GRPC_PORT_OFFSET", "HOST", "KEEP_RUN_DIRS", "RUNTIMES", "STORES", "Runtime", "Stack", "StackError", "Store",
    "accepts", "attach", "components_source", "down", "find_daprd", "find_redis_server", "free_port_block",
    "healthz", "on_free_ports", "port_is_free", "proc_start_time", "state_dir", "status", "status_path", "up",
]
