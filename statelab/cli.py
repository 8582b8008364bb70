"""The ``statelab`` command: ``sidecar`` (a daprd stand-in) and ``up`` / ``status`` / ``down`` (the local stack)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = getattr(args, "log_level", "info")
    logging.basicConfig(
        level={"warn": logging.WARNING}.get(level, getattr(logging, level.upper(), logging.INFO)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.run(args)
