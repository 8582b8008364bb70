"""The Dapr v1.0 state API over HTTP: routes, status codes and error bodies as daprd answers them.

The Dapr behaviour it follows is described in ``docs/dapr-behaviour.md``; section numbers below refer to it.
"""

from __future__ import annotations

import hmac
import json
import logging
import posixpath
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from statelab import __version__
from statelab.errors import TooManyOperations
from statelab.server import gojson
from statelab.server.sidecar import decode, state
from statelab.server.sidecar.http import Request, Response
from statelab.server.sidecar.state import Store, failure_text
from statelab.server.stores.base import DeleteRequest, Operation, SetRequest

log = logging.getLogger(__name__)

JSON = "application/json"
RUNTIME_VERSION = f"statelab-{__version__}"

# How each kind of store failure (statelab.server.sidecar.state) is answered for save and delete (§2.1).
_FAILURE_STATUS = {state.MISMATCH: 409, state.INVALID: 400, state.OTHER: 500}


# --- error bodies (§2) ----------------------------------------------------------------------------


def error(status: int, code: str, message: str, details: list | None = None) -> Response:
    body: dict[str, Any] = {"errorCode": code, "message": message}
    if details is not None:
        body["details"] = details
    return Response(status, gojson.dumps(body), JSON)


def _error_info(reason: str, metadata: dict[str, str] | None) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "dapr.io",
        "metadata": metadata,
        "reason": reason,
    }


def _resource_info(store: str) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "description": "",
        "owner": "",
        "resource_name": store,
        "resource_type": "state",
    }


def _html_escaped(data: bytes) -> bytes:
    """Raw JSON as Go's encoder writes a ``json.RawMessage``: with ``<``, ``>``, ``&``, U+2028 and U+2029
    escaped. In valid JSON they can only stand inside strings, so replacing them is exact. (A single GET
    sends the stored bytes untouched; a bulk GET goes through the encoder: Redis values differ.)"""
    for raw, escaped in _HTML_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


_HTML_ESCAPES = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"),
                 ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))


def illegal_key(key: str, store: str, field: str) -> Response:
    message = f"api error: code = InvalidArgument desc = {state.IllegalKey(key)}"
    # protobuf's JSON writes the members in field order (field, description) and leaves out an empty field
    violation = {"field": field, "description": message} if field else {"description": message}
    return error(
        400,
        "ERR_MALFORMED_REQUEST",
        message,
        [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "field_violations": [violation]},
            _resource_info(store),
            _error_info("DAPR_STATE_ILLEGAL_KEY", None),
        ],
    )


def internal_error(req: Request) -> Response:
    """Last resort for a bug: a JSON body, never a traceback (the traceback goes to the log)."""
    return error(500, "ERR_INTERNAL", "internal error in the statelab sidecar; see its log")


NOT_FOUND_ROUTE = error(
    404, "ERR_DIRECT_INVOKE", "failed getting app id either from the URL path or the header dapr-app-id"
)
_UNAUTHORIZED = Response(
    401, b"invalid api token\n", "text/plain; charset=utf-8", [("X-Content-Type-Options", "nosniff")]
)
_NO_CONTENT = Response(204)


class _BadRequest(Exception):
    def __init__(self, response: Response):
        self.response = response


# --- the API --------------------------------------------------------------------------------------


class StateAPI:
    def __init__(self, app_id: str, stores: dict[str, Store], *, api_token: str = "") -> None:
        self.app_id = app_id
        self.stores = stores
        self.api_token = api_token.encode() if api_token else b""
        self.extended: dict[str, str] = {"daprRuntimeVersion": RUNTIME_VERSION}
        self.ready = False

    # --- routing (§1.1) ---------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        path = req.path
        if "//" in path or "/." in path or (path.endswith("/") and path != "/"):
            path = posixpath.normpath("/" + path.lstrip("/")) if path != "/" else "/"
        parts = path.split("/")[1:]
        method = req.method

        if self.api_token and not (
            method == "GET" and parts in (["v1.0", "healthz"], ["v1.0", "healthz", "outbound"])
        ):
            given = req.headers.get("dapr-api-token", "").encode("latin-1")
            if not hmac.compare_digest(given, self.api_token):
                return _UNAUTHORIZED

        try:
            if len(parts) >= 3 and parts[0] == "v1.0" and parts[1] == "state":
                return await self._state_route(method, parts, req)
            if parts[:1] == ["v1.0"]:
                if parts[1:] == ["healthz"] and method == "GET":
                    return self._healthz(req)
                if parts[1:] == ["healthz", "outbound"] and method == "GET":
                    return _NO_CONTENT if self.ready else error(
                        500, "ERR_OUTBOUND_HEALTH_NOT_READY", "dapr outbound is not ready"
                    )
                if parts[1:] == ["metadata"] and method == "GET":
                    return self._metadata()
                if len(parts) == 3 and parts[1] == "metadata" and method == "PUT":
                    return self._set_metadata(parts[2], req)
            if len(parts) == 4 and parts[:2] == ["v1.0-alpha1", "state"] and parts[3] == "query":
                if method in ("POST", "PUT"):
                    return self._query(self._param(parts[2]), req)
        except _BadRequest as bad:
            return bad.response
        return NOT_FOUND_ROUTE

    async def _state_route(self, method: str, parts: list[str], req: Request) -> Response:
        if len(parts) == 3 and method in ("POST", "PUT"):
            return await self._save(self._param(parts[2]), req)
        if len(parts) == 4:
            store, key = self._param(parts[2]), parts[3]
            if method in ("POST", "PUT"):
                if key == "bulk":
                    return await self._bulk_get(store, req)
                if key == "transaction":
                    return await self._transaction(store, req)
            elif method == "GET":
                return await self._get(store, self._param(key), req)
            elif method == "DELETE":
                return await self._delete(store, self._param(key), req)
        return NOT_FOUND_ROUTE

    @staticmethod
    def _param(raw: str) -> str:
        # daprd matches on the escaped path, then decodes with Go's url.QueryUnescape ("+" is a space).
        try:
            return unquote_plus(raw, errors="strict")
        except UnicodeDecodeError:
            return unquote_plus(raw, errors="replace")

    def _query_params(self, req: Request) -> tuple[dict[str, str], dict[str, str]]:
        """(plain params, ``metadata.*`` params) from the query string; the first value wins."""
        params: dict[str, str] = {}
        metadata: dict[str, str] = {}
        if req.query:
            for name, value in parse_qsl(req.query, keep_blank_values=True):
                if name.startswith("metadata."):
                    metadata.setdefault(name[len("metadata.") :], value)
                else:
                    params.setdefault(name, value)
        return params, metadata

    def _store(self, name: str, *, app_id_in_details: bool = True) -> Store:
        try:
            return state.lookup(self.stores, name)
        except state.StoreMissing as missing:
            # The query route looks the store up without the app id: its ErrorInfo metadata is null (§8).
            meta = {"appID": self.app_id} if app_id_in_details else None
            info = [_error_info("DAPR_STATE_NOT_FOUND" if missing.configured else "DAPR_STATE_NOT_CONFIGURED", meta)]
            if not missing.configured:
                raise _BadRequest(error(500, "ERR_STATE_STORE_NOT_CONFIGURED", str(missing), info)) from None
            raise _BadRequest(error(400, "ERR_STATE_STORE_NOT_FOUND", str(missing), info)) from None

    def _key(self, store: Store, key: str, in_transaction: bool = False) -> str:
        try:
            return state.prefixed(store, key)
        except state.IllegalKey:
            # daprd's transaction handler blanks the key before it fills in the violation's field.
            raise _BadRequest(illegal_key(key, store.component.name, "" if in_transaction else key)) from None

    def _body(self, req: Request, *, wrap: bool) -> Any:
        """Decode the body with Go's rules; ``wrap`` adds daprd's "failed deserializing" prefix."""
        try:
            return gojson.loads(req.body, cut=req.too_large)
        except gojson.GoJSONError as exc:
            message = f"failed deserializing HTTP body: {exc}" if wrap else str(exc)
            raise _BadRequest(error(400, "ERR_MALFORMED_REQUEST", message)) from None

    # --- health and metadata (§9) -------------------------------------------------------------------

    def _healthz(self, req: Request) -> Response:
        params, _ = self._query_params(req)
        appid = params.get("appid")
        if appid is not None and appid != self.app_id:
            return error(500, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")
        if not self.ready:
            return error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready: [components not initialized]")
        return _NO_CONTENT

    def _metadata(self) -> Response:
        components = [
            {"name": s.component.name, "type": s.component.type, "version": s.component.version,
             "capabilities": state.capabilities(s)}
            for s in self.stores.values()
        ]
        # The shape of a bare daprd with no app and no placement service (§9.2).
        body = {
            "id": self.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "enabledFeatures": [],
            **({"components": components} if components else {}),  # daprd leaves an empty list out
            "extended": dict(sorted({**self.extended, "daprRuntimeVersion": RUNTIME_VERSION}.items())),
            "appConnectionProperties": {"protocol": "http", "channelAddress": "127.0.0.1"},
            "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": False, "placement": "placement: disconnected"},
        }
        return Response(200, gojson.dumps(body) + b"\n", JSON)

    def _set_metadata(self, key: str, req: Request) -> Response:
        if req.too_large:
            return error(400, "ERR_BODY_READ", "failed to read request body: stream too large")
        self.extended[self._param(key)] = req.body.decode("utf-8", errors="replace")
        return _NO_CONTENT

    def _query(self, store_name: str, req: Request) -> Response:
        store = self._store(store_name, app_id_in_details=False)
        if store.component.type != "state.redis":
            return error(
                500,
                "ERR_STATE_STORE_NOT_SUPPORTED",
                "state store does not support querying",
                [_resource_info(store_name), _error_info("DAPR_STATE_QUERYING_NOT_SUPPORTED", None)],
            )
        return error(
            500,
            "ERR_STATE_QUERY",
            f"state store {store_name} query failed: {state.redis_query_failure(req.body)}",
            [_resource_info(store_name), _error_info("DAPR_STATE_QUERY_FAILED", None)],
        )

    # --- state (§3 - §7) ---------------------------------------------------------------------------

    async def _get(self, store_name: str, key: str, req: Request) -> Response:
        store = self._store(store_name)
        full_key = self._key(store, key)
        params, metadata = self._query_params(req)
        try:
            item = await store.store.get(full_key, consistency=params.get("consistency", ""), metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - every store failure is a Dapr error body
            return error(500, "ERR_STATE_GET", f"fail to get {key} from state store {store_name}: {failure_text(exc)}")
        if item is None:
            return _NO_CONTENT
        # Go's net/http writes header names in its canonical form: "Etag", "Metadata.ttlexpiretime".
        headers = [("Etag", item.etag)] if item.etag else []
        for name, value in item.metadata().items():
            headers.append((f"Metadata.{name.lower()}", value))
        return Response(200, item.data, JSON, headers)

    async def _save(self, store_name: str, req: Request) -> Response:
        store = self._store(store_name)
        try:
            items = decode.save_items(self._body(req, wrap=False))
        except decode.DecodeError as exc:
            return error(400, "ERR_MALFORMED_REQUEST", str(exc))
        if not items:
            return _NO_CONTENT
        _, url_metadata = self._query_params(req)
        requests: list[SetRequest] = []
        for item in items:
            if item.key == "":
                return error(400, "ERR_MALFORMED_REQUEST", '"key" is a required field')
            requests.append(self._set_request(store, item, url_metadata))
        # One item is a plain set; several are independent, concurrent writes whose successes stay (§3).
        failure = await state.save(store, requests)
        if failure is None:
            return _NO_CONTENT
        return error(
            _FAILURE_STATUS[failure.kind], "ERR_STATE_SAVE", f"failed saving state in state store {store_name}: {failure.text}"
        )

    def _set_request(
        self, store: Store, item: decode.StateItem, url_metadata: dict[str, str], in_transaction: bool = False
    ) -> SetRequest:
        metadata = {**item.metadata, **url_metadata} if url_metadata else item.metadata
        return SetRequest(
            key=self._key(store, item.key, in_transaction),
            value=item.value,
            etag=item.etag,
            metadata=metadata,
            concurrency=item.concurrency,
            consistency=item.consistency,
        )

    async def _delete(self, store_name: str, key: str, req: Request) -> Response:
        store = self._store(store_name)
        full_key = self._key(store, key)
        params, metadata = self._query_params(req)
        etag = req.headers.get("if-match")
        request = DeleteRequest(
            key=full_key,
            etag=etag if etag else None,
            metadata=metadata,
            concurrency=params.get("concurrency", ""),
            consistency=params.get("consistency", ""),
        )
        try:
            await store.store.delete(request)
        except Exception as exc:  # noqa: BLE001
            return error(
                _FAILURE_STATUS[state.failure_kind(exc)],
                "ERR_STATE_DELETE",
                f"failed deleting state with key {key}: {failure_text(exc)}",
            )
        return _NO_CONTENT

    async def _bulk_get(self, store_name: str, req: Request) -> Response:
        store = self._store(store_name)
        try:
            bulk = decode.bulk_get(self._body(req, wrap=True))
        except decode.DecodeError as exc:
            return error(400, "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: {exc}")
        _, url_metadata = self._query_params(req)
        metadata = {**bulk.metadata, **url_metadata}
        full_keys = [self._key(store, k) for k in bulk.keys]
        try:
            results = await store.store.bulk_get(full_keys, parallelism=bulk.parallelism, metadata=metadata)
        except Exception as exc:  # noqa: BLE001
            return error(500, "ERR_STATE_BULK_GET", failure_text(exc))
        return Response(200, _bulk_body(results, len(store.prefix)), JSON)

    async def _transaction(self, store_name: str, req: Request) -> Response:
        store = self._store(store_name)
        try:
            tx = decode.transaction(self._body(req, wrap=True))
        except decode.DecodeError as exc:
            return error(400, "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: {exc}")
        if not tx.operations:
            return _NO_CONTENT
        _, url_metadata = self._query_params(req)
        ops: list[Operation] = []
        for op in tx.operations:
            if op.operation not in ("upsert", "delete"):
                return error(400, "ERR_NOT_SUPPORTED_STATE_OPERATION", f"operation type {op.operation} not supported")
            try:
                item = decode.state_item(op.request, "SetRequest" if op.operation == "upsert" else "DeleteRequest")
            except decode.DecodeError as exc:
                return error(400, "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: {exc}")
            if op.operation == "upsert":
                ops.append(self._set_request(store, item, url_metadata, in_transaction=True))
            else:
                metadata = {**item.metadata, **url_metadata} if url_metadata else item.metadata
                ops.append(
                    DeleteRequest(
                        key=self._key(store, item.key, in_transaction=True),
                        etag=item.etag,
                        metadata=metadata,
                        concurrency=item.concurrency,
                        consistency=item.consistency,
                    )
                )
        limit = store.store.max_transaction_ops
        if limit and len(ops) > limit:
            too_many = TooManyOperations(
                f"the transaction contains {len(ops)} operations, which is more than what the state store supports: {limit}"
            )
            return error(
                400,
                "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
                str(too_many),
                [
                    _resource_info(store_name),
                    _error_info(
                        "DAPR_STATE_TOO_MANY_TRANSACTIONS",
                        {"currentOpsTransaction": str(len(ops)), "maxOpsPerTransaction": str(limit)},
                    ),
                ],
            )
        try:
            await store.store.transact(ops, {**tx.metadata, **url_metadata})
        except Exception as exc:  # noqa: BLE001 - daprd answers 500 for every transaction failure (§7)
            return error(500, "ERR_STATE_TRANSACTION", f"error while executing state transaction: {failure_text(exc)}")
        return _NO_CONTENT


def _bulk_body(results: Sequence, prefix_len: int) -> bytes:
    parts = []
    for r in results:
        key = r.key[prefix_len:]
        entry = [b'{"key":', gojson.dumps(key)]
        if r.item is not None:
            data = r.item.data
            if data:
                if not _is_json(data):
                    # Go refuses to encode invalid raw JSON; daprd then sends an empty 200 (§5).
                    return b""
                entry += [b',"data":', _html_escaped(data)]
            if r.item.etag:
                entry += [b',"etag":', gojson.dumps(r.item.etag)]
            meta = r.item.metadata()
            if meta:
                entry += [b',"metadata":', gojson.dumps(meta)]
        if r.error:
            entry += [b',"error":', gojson.dumps(r.error)]
        entry.append(b"}")
        parts.append(b"".join(entry))
    return b"[" + b",".join(parts) + b"]\n"


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    except RecursionError:  # deeper than Python parses here (a real daprd may have written it): valid JSON
        return True
    return True


__all__ = ["StateAPI", "Store", "error", "internal_error"]
