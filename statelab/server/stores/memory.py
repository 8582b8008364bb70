"""``state.in-memory``: a dict inside the sidecar process, with Dapr's in-memory semantics.

ETags are random UUIDs, an ETag on a missing key is a conflict, first-write without an ETag refuses
an existing key, and transactions are validated completely before anything is written. Every method
runs without awaiting in between, so on the sidecar's single event loop each one is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from statelab.errors import ETagMismatch, InvalidRequestOption
from statelab.server import gojson
from statelab.server.stores.base import (
    FIRST_WRITE,
    BulkItem,
    DeleteRequest,
    Item,
    Operation,
    SetRequest,
    StateStore,
    check_options,
    expiry,
    parse_ttl,
)


def _encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else gojson.dumps_go(value)


class MemoryStore(StateStore):
    features = ("ETAG", "TRANSACTIONAL", "TTL", "DELETE_WITH_PREFIX", "KEYS_LIKE")

    def __init__(self, metadata: Mapping[str, str]) -> None:
        self._items: dict[str, Item] = {}
        self._sweeper: asyncio.Task | None = None

    async def init(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        # Dapr's in-memory store drops expired items once a second; reads also check expiry.
        while True:
            await asyncio.sleep(1)
            now = time.time()
            for key in [k for k, it in self._items.items() if it.expires_at and it.expires_at < now]:
                del self._items[key]

    def _live(self, key: str) -> Item | None:
        item = self._items.get(key)
        if item is not None and item.expires_at is not None and time.time() > item.expires_at:
            del self._items[key]
            return None
        return item

    async def get(self, key: str, *, consistency: str = "", metadata: dict[str, str] | None = None) -> Item | None:
        return self._live(key)

    async def bulk_get(self, keys: Sequence[str], *, parallelism: int = 0,
                       metadata: Mapping[str, str] | None = None) -> list[BulkItem]:
        return [BulkItem(k, self._live(k)) for k in keys]

    # --- writes: validate (may raise, nothing written), then apply ---------------------------------

    def _check_set(self, req: SetRequest) -> int | None:
        check_options(req.concurrency, req.consistency)
        try:
            ttl = parse_ttl(req.metadata)
        except InvalidRequestOption as exc:
            raise InvalidRequestOption(str(exc).replace("ParseInt", "Atoi")) from None
        current = self._live(req.key)
        if req.has_etag:
            if current is None:
                raise ETagMismatch(f"state not exist or expired for key={req.key}")
            if current.etag != req.etag:
                raise ETagMismatch(
                    f"state etag not match for key={req.key}: current={current.etag}, expect={req.etag}"
                )
        elif req.concurrency == FIRST_WRITE and current is not None:
            raise ETagMismatch("item already exists and no etag was passed")
        return ttl

    def _check_delete(self, req: DeleteRequest, *, validate_options: bool = True) -> None:
        if validate_options:
            check_options(req.concurrency, req.consistency)
        current = self._live(req.key)
        if req.has_etag:
            if current is None:
                raise ETagMismatch(f"state not exist or expired for key={req.key}")
            if current.etag != req.etag:
                raise ETagMismatch(
                    f"state etag not match for key={req.key}: current={current.etag}, expect={req.etag}"
                )
        elif req.concurrency == FIRST_WRITE and current is not None:
            raise ETagMismatch("item already exists and no etag was passed")

    def _apply_set(self, req: SetRequest, ttl: int | None) -> None:
        self._items[req.key] = Item(_encode(req.value), str(uuid.uuid4()), expiry(ttl))

    async def set(self, req: SetRequest) -> None:
        self._apply_set(req, self._check_set(req))

    async def delete(self, req: DeleteRequest) -> None:
        self._check_delete(req)
        self._items.pop(req.key, None)

    async def transact(self, ops: Sequence[Operation], metadata: dict[str, str]) -> None:
        # As Dapr: every op is checked against the state before the transaction, then all are applied,
        # so a failing op leaves everything untouched.
        # (Dapr never validates the options of deletes inside a transaction; neither do we.)
        ttls: list[int | None] = []
        for op in ops:
            if isinstance(op, SetRequest):
                ttls.append(self._check_set(op))
            else:
                self._check_delete(op, validate_options=False)
                ttls.append(None)
        for op, ttl in zip(ops, ttls, strict=True):
            if isinstance(op, SetRequest):
                self._apply_set(op, ttl)
            else:
                self._items.pop(op.key, None)
