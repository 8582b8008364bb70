"""What the HTTP and the gRPC state APIs share: the loaded stores, key prefixing, and store failures.

Both protocols look stores up, prefix and check keys, and classify a store's failure (ETag mismatch,
invalid ETag, anything else) the same way; only how they report it differs (a status code and JSON body
over HTTP, a gRPC status over gRPC). Section numbers refer to ``docs/dapr-behaviour.md``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from statelab.errors import ETagInvalid, ETagMismatch, StatelabError
from statelab.server import gojson
from statelab.server.components import Component
from statelab.server.stores.base import DeleteRequest, SetRequest, StateStore

log = logging.getLogger(__name__)

ETAG_MISMATCH_TEXT = "possible etag mismatch. error from state store"
ETAG_INVALID_TEXT = "invalid etag value"

# How a store failure is reported (§2.1, §13): HTTP 409 / gRPC ABORTED, HTTP 400 / INVALID_ARGUMENT, else 500 / INTERNAL.
MISMATCH = "etag-mismatch"
INVALID = "etag-invalid"
OTHER = "other"


@dataclass
class Store:
    component: Component
    store: StateStore
    prefix: str


class StoreMissing(Exception):
    """No store by that name; ``configured`` is False when the sidecar has no state store at all."""

    def __init__(self, name: str, configured: bool) -> None:
        super().__init__(f"state store {name} is {'not found' if configured else 'not configured'}")
        self.name = name
        self.configured = configured


class IllegalKey(Exception):
    """A key containing ``||`` (§11), for the store named ``store``; the message is daprd's."""

    def __init__(self, key: str, store: str = "") -> None:
        super().__init__(f"input key/keyPrefix '{key}' can't contain '||'")
        self.key = key
        self.store = store


def lookup(stores: dict[str, Store], name: str) -> Store:
    store = stores.get(name)
    if store is None:
        raise StoreMissing(name, configured=bool(stores))
    return store


def prefixed(store: Store, key: str) -> str:
    """The key as the store sees it (``myapp||key``); raises IllegalKey for a key with ``||``."""
    if "||" in key:
        raise IllegalKey(key, store.component.name)
    return store.prefix + key


def capabilities(store: Store) -> list[str]:
    """The component's capabilities as daprd's metadata lists them (§9.2): its features, plus ACTOR."""
    caps = list(store.store.features)
    if "ETAG" in caps and "TRANSACTIONAL" in caps:
        caps.append("ACTOR")
    return caps


def redis_query_failure(query: bytes) -> str:
    """daprd's state.redis answer to a query when Redis has no RedisJSON module, as statelab's never has:
    it parses the query first (Go's ``json.Unmarshal``), then finds the module missing (docs/fidelity.md)."""
    try:
        gojson.loads(query)
    except gojson.GoJSONError as exc:
        text = str(exc)
        if text in ("EOF", "unexpected EOF"):  # the streaming decoder's words for what Unmarshal calls this
            text = "unexpected end of JSON input"
        return f"failed to parse JSON query body: {text}"
    return "redis-json server support is required for query capability"


# --- store failures ---------------------------------------------------------------------------------


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, ETagMismatch):
        return MISMATCH
    if isinstance(exc, ETagInvalid):
        return INVALID
    return OTHER


def failure_text(exc: BaseException) -> str:
    """The store's error as daprd words it after its own prefix (``possible etag mismatch. ...: <text>``)."""
    if isinstance(exc, ETagMismatch):
        return f"{ETAG_MISMATCH_TEXT}: {exc}" if str(exc) else ETAG_MISMATCH_TEXT
    if isinstance(exc, ETagInvalid):
        return f"{ETAG_INVALID_TEXT}: {exc}" if str(exc) else ETAG_INVALID_TEXT
    return str(exc) or type(exc).__name__


def log_unexpected(exc: BaseException) -> None:
    """A failure no store raises on purpose is a bug somewhere: keep its traceback in the log."""
    if not isinstance(exc, (StatelabError, OSError, ValueError)):
        log.error("store failure", exc_info=exc)


@dataclass
class Failure:
    kind: str  # MISMATCH, INVALID or OTHER
    text: str  # what follows daprd's "failed saving state in state store <name>: " (or its delete twin)


async def save(store: Store, requests: Sequence[SetRequest]) -> Failure | None:
    """Save as daprd does (``docs/fidelity.md``, multi-item saves): one item is a plain set; several are
    independent concurrent sets whose successes stay written. When every failure is an ETag error the result
    is that kind (invalid wins) with daprd's doubled prefix. When ETag errors and others mix, daprd reports
    only an ETag error (the first its ``errors.As`` finds) and drops the others; with no ETag error at all,
    OTHER with the joined texts."""
    return await _each(store.store.set, requests)


async def delete(store: Store, requests: Sequence[DeleteRequest]) -> Failure | None:
    """Delete several keys as daprd's gRPC DeleteBulkState does: independent deletes, reported as ``save``."""
    return await _each(store.store.delete, requests)


async def _each(operation: Callable[[Any], Awaitable[None]], requests: Sequence[Any]) -> Failure | None:
    if len(requests) == 1:
        try:
            await operation(requests[0])
        except Exception as exc:  # noqa: BLE001 - every store failure becomes a Dapr error
            log_unexpected(exc)
            return Failure(failure_kind(exc), failure_text(exc))
        return None
    results = await asyncio.gather(*(operation(r) for r in requests), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        return None
    for failure in failures:
        if not isinstance(failure, Exception):
            raise failure
        log_unexpected(failure)
    joined = "\n".join(failure_text(f) for f in failures)
    kinds = {failure_kind(f) for f in failures}
    if OTHER in kinds:
        # daprd's handler looks for an ETag error anywhere in the joined error (errors.As) and, finding one,
        # answers with it alone. It finds them in completion order; item order is our deterministic choice.
        etag_failure = next((f for f in failures if failure_kind(f) != OTHER), None)
        if etag_failure is not None:
            return Failure(failure_kind(etag_failure), failure_text(etag_failure))
        return Failure(OTHER, joined)
    kind = INVALID if INVALID in kinds else MISMATCH
    return Failure(kind, f"{ETAG_INVALID_TEXT if kind == INVALID else ETAG_MISMATCH_TEXT}: {joined}")
