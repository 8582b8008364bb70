"""The Dapr gRPC state API (``dapr.proto.runtime.v1.Dapr``): what the official SDKs speak.

Served with ``grpc.aio`` on the sidecar's own event loop over the very ``StateAPI`` the HTTP routes use
(same stores, app id, API token and extended metadata), so a value saved over one protocol reads back
over the other exactly as with daprd (``docs/dapr-behaviour.md`` §10; section numbers below refer to it).
The service stubs are the ones generated in the ``dapr`` wheel. Status codes, messages and error details
follow daprd's ``pkg/api/grpc`` (§13); the details are the ``google.rpc`` messages the SDKs decode
(``DaprGrpcError.error_code()`` is the ErrorInfo reason).

Methods outside the state subset (pub/sub, actors, …) answer UNIMPLEMENTED (daprd would say that no
such component is configured).
"""

from __future__ import annotations

import errno
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc
from dapr.proto import api_service_v1, api_v1, common_v1
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from statelab.server import gojson
from statelab.server.sidecar import state
from statelab.server.sidecar.api import RUNTIME_VERSION, StateAPI
from statelab.server.sidecar.state import Store, failure_text
from statelab.server.stores.base import DeleteRequest, Operation, SetRequest

log = logging.getLogger(__name__)

Code = grpc.StatusCode
DOMAIN = "dapr.io"
TOKEN_HEADER = "dapr-api-token"
JSON_CONTENT_TYPE = "application/json"

# How each kind of store failure is answered by save and delete (§13; daprd's getStateErrorCode).
_FAILURE_CODE = {state.MISMATCH: Code.ABORTED, state.INVALID: Code.INVALID_ARGUMENT, state.OTHER: Code.INTERNAL}

_CONSISTENCY = {
    common_v1.StateOptions.CONSISTENCY_EVENTUAL: "eventual",
    common_v1.StateOptions.CONSISTENCY_STRONG: "strong",
}
_CONCURRENCY = {
    common_v1.StateOptions.CONCURRENCY_FIRST_WRITE: "first-write",
    common_v1.StateOptions.CONCURRENCY_LAST_WRITE: "last-write",
}


# --- errors as daprd builds them (dapr/kit errors: a status with google.rpc details) ----------------


class RpcFailure(Exception):
    """Raised inside a handler; the handler answers with this status, message and details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def trailers(self) -> tuple[tuple[str, bytes], ...]:
        """The ``grpc-status-details-bin`` trailer that carries the rich status (as grpc_status.rpc_status builds it)."""
        packed = []
        for detail in self.details:
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def error_info(reason: str, metadata: dict[str, str] | None = None) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})


def resource_info(store: str) -> error_details_pb2.ResourceInfo:
    return error_details_pb2.ResourceInfo(resource_type="state", resource_name=store)


def basic(code: grpc.StatusCode, error_code: str, message: str) -> RpcFailure:
    """daprd's ``apierrors.Basic``: the legacy error code travels as the ErrorInfo reason."""
    return RpcFailure(code, message, [error_info(error_code)])


def _failed(failure: state.Failure | None, error_code: str, message: str) -> None:
    """Raise a store failure as daprd does: its kind picks the status, ``message: <failure text>``."""
    if failure is not None:
        raise basic(_FAILURE_CODE[failure.kind], error_code, f"{message}: {failure.text}")


def _store_missing(missing: state.StoreMissing) -> RpcFailure:
    # daprd's gRPC path looks stores up without the app id, so the ErrorInfo has no metadata.
    if missing.configured:
        return RpcFailure(Code.INVALID_ARGUMENT, str(missing), [error_info("DAPR_STATE_NOT_FOUND")])
    return RpcFailure(Code.FAILED_PRECONDITION, str(missing), [error_info("DAPR_STATE_NOT_CONFIGURED")])


def _illegal_key(bad: state.IllegalKey) -> RpcFailure:
    violation = error_details_pb2.BadRequest.FieldViolation(field=bad.key, description=str(bad))
    return RpcFailure(
        Code.INVALID_ARGUMENT,
        str(bad),
        [
            error_details_pb2.BadRequest(field_violations=[violation]),
            resource_info(bad.store),
            error_info("DAPR_STATE_ILLEGAL_KEY"),
        ],
    )


def _unauthenticated(detail: str) -> RpcFailure:
    # daprd: invokev1.ErrorFromHTTPResponseCode(401, detail) - the reason is the HTTP status text.
    return RpcFailure(
        Code.UNAUTHENTICATED,
        "Unauthorized",
        [error_info("Unauthorized", {"http.code": "401", "http.error_message": detail[:63]})],
    )


# --- the servicer -------------------------------------------------------------------------------------

_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def _rpc(method: _Handler) -> _Handler:
    """Check the API token, run the handler, and turn the failures it raises into gRPC statuses."""

    @functools.wraps(method)
    async def handler(self: DaprServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authenticate(context)
            return await method(self, request, context)
        except RpcFailure as exc:
            failure = exc
        except state.StoreMissing as exc:
            failure = _store_missing(exc)
        except state.IllegalKey as exc:
            failure = _illegal_key(exc)
        except Exception:  # a bug: keep the traceback in the log, answer like the HTTP side does
            log.exception("gRPC %s failed", method.__name__)
            failure = RpcFailure(Code.INTERNAL, "internal error in the statelab sidecar; see its log")
        await context.abort(failure.code, failure.message, trailing_metadata=failure.trailers())

    return cast(_Handler, handler)  # same signature as ``method``: wraps(method) keeps its name and arguments


class DaprServicer(api_service_v1.DaprServicer):
    """The state subset of ``dapr.proto.runtime.v1.Dapr`` over a ``StateAPI``'s stores."""

    def __init__(self, api: StateAPI) -> None:
        self.api = api

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if not self.api.api_token:
            return
        given = [v for k, v in context.invocation_metadata() or () if k == TOKEN_HEADER]
        if not given:
            raise _unauthenticated("missing api token in request metadata")
        token = given[0].encode() if isinstance(given[0], str) else given[0]
        if not hmac.compare_digest(token, self.api.api_token):
            raise _unauthenticated("authentication error: api token mismatch")

    def _store(self, name: str) -> Store:
        return state.lookup(self.api.stores, name)

    # --- state ---

    @_rpc
    async def GetState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        key = state.prefixed(store, request.key)
        try:
            item = await store.store.get(
                key, consistency=_CONSISTENCY.get(request.consistency, ""), metadata=dict(request.metadata)
            )
        except Exception as exc:  # noqa: BLE001 - every store failure is a Dapr error
            state.log_unexpected(exc)
            raise basic(
                Code.INTERNAL,
                "ERR_STATE_GET",
                f"fail to get {request.key} from state store {request.store_name}: {failure_text(exc)}",
            ) from None
        if item is None:  # a miss is not an error over gRPC either: empty data, empty etag
            return api_v1.GetStateResponse()
        return api_v1.GetStateResponse(data=item.data, etag=item.etag, metadata=item.metadata())

    @_rpc
    async def GetBulkState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        if not request.keys:
            return api_v1.GetBulkStateResponse()
        keys = [state.prefixed(store, k) for k in request.keys]
        try:
            results = await store.store.bulk_get(keys, parallelism=request.parallelism, metadata=dict(request.metadata))
        except Exception as exc:  # noqa: BLE001 - daprd returns the store's error as is (status UNKNOWN)
            state.log_unexpected(exc)
            raise RpcFailure(Code.UNKNOWN, failure_text(exc)) from None
        items = []
        for r in results:
            item = api_v1.BulkStateItem(key=r.key[len(store.prefix) :], error=r.error)
            if r.item is not None:
                item.data, item.etag = r.item.data, r.item.etag
                item.metadata.update(r.item.metadata())
            items.append(item)
        return api_v1.GetBulkStateResponse(items=items)

    @_rpc
    async def SaveState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        if not request.states:
            return empty_pb2.Empty()
        requests = []
        for item in request.states:
            if not item.key:
                raise basic(Code.INVALID_ARGUMENT, "ERR_STATE_SAVE", "state key cannot be empty")
            key = state.prefixed(store, item.key)
            metadata = dict(item.metadata)
            concurrency, consistency = _options(item)
            requests.append(
                SetRequest(
                    key=key,
                    value=_value(item.value, metadata),
                    etag=item.etag.value if item.HasField("etag") else None,
                    metadata=metadata,
                    concurrency=concurrency,
                    consistency=consistency,
                )
            )
        _failed(await state.save(store, requests), "ERR_STATE_SAVE",
                f"failed saving state in state store {request.store_name}")
        return empty_pb2.Empty()

    @_rpc
    async def DeleteState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        # DeleteStateRequest carries the same key/etag/options/metadata fields as a StateItem.
        _failed(await state.delete(store, [_delete_request(store, request)]), "ERR_STATE_DELETE",
                f"failed deleting state with key {request.key}")
        return empty_pb2.Empty()

    @_rpc
    async def DeleteBulkState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        deletes = [_delete_request(store, item) for item in request.states]
        if not deletes:
            return empty_pb2.Empty()
        _failed(await state.delete(store, deletes), "ERR_STATE_BULK_DELETE",
                f"failed deleting state in state store {request.store_name}")
        return empty_pb2.Empty()

    @_rpc
    async def ExecuteStateTransaction(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.storeName)
        ops: list[Operation] = []
        for op in request.operations:
            item = op.request
            key = state.prefixed(store, item.key)  # daprd checks the key before the operation type
            if op.operationType == "upsert":
                concurrency, consistency = _options(item)
                ops.append(
                    SetRequest(
                        key=key,
                        value=bytes(item.value),  # transaction upserts are always raw bytes (§10)
                        etag=item.etag.value if item.HasField("etag") else None,
                        metadata=dict(item.metadata),
                        concurrency=concurrency,
                        consistency=consistency,
                    )
                )
            elif op.operationType == "delete":
                ops.append(_delete_request(store, item))
            else:
                raise basic(
                    Code.UNIMPLEMENTED,
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    f"operation type {op.operationType} not supported",
                )
        limit = store.store.max_transaction_ops
        if limit and len(ops) > limit:
            raise RpcFailure(
                Code.INVALID_ARGUMENT,
                f"the transaction contains {len(ops)} operations, which is more than what the state store supports: {limit}",
                [
                    resource_info(request.storeName),
                    error_info(
                        "DAPR_STATE_TOO_MANY_TRANSACTIONS",
                        {"currentOpsTransaction": str(len(ops)), "maxOpsPerTransaction": str(limit)},
                    ),
                ],
            )
        if not ops:
            return empty_pb2.Empty()
        try:
            await store.store.transact(ops, dict(request.metadata))
        except Exception as exc:  # noqa: BLE001 - every transaction failure is INTERNAL, ETag ones too (§13)
            state.log_unexpected(exc)
            raise basic(
                Code.INTERNAL, "ERR_STATE_TRANSACTION", f"error while executing state transaction: {failure_text(exc)}"
            ) from None
        return empty_pb2.Empty()

    @_rpc
    async def QueryStateAlpha1(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        store = self._store(request.store_name)
        if store.component.type != "state.redis":
            raise RpcFailure(
                Code.INTERNAL,
                "state store does not support querying",
                [resource_info(request.store_name), error_info("DAPR_STATE_QUERYING_NOT_SUPPORTED")],
            )
        raise RpcFailure(
            Code.INTERNAL,
            f"state store {request.store_name} query failed: {state.redis_query_failure(request.query.encode())}",
            [resource_info(request.store_name), error_info("DAPR_STATE_QUERY_FAILED")],
        )

    # --- metadata (shared with GET/PUT /v1.0/metadata) ---

    @_rpc
    async def GetMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        components = [
            api_v1.RegisteredComponents(
                name=s.component.name, type=s.component.type, version=s.component.version,
                capabilities=state.capabilities(s),
            )
            for s in self.api.stores.values()
        ]
        return api_v1.GetMetadataResponse(
            id=self.api.app_id,
            runtime_version=RUNTIME_VERSION,
            registered_components=components,
            extended_metadata={**self.api.extended, "daprRuntimeVersion": RUNTIME_VERSION},
            app_connection_properties=api_v1.AppConnectionProperties(protocol="http", channel_address="127.0.0.1"),
            actor_runtime=api_v1.ActorRuntime(
                runtime_status=api_v1.ActorRuntime.DISABLED, host_ready=False, placement="placement: disconnected"
            ),
        )

    @_rpc
    async def SetMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.api.extended[request.key] = request.value
        return empty_pb2.Empty()


def _not_served(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: DaprServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise RpcFailure(Code.UNIMPLEMENTED, f"the statelab sidecar serves the state API only, not {name}")

    method.__name__ = name
    return _rpc(method)


# Every other method of the service: UNIMPLEMENTED (after the token check), without the traceback that the
# generated base class's NotImplementedError would leave in the log.
for _name, _member in vars(api_service_v1.DaprServicer).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(DaprServicer):
        setattr(DaprServicer, _name, _not_served(_name))


def _options(item: Any) -> tuple[str, str]:
    """(concurrency, consistency) strings from a StateOptions message; "" when absent or unspecified."""
    if not item.HasField("options"):
        return "", ""
    return _CONCURRENCY.get(item.options.concurrency, ""), _CONSISTENCY.get(item.options.consistency, "")


def _delete_request(store: Store, item: Any) -> DeleteRequest:
    concurrency, consistency = _options(item)
    return DeleteRequest(
        key=state.prefixed(store, item.key),
        etag=item.etag.value if item.HasField("etag") else None,
        metadata=dict(item.metadata),
        concurrency=concurrency,
        consistency=consistency,
    )


def _value(raw: bytes, metadata: dict[str, str]) -> Any:
    """What SaveState hands the store (§10): the bytes as they came, unless the item says it is JSON."""
    if metadata.get("contentType") != JSON_CONTENT_TYPE:
        return bytes(raw)
    # daprd runs json.Unmarshal and returns its error as is (status UNKNOWN).
    if not raw.strip():
        raise RpcFailure(Code.UNKNOWN, "unexpected end of JSON input")
    try:
        value = gojson.loads(raw)
        json.loads(raw)  # json.Unmarshal, unlike the HTTP decoder, refuses anything after the value
    except gojson.GoJSONError as exc:
        raise RpcFailure(Code.UNKNOWN, str(exc)) from None
    except ValueError as exc:
        text = raw.decode("utf-8", "replace")
        position = getattr(exc, "pos", 0)
        after = text[position] if position < len(text) else ""
        raise RpcFailure(Code.UNKNOWN, f"invalid character {after!r} after top-level value") from None
    return value


# --- serving ------------------------------------------------------------------------------------------


async def serve(api: StateAPI, hosts: Sequence[str], port: int, *, max_message: int) -> grpc.aio.Server:
    """Listen on ``port`` of every host and start serving; OSError if a port cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared with another server
            ("grpc.max_receive_message_length", max_message),  # daprd applies --max-body-size to gRPC too
        ]
    )
    api_service_v1.add_DaprServicer_to_server(DaprServicer(api), server)
    for host in hosts:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:  # newer grpcio raises where older ones returned 0
            bound = 0
        if not bound:
            await server.stop(None)
            raise OSError(errno.EADDRINUSE, f"cannot bind gRPC to {address}: address in use or not available")
    await server.start()
    return server


__all__ = ["DaprServicer", "RpcFailure", "serve"]
