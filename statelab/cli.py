"""The ``statelab`` command: ``sidecar`` (a daprd stand-in), ``up`` / ``status`` / ``down`` (the local stack) and
``run`` (an app beside a sidecar, as ``dapr run`` starts one)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statelab.local import Stack

APP_STOP_GRACE_SECONDS = 5.0  # after forwarding a signal, how long the app gets before SIGKILL


def _sidecar(args: argparse.Namespace) -> int:
    from statelab.server.sidecar.server import SidecarConfig, main

    config = SidecarConfig(
        app_id=args.app_id,
        http_port=args.dapr_http_port,
        grpc_port=args.dapr_grpc_port,
        resources_path=args.resources_path,
        listen_addresses=[a.strip() for a in args.dapr_listen_addresses.split(",") if a.strip()],
        max_body_size=_size(args.max_body_size),
    )
    return main(config)


def _size(text: str) -> int:
    """daprd's --max-body-size syntax: a number of bytes or with a unit (4Mi, 512Ki, 1M)."""
    units = {"": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3, "b": 1}
    stripped = text.strip().lower()
    number = stripped.rstrip("kmgib")
    unit = stripped[len(number):]
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    return int(number) * units[unit]


def _up(args: argparse.Namespace) -> int:
    from statelab import local

    try:
        stack = local.up(
            store=args.store, replicas=args.replicas, sidecars=args.sidecars, app_id=args.app_id, shared=args.shared,
            runtime=args.runtime,
        )
    except local.StackError as exc:
        print(f"statelab up: {exc}", file=sys.stderr)
        return 1
    print(stack.describe())
    print(f"export DAPR_HTTP_ENDPOINT={stack.endpoint} DAPR_GRPC_ENDPOINT={stack.grpc_endpoint}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from statelab import local

    info = local.status()
    if info is None:
        print("no local stack is running (start one with: statelab up)")
        return 1
    print(json.dumps(info, indent=2) if args.json else info.get("summary", json.dumps(info)))
    return 0


def _down(args: argparse.Namespace) -> int:
    from statelab import local

    stopped = local.down()
    print("local stack stopped" if stopped else "no local stack was running")
    return 0


def _run(args: argparse.Namespace) -> int:
    """``statelab run -- <command>``: start a sidecar (and its store), run the app beside it with the environment
    ``dapr run`` gives an app, forward its output and exit code, stop what was started."""
    from statelab import local

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("statelab run: give the app's command after --, e.g. statelab run -- python apps/order_processor.py",
              file=sys.stderr)
        return 2
    if args.attach and (args.store or args.resources_path):
        print("statelab run: --attach uses the running stack as it is; leave out --store and --resources-path",
              file=sys.stderr)
        return 2
    if args.store and args.resources_path:
        print("statelab run: --resources-path names the store itself; leave out --store", file=sys.stderr)
        return 2
    started = not args.attach
    try:
        stack = _app_stack(args) if started else local.attach()
    except (local.StackError, ValueError) as exc:
        print(f"statelab run: {exc}", file=sys.stderr)
        return 1
    if stack is None:
        print("statelab run: no stack of `statelab up` is running; start one, or leave out --attach", file=sys.stderr)
        return 1
    print(f"statelab run: {'started' if started else 'using the running'} {stack.describe()}; "
          f"app: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        code = _run_app(command, {**os.environ, **stack.app_env()})
    finally:
        if started:
            stack.stop()
    after = "stopped the local stack" if started else "the local stack of `statelab up` keeps running"
    print(f"statelab run: the app exited with code {code}; {after}", file=sys.stderr, flush=True)
    return code


def _app_stack(args: argparse.Namespace) -> Stack:
    """One sidecar for the app on the first free ports from --dapr-http-port: on a store of its own (no replica), or
    on whatever the components in --resources-path name."""
    from statelab import local

    resources = Path(args.resources_path) if args.resources_path else None
    # The Redis of a run is private to it: in the same block of ports as its sidecar (not on 6380, `statelab up`'s).
    stack = local.Stack(store=args.store or "redis", replicas=0, sidecars=1, app_id=args.app_id, runtime=args.runtime,
                        http_port=args.dapr_http_port, redis_port=args.dapr_http_port + 5, resources_path=resources,
                        start_store=resources is None)
    return local.on_free_ports(stack, step=10).start()


def _run_app(command: list[str], env: dict[str, str]) -> int:
    """Run the app in a session of its own and wait for it; its exit code, or 128 + the signal that ended it.

    As under ``dapr run``, a Ctrl-C in the terminal reaches only this process, which hands SIGINT (and SIGTERM,
    SIGHUP) on to the app's process group and gives it APP_STOP_GRACE_SECONDS before SIGKILL. The app inherits
    stdin, stdout and stderr.
    """
    apps: list[subprocess.Popen[bytes]] = []
    deadline: list[float] = []  # set when a signal has been passed on

    def forward(signum: int, frame: FrameType | None) -> None:
        deadline[:] = [time.monotonic() + APP_STOP_GRACE_SECONDS]
        for app in apps:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(app.pid, signum)

    # Caught before the app starts, so that it starts with the default actions (exec resets caught signals, but
    # keeps ignored ones: a shell's background job would otherwise hand the app a SIGINT it ignores).
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            apps.append(subprocess.Popen(command, env=env, start_new_session=True))
        except OSError as exc:
            print(f"statelab run: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        while True:
            try:
                code = apps[0].wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(apps[0].pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="statelab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sidecar", help="run a Dapr-compatible state sidecar (flags as daprd's)")
    s.add_argument("--app-id", required=True)
    s.add_argument("--dapr-http-port", type=int, default=3500)
    s.add_argument("--dapr-grpc-port", type=int, default=None,
                   help="serve the gRPC API (what the Dapr SDKs use) on this port; none if not given")
    s.add_argument("--resources-path", required=True, help="folder of Dapr Component YAMLs")
    s.add_argument("--dapr-listen-addresses", default="127.0.0.1", help="comma-separated hosts to bind")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    s.add_argument("--max-body-size", default="4Mi", help="largest request body (daprd default 4Mi)")
    s.set_defaults(run=_sidecar)

    u = sub.add_parser("up", help="start the local stack: Redis (+ replicas) and sidecars")
    u.add_argument("--store", default="redis", choices=["redis", "sqlite", "in-memory"])
    u.add_argument("--replicas", type=int, default=1, help="Redis replicas (redis store only)")
    u.add_argument("--sidecars", type=int, default=1, help="app instances sharing the store (ports 3500, 3501, ...)")
    u.add_argument("--app-id", default="myapp")
    u.add_argument("--runtime", default="statelab", choices=["statelab", "daprd"],
                   help="statelab's sidecar (default, nothing to install) or a real daprd built by scripts/daprd")
    u.add_argument("--shared", action="store_true",
                   help="class mode, one stack for many people: Redis requires a generated password "
                   "(kept in the run folder's component file, readable only by you)")
    u.set_defaults(run=_up)

    st = sub.add_parser("status", help="show the running local stack")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=_status)

    d = sub.add_parser("down", help="stop the local stack")
    d.set_defaults(run=_down)

    r = sub.add_parser(
        "run", help="run an app beside a sidecar, as `dapr run -- <command>` does",
        description="Start a sidecar (and a store for it), run the command with the environment `dapr run` gives an "
        "app (APP_ID, DAPR_HTTP_PORT, DAPR_GRPC_PORT, ... and DAPR_HTTP_ENDPOINT), pass on its output and exit code, "
        "and stop what was started, also on Ctrl-C. Example: statelab run -- python apps/order_processor.py",
    )
    r.add_argument("--app-id", default="myapp")
    r.add_argument("--store", choices=["redis", "sqlite", "in-memory"],
                   help="the store the sidecar gets, started for this run and stopped after it (default redis)")
    r.add_argument("--resources-path",
                   help="a folder of Dapr Component files loaded as written, as by `dapr run --resources-path`: "
                   "no store is started, the components say where it is (e.g. the Redis of `statelab up`)")
    r.add_argument("--runtime", default="statelab", choices=["statelab", "daprd"],
                   help="statelab's sidecar (default) or a real daprd built by scripts/daprd")
    r.add_argument("--dapr-http-port", type=int, default=3500,
                   help="the first HTTP port to try (gRPC 50 above it, the run's own Redis 5 above it); the stack "
                   "moves up in steps of 10 until all its ports are free")
    r.add_argument("--attach", action="store_true",
                   help="start nothing: run the app beside the first sidecar of the running `statelab up` stack")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- and the app's command line")
    r.set_defaults(run=_run, log_level="warn")  # one line of its own; the app's output is what matters
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = getattr(args, "log_level", "info")
    logging.basicConfig(
        level={"warn": logging.WARNING}.get(level, getattr(logging, level.upper(), logging.INFO)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.run(args)
