"""Start-up of the local sidecar: load components, initialise stores, listen, stop cleanly on SIGTERM.

HTTP always; gRPC too when a ``grpc_port`` is given (``--dapr-grpc-port``), on the same event loop and
over the same ``StateAPI``, so both protocols share one set of store objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from statelab.errors import ComponentError
from statelab.server.components import key_prefix, load_components
from statelab.server.sidecar import http
from statelab.server.sidecar.api import StateAPI, internal_error
from statelab.server.sidecar.state import Store
from statelab.server.stores import open_store

log = logging.getLogger("statelab.server.sidecar")

DEFAULT_MAX_BODY = 4 << 20  # daprd's --max-body-size default: 4 MiB


@dataclass
class SidecarConfig:
    app_id: str
    http_port: int = 3500
    grpc_port: int | None = None  # None: no gRPC server (daprd's default is 50001; statelab serves it only on request)
    resources_path: str = "components"
    listen_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    max_body_size: int = DEFAULT_MAX_BODY
    init_timeout: float = 10.0
    idle_timeout: float = 60.0


async def open_stores(config: SidecarConfig) -> dict[str, Store]:
    stores: dict[str, Store] = {}
    try:
        for comp in load_components(config.resources_path, config.app_id):
            store = open_store(comp)
            try:
                await asyncio.wait_for(store.init(), config.init_timeout)
            except asyncio.TimeoutError:
                raise ComponentError(f"component {comp.name} ({comp.type}) did not initialise within {config.init_timeout:g}s") from None
            except ComponentError:
                raise
            except Exception as exc:
                raise ComponentError(f"component {comp.name} ({comp.type}) failed to initialise: {exc}") from None
            stores[comp.name] = Store(comp, store, key_prefix(comp, config.app_id))
            log.info("component loaded: %s (%s/%s)", comp.name, comp.type, comp.version)
    except BaseException:
        await close_stores(stores)
        raise
    return stores


async def close_stores(stores: dict[str, Store]) -> None:
    for s in stores.values():
        try:
            await s.store.close()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("closing %s", s.component.name)


async def run(config: SidecarConfig) -> None:
    """Serve until SIGTERM/SIGINT. Raises ComponentError or OSError (port in use) before serving."""
    stores = await open_stores(config)
    api = StateAPI(config.app_id, stores, api_token=os.environ.get("DAPR_API_TOKEN", ""))
    try:
        servers = await http.serve(
            api.handle,
            config.listen_addresses,
            config.http_port,
            max_body=config.max_body_size,
            idle_timeout=config.idle_timeout,
            on_error=internal_error,
        )
    except BaseException:
        await close_stores(stores)
        raise
    grpc_server = None
    if config.grpc_port is not None:
        from statelab.server.sidecar import grpc  # imported only when asked for: grpcio and the dapr stubs are heavy

        try:
            grpc_server = await grpc.serve(api, config.listen_addresses, config.grpc_port, max_message=config.max_body_size)
        except BaseException:
            for server in servers:
                server.close()
            await close_stores(stores)
            raise
    api.ready = True
    log.info(
        "dapr-compatible sidecar ready: app id %s, HTTP on %s port %d%s, %d state store(s)%s",
        config.app_id,
        ",".join(config.listen_addresses),
        config.http_port,
        f", gRPC on port {config.grpc_port}" if grpc_server is not None else "",
        len(stores),
        ", API token required" if api.api_token else "",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for server in servers:
        server.close()
    if grpc_server is not None:
        await grpc_server.stop(1.0)
    await close_stores(stores)


def main(config: SidecarConfig) -> int:
    uvloop: Any
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(run(config))
        else:
            asyncio.run(run(config))
    except ComponentError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen: %s", exc)  # names the address: HTTP's from asyncio, gRPC's from grpc.serve
        return 1
    return 0
