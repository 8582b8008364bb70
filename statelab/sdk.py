"""The official Dapr Python SDK (``dapr`` on PyPI) against a session's sidecar (lesson 06).

``DaprClient`` speaks gRPC for every state call. Two of its habits matter for a notebook:

- its constructor blocks until ``GET /v1.0/healthz/outbound`` answers on the *HTTP* endpoint that
  ``dapr.conf.settings`` names (``DAPR_HTTP_ENDPOINT``, else ``DAPR_RUNTIME_HOST:DAPR_HTTP_PORT``,
  default 127.0.0.1:3500) - not on the gRPC address it is given - for up to ``DAPR_HEALTH_TIMEOUT`` (60 s);
- the gRPC address can be passed explicitly (``DaprClient(address="127.0.0.1:3550")``), else it comes
  from ``DAPR_GRPC_ENDPOINT`` / ``DAPR_GRPC_PORT`` (default 50001).

``connect()`` therefore passes the gRPC address explicitly and points the SDK's settings at the
session's HTTP endpoint only while the client is built. Everything else here turns the SDK's answers
into data: ``attempt()`` catches a ``DaprGrpcError`` and returns its status with a fixed sentence, so an
expected ETag conflict never shows as a traceback. Only the Dapr APIs are used (gRPC through the SDK,
HTTP through ``StateClient``), so all of it runs unchanged against a real ``dapr run`` sidecar.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError

from statelab.display import html_table

# Fixed sentences for the gRPC statuses a lesson meets (docs/dapr-behaviour.md §13).
MEANING: dict[str, str] = {
    "OK": "done",
    "ABORTED": "ABORTED: the ETag did not match, or first-write found the key already there; nothing was "
    "written. Read again and retry with the new ETag.",
    "INVALID_ARGUMENT": "INVALID_ARGUMENT: the sidecar refused the request itself (unknown store, empty or "
    "'||' key, or an ETag the store cannot parse).",
    "INTERNAL": "INTERNAL: the store failed the operation. Transactions report ETag conflicts this way too, "
    "and Redis answers so for a first-write save without ETag to a key written with first-write.",
    "FAILED_PRECONDITION": "FAILED_PRECONDITION: the sidecar has no state store configured.",
    "UNAUTHENTICATED": "UNAUTHENTICATED: the sidecar wants a dapr-api-token (set DAPR_API_TOKEN).",
    "UNIMPLEMENTED": "UNIMPLEMENTED: the sidecar does not offer this call (or this transaction operation).",
    "UNAVAILABLE": "UNAVAILABLE: nothing answers on the gRPC address; is the sidecar's gRPC port right?",
}


class Sidecar(Protocol):
    """What ``connect`` needs: a ``Session`` or a ``local.Stack`` both have these."""

    endpoint: str  # HTTP base URL, where the SDK checks health
    grpc_endpoint: str | None  # host:port of the gRPC API; None: the SDK's own settings decide


# --- connecting ---------------------------------------------------------------------------------------

_settings_lock = threading.Lock()  # dapr.conf.settings is process-wide
_UNSET = object()


@contextlib.contextmanager
def _sdk_settings(**values: Any) -> Iterator[None]:
    """Override ``dapr.conf.settings`` entries for the duration, then restore them exactly.

    The SDK reads settings from the environment on each access (older releases once, at import); a value
    set on the settings object wins in both, and removing it again brings the environment's value back.
    """
    from dapr.conf import settings

    with _settings_lock:
        saved = {name: settings.__dict__.get(name, _UNSET) for name in values}
        for name, value in values.items():
            setattr(settings, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is _UNSET:
                    delattr(settings, name)
                else:
                    setattr(settings, name, value)


def connect(sidecar: Sidecar, *, timeout: float = 30.0) -> DaprClient:
    """A ``DaprClient`` for this sidecar: gRPC at ``sidecar.grpc_endpoint``, health checked at ``sidecar.endpoint``.

    Raises ``TimeoutError`` (from the SDK) if the sidecar's HTTP health check does not pass in ``timeout`` s.
    Close it when done (``client.close()`` or ``with``).
    """
    with _sdk_settings(DAPR_HTTP_ENDPOINT=sidecar.endpoint.rstrip("/"), DAPR_HEALTH_TIMEOUT=timeout):
        return DaprClient(address=sidecar.grpc_endpoint or None)


# --- calls that may be refused ------------------------------------------------------------------------


@dataclass
class SdkCall:
    """One SDK call and how the sidecar answered: ``code`` is ``OK`` or the gRPC status name."""

    call: str
    code: str
    error_code: str = ""  # the ErrorInfo reason daprd attaches, e.g. ERR_STATE_SAVE
    message: str = ""
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def meaning(self) -> str:
        return MEANING.get(self.code, self.code)

    def text(self) -> str:
        if self.ok:
            return f"{self.call} → OK"
        reason = f" ({self.error_code})" if self.error_code else ""
        return f"{self.call} → DaprGrpcError {self.code}{reason}\n  {self.meaning}\n  sidecar said: {self.message}"

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return SdkCalls([self])._repr_html_()


class SdkCalls(list):
    """Several ``SdkCall``s shown as one table."""

    def __repr__(self) -> str:
        return "\n".join(a.text() for a in self)

    def _repr_html_(self) -> str:
        return html_table(["call", "answer", "what it means", "sidecar said"],
                          [[a.call, a.code + (f" ({a.error_code})" if a.error_code else ""), a.meaning, a.message]
                           for a in self])


def _label(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    shown = [_short(a) for a in args[1:]]  # the store name is the same every time
    shown += [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{getattr(fn, '__name__', 'call')}({', '.join(shown)})"


def _short(value: Any) -> str:
    """A readable argument: the SDK's StateOptions and transaction operations have no useful repr."""
    if hasattr(value, "concurrency") and hasattr(value, "consistency"):
        return f"StateOptions({value.concurrency.name}, {value.consistency.name})"
    if hasattr(value, "operation_type") and hasattr(value, "key"):
        etag = f", etag={value.etag!r}" if getattr(value, "etag", None) is not None else ""
        return f"{value.operation_type.name} {value.key!r}{etag}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return repr(value)


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> SdkCall:
    """Call an SDK method; a ``DaprGrpcError`` (or any gRPC error) becomes an ``SdkCall`` with its status."""
    call = _label(fn, args, kwargs)
    try:
        result = fn(*args, **kwargs)
    except DaprGrpcError as err:
        return SdkCall(call, err.code().name, _reason(err), err.details() or "")
    except grpc.RpcError as err:  # a raw stub call, not wrapped by the SDK
        return SdkCall(call, err.code().name, "", err.details() or "")
    return SdkCall(call, "OK", result=result)


def _reason(err: DaprGrpcError) -> str:
    code = err.error_code()
    return "" if code == "UNKNOWN" else code


# --- views of what came back --------------------------------------------------------------------------


def text(data: bytes) -> str | None:
    """The bytes the SDK returns as text; None for b"" (a missing key reads as empty data, not an error)."""
    return data.decode("utf-8", "replace") if data else None


@dataclass
class BulkView:
    """``get_bulk_state`` items as rows: key, data (text), ETag, error."""

    rows: list[tuple[str, str | None, str, str]]

    @property
    def found(self) -> list[str]:
        return sorted(key for key, data, _, _ in self.rows if data is not None)

    def values(self) -> dict[str, str | None]:
        return {key: data for key, data, _, _ in self.rows}

    def __repr__(self) -> str:
        return "\n".join(f"{k}: data={d!r} etag={e!r}" + (f" error={x!r}" if x else "") for k, d, e, x in self.rows)

    def _repr_html_(self) -> str:
        return html_table(["key", "data", "etag", "error"],
                          [[k, "(empty: missing)" if d is None else d, e, x] for k, d, e, x in self.rows])


def bulk(items: Sequence[Any]) -> BulkView:
    return BulkView([(i.key, text(i.data), i.etag, i.error) for i in items])


@dataclass
class ProtocolComparison:
    """The same values written over one protocol and read over both (docs/dapr-behaviour.md §10)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def row(self, written: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["written"] == written)

    def metrics(self) -> list[tuple[str, Any, str]]:
        http, raw, as_json = self.row("HTTP"), self.row("SDK"), self.row("SDK + contentType")
        return [
            ("http_saved_read_by_sdk", http["sdk_data"], "what save over HTTP of the JSON string hello reads as over gRPC"),
            ("sdk_saved_read_over_http", raw["http_body"], "the SDK's raw bytes come back over HTTP as they are"),
            ("sdk_saved_http_content_type", raw["http_content_type"], "even though they are not JSON"),
            ("json_metadata_read_over_http", as_json["http_body"], "contentType application/json: stored as JSON"),
        ]

    def __repr__(self) -> str:
        return "\n".join(
            f"{r['written']:<18} sent {r['sent']:<28} HTTP GET → {r['http_body']!r} ({r['http_content_type']}); "
            f"SDK get_state → {r['sdk_data']!r}"
            for r in self.rows
        )

    def _repr_html_(self) -> str:
        return html_table(
            ["written with", "what was sent", "HTTP GET body", "HTTP Content-Type", "SDK get_state().data"],
            [[r["written"], r["sent"], r["http_body"], r["http_content_type"], r["sdk_data"]] for r in self.rows],
        )


def compare_protocols(client: DaprClient, session: Any, store: str, *, prefix: str = "xproto") -> ProtocolComparison:
    """Write three values - over HTTP, with the SDK, with the SDK and ``contentType: application/json`` -
    and read each back over HTTP (raw body and Content-Type) and with the SDK (bytes)."""
    keys = {name: f"{prefix}-{name}-{uuid.uuid4().hex[:6]}" for name in ("http", "raw", "json")}
    session.client.save(store, keys["http"], "hello")
    client.save_state(store, keys["raw"], "hello")
    doc = json.dumps({"b": 1, "a": 2})
    client.save_state(store, keys["json"], doc, state_metadata={"contentType": "application/json"})
    sent = {"http": '[{"key": …, "value": "hello"}]', "raw": "save_state(…, 'hello')",
            "json": f"save_state(…, '{doc}', contentType)"}
    written = {"http": "HTTP", "raw": "SDK", "json": "SDK + contentType"}
    comparison = ProtocolComparison()
    for name, key in keys.items():
        resp = session.client.request("GET", f"/v1.0/state/{store}/{key}")
        comparison.rows.append({
            "written": written[name],
            "sent": sent[name],
            "http_body": resp.content.decode("utf-8", "replace"),
            "http_content_type": resp.headers.get("Content-Type", ""),
            "sdk_data": text(client.get_state(store, key).data),
        })
    for key in keys.values():
        session.client.delete(store, key)
    return comparison


__all__ = ["SdkCall", "SdkCalls", "BulkView", "ProtocolComparison", "attempt", "bulk", "compare_protocols", "connect", "text"]
