"""What every state store implements, and the request shapes the sidecar hands to it.

Keys reaching a store are already prefixed (``myapp||key``). Values are the decoded JSON of an HTTP
request (each store serialises them the way its Dapr counterpart does) or raw ``bytes`` (gRPC).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from statelab.errors import InvalidRequestOption
from statelab.options import EVENTUAL, FIRST_WRITE, LAST_WRITE, STRONG
from statelab.server import gojson


@dataclass
class SetRequest:
    key: str
    value: Any = None
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    concurrency: str = ""
    consistency: str = ""

    @property
    def has_etag(self) -> bool:
        return self.etag is not None and self.etag != ""


@dataclass
class DeleteRequest:
    key: str
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    concurrency: str = ""
    consistency: str = ""

    @property
    def has_etag(self) -> bool:
        return self.etag is not None and self.etag != ""


Operation = SetRequest | DeleteRequest


@dataclass
class Item:
    """A stored value as read back: the stored bytes, its ETag and, if it has a TTL, when it expires."""

    data: bytes
    etag: str
    expires_at: float | None = None  # unix time

    def metadata(self) -> dict[str, str]:
        if self.expires_at is None:
            return {}
        stamp = datetime.fromtimestamp(int(self.expires_at), tz=timezone.utc)
        return {"ttlExpireTime": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass
class BulkItem:
    key: str
    item: Item | None = None
    error: str = ""


_INT = re.compile(r"[+-]?[0-9]+")  # what Go's strconv accepts: no spaces, no underscores
# The longest TTL a Go time.Duration holds. Dapr's stores multiply ttlInSeconds by time.Second, which
# silently overflows above this; statelab refuses such a TTL (a 500 like any bad ttlInSeconds) rather than
# write an item whose expiry cannot be represented (Redis refuses the EXPIRE after the write, Python's
# datetime cannot format the expiry time).
MAX_TTL_SECONDS = (2**63 - 1) // 10**9


def check_options(concurrency: str, consistency: str) -> None:
    """Reject option values the Dapr stores do not know (daprd answers 500 for these)."""
    if consistency not in ("", STRONG, EVENTUAL):  # daprd checks consistency first
        raise InvalidRequestOption(f"unrecognized consistency model '{consistency}'")
    if concurrency not in ("", FIRST_WRITE, LAST_WRITE):
        raise InvalidRequestOption(f"unrecognized concurrency model '{concurrency}'")


def parse_ttl(metadata: dict[str, str]) -> int | None:
    """``ttlInSeconds`` from request metadata: None when absent, else an int (may be <= 0).

    Raises ``InvalidRequestOption`` with Go's strconv wording; each store adds its own prefix.
    """
    raw = metadata.get("ttlInSeconds")
    if not raw:  # absent, or empty (what a JSON null becomes): no TTL, as in daprd
        return None
    if not _INT.fullmatch(raw):
        raise InvalidRequestOption(f"strconv.ParseInt: parsing {gojson.go_quote(raw)}: invalid syntax")
    value = int(raw)
    if not -(2**63) <= value < 2**63:
        raise InvalidRequestOption(f"strconv.ParseInt: parsing {gojson.go_quote(raw)}: value out of range")
    if value > MAX_TTL_SECONDS:
        raise InvalidRequestOption(f"ttlInSeconds {raw} is out of range: at most {MAX_TTL_SECONDS} seconds")
    return value


def expiry(ttl: int | None, now: float | None = None) -> float | None:
    if ttl is None or ttl <= 0:
        return None
    return (time.time() if now is None else now) + ttl


class StateStore:
    """The store interface. Every method may raise the errors in ``statelab.errors``."""

    features: ClassVar[tuple[str, ...]] = ()
    max_transaction_ops: ClassVar[int] = 0  # 0 = no limit

    async def init(self) -> None:
        """Connect, create tables, read replica counts; called once before serving."""

    async def close(self) -> None:
        """Release connections and background tasks."""

    async def get(self, key: str, *, consistency: str = "", metadata: dict[str, str] | None = None) -> Item | None:
        raise NotImplementedError

    async def bulk_get(
        self, keys: Sequence[str], *, parallelism: int = 0, metadata: dict[str, str] | None = None
    ) -> list[BulkItem]:
        """Default: one get per key, in request order; a failing key is reported in its item."""
        out = []
        for key in keys:
            try:
                out.append(BulkItem(key, await self.get(key, metadata=metadata)))
            except Exception as exc:  # noqa: BLE001 - reported per key, as daprd does
                out.append(BulkItem(key, error=str(exc)))
        return out

    async def set(self, req: SetRequest) -> None:
        raise NotImplementedError

    async def delete(self, req: DeleteRequest) -> None:
        raise NotImplementedError

    async def transact(self, ops: Sequence[Operation], metadata: dict[str, str]) -> None:
        raise NotImplementedError
