"""``state.redis``: a real redis-server, laid out exactly like Dapr's ``state.redis`` (hash mode).

Each key is a hash ``appid||key -> {data, version[, first-write]}``. Writes run as Lua scripts so the
version check and the write are one atomic step; the scripts are loaded once and called by SHA.
The ETag is the integer ``version``. Commands go through ``statelab.server.stores.resp``, a small pipelined
client (redis-py's per-command overhead made it the sidecar's bottleneck).

Dapr's quirks are kept on purpose because learners meet them on a real sidecar too: an ETag on a missing key creates it, last-write ignores the ETag, a key once
written with first-write refuses later writes without an ETag, and ``consistency=strong`` sends
``WAIT <replicas> 1000`` whose answer is not checked. Transactions are MULTI/EXEC, not atomic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from statelab.errors import ComponentError, ETagInvalid, ETagMismatch, InvalidRequestOption, StoreError
from statelab.server import gojson
from statelab.server.components import parse_duration
from statelab.server.stores.base import (
    FIRST_WRITE,
    LAST_WRITE,
    STRONG,
    BulkItem,
    DeleteRequest,
    Item,
    Operation,
    SetRequest,
    StateStore,
    check_options,
    parse_ttl,
)
from statelab.server.stores.resp import ReplyError, RespClient

log = logging.getLogger(__name__)

# KEYS[1] key; ARGV: expected version ("0" = none), data, "1" to mark first-write, ttl ("" = leave as is).
# Dapr applies the TTL with separate EXPIRE/PERSIST commands after the script; doing it inside is the
# same result without the window where a crash leaves the value without its TTL.
_SET = """
local cur = redis.pcall("HGET", KEYS[1], "version")
if type(cur) == "table" then
  redis.call("DEL", KEYS[1])
  cur = false
end
local fw = redis.call("HEXISTS", KEYS[1], "first-write")
if cur and cur ~= "" and cur ~= ARGV[1] and not (fw == 0 and ARGV[1] == "0") then
  return redis.error_reply("failed to set key " .. KEYS[1])
end
redis.call("HSET", KEYS[1], "data", ARGV[2])
if ARGV[3] == "1" then
  redis.call("HSET", KEYS[1], "first-write", "0")
end
local v = redis.call("HINCRBY", KEYS[1], "version", 1)
if ARGV[4] ~= "" then
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call("EXPIRE", KEYS[1], ttl)
  else
    redis.call("PERSIST", KEYS[1])
  end
end
return v
"""

# KEYS[1] key; ARGV[1] expected version ("0" = none)
_DELETE = """
local cur = redis.pcall("HGET", KEYS[1], "version")
if not cur or type(cur) == "table" or cur == "" or cur == ARGV[1] or ARGV[1] == "0" then
  return redis.call("DEL", KEYS[1])
end
return redis.error_reply("failed to delete " .. KEYS[1])
"""


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ComponentError(f"redisHost must be host:port, got {value!r}")
    return (host or "localhost"), int(port)


class RedisStore(StateStore):
    features = ("ETAG", "TRANSACTIONAL", "TTL", "KEYS_LIKE")

    def __init__(self, metadata: Mapping[str, str]) -> None:
        if not metadata.get("redisHost"):
            raise ComponentError("redis store error: redisHost is empty")
        self.host, self.port = _host_port(metadata["redisHost"])
        self.password = metadata.get("redisPassword") or None
        self.username = metadata.get("redisUsername") or None
        self.db = int(metadata.get("redisDB") or 0)
        self.dial_timeout = parse_duration(metadata.get("dialTimeout"), 5.0)
        self.read_timeout = parse_duration(metadata.get("readTimeout"), 3.0)
        self.max_retries = int(metadata.get("redisMaxRetries") or 3)
        # Dapr's state-store defaults: min above max, so go-redis waits the max before every retry (docs §15)
        self.min_retry_interval = _retry_interval(metadata.get("redisMinRetryInterval"), 2.0)
        self.max_retry_interval = _retry_interval(metadata.get("redisMaxRetryInterval"), 0.512)
        self.pool_size = int(metadata.get("poolSize") or 0) or 100
        try:
            self.default_ttl = parse_ttl({"ttlInSeconds": metadata["ttlInSeconds"]}) if metadata.get("ttlInSeconds") else None
        except InvalidRequestOption as exc:
            raise ComponentError(f"redis store error: ttlInSeconds: {exc}") from None
        self.replicas = 0
        self._client: RespClient | None = None

    @property
    def client(self) -> RespClient:
        assert self._client is not None, "init() first"
        return self._client

    async def init(self) -> None:
        self._client = RespClient(
            self.host,
            self.port,
            password=self.password,
            username=self.username,
            db=self.db,
            connect_timeout=self.dial_timeout,
            read_timeout=self.read_timeout,
            # A restarted Redis drops the connection: reconnect instead of failing at once.
            retries=self.max_retries,
            min_backoff=self.min_retry_interval,
            max_backoff=self.max_retry_interval,
            pool_size=min(self.pool_size, 32),
            scripts=(_SET, _DELETE),
        )
        self._set_sha, self._delete_sha = RespClient.sha(_SET), RespClient.sha(_DELETE)
        info = _ok(await self.client.call("INFO", "replication")).decode()
        # Read once, as Dapr does: replicas added later are not waited for.
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        self.replicas = int(fields.get("connected_slaves", "0"))
        log.info("redis store at %s:%d, %d connected replica(s)", self.host, self.port, self.replicas)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    # --- reads ---------------------------------------------------------------------------------------

    async def get(self, key: str, *, consistency: str = "", metadata: dict[str, str] | None = None) -> Item | None:
        try:
            fields = await self.client.call("HGETALL", key)
        except Exception:
            fields = None  # Dapr falls back to a plain GET on any failure of the hash read (docs §15: twice as long)
        if fields is None or isinstance(fields, ReplyError):
            # Not a hash (a plain string written by something else): Dapr returns it without ETag.
            try:
                raw = _ok(await self.client.call("GET", key))
            except Exception as exc:
                raise StoreError(_describe(exc)) from None
            return None if raw is None else Item(raw, "")
        return _hash_item(fields)

    async def bulk_get(self, keys: Sequence[str], *, parallelism: int = 0,
                       metadata: Mapping[str, str] | None = None) -> list[BulkItem]:
        out: list[BulkItem] = []
        try:
            results = await self.client.pipeline([("HGETALL", key) for key in keys])
        except Exception:
            # daprd reads each key on its own, all at once, and reports a failure per key in a 200 (docs §15)
            return list(await asyncio.gather(*(self._read_alone(key) for key in keys)))
        for key, fields in zip(keys, results, strict=False):
            if isinstance(fields, ReplyError):
                try:
                    raw = _ok(await self.client.call("GET", key))
                except Exception as exc:
                    out.append(BulkItem(key, error=_describe(exc)))
                    continue
                out.append(BulkItem(key, None if raw is None else Item(raw, "")))
            else:
                try:
                    out.append(BulkItem(key, _hash_item(fields)))
                except StoreError as exc:
                    out.append(BulkItem(key, error=str(exc)))
        return out

    async def _read_alone(self, key: str) -> BulkItem:
        try:
            return BulkItem(key, await self.get(key))
        except StoreError as exc:
            return BulkItem(key, error=str(exc))

    # --- writes --------------------------------------------------------------------------------------

    def _set_args(self, req: SetRequest, *, in_transaction: bool = False) -> tuple[list[Any], list[Any]]:
        if not in_transaction:  # Dapr's Multi skips the option check and never marks first-write
            check_options(req.concurrency, req.consistency)
        version = "0"  # as Dapr's Set: the options, then the ETag, then the TTL
        if req.has_etag and req.concurrency != LAST_WRITE:
            etag = req.etag or ""
            if not _is_go_int(etag):
                raise ETagInvalid(f"strconv.Atoi: parsing {gojson.go_quote(etag)}: invalid syntax")
            if not -(2**63) <= int(etag) < 2**63:
                raise ETagInvalid(f"strconv.Atoi: parsing {gojson.go_quote(etag)}: value out of range")
            version = str(int(etag))
        try:
            ttl = parse_ttl(req.metadata)
        except InvalidRequestOption as exc:
            raise InvalidRequestOption(f"failed to parse ttl from metadata: {exc}") from None
        if ttl is None:
            ttl = self.default_ttl
        data = req.value if isinstance(req.value, bytes) else gojson.dumps_jsoniter(req.value)
        first_write = "1" if req.concurrency == FIRST_WRITE and not in_transaction else "0"
        return [req.key], [version, data, first_write, "" if ttl is None else str(ttl)]

    async def set(self, req: SetRequest) -> None:
        keys, args = self._set_args(req)
        write = ("EVALSHA", self._set_sha, 1, *keys, *args)
        strong = req.consistency == STRONG and self.replicas > 0
        try:
            if strong:
                # WAIT counts only this connection's writes, so both go down one connection of their own.
                reply, waited = await self.client.exclusive([write, ("WAIT", self.replicas, 1000)])
            else:
                reply = await self._evalsha(write, _SET)
        except Exception as exc:
            # Dapr wraps any failure of a save with an ETag as an ETag error: a 409 while Redis is away (docs §15)
            if req.has_etag:
                raise ETagMismatch(_describe(exc)) from None
            raise StoreError(f"failed to set key {req.key}: {_describe(exc)}") from None
        if isinstance(reply, ReplyError):
            if req.has_etag:
                raise ETagMismatch(str(reply)) from None
            raise StoreError(f"failed to set key {req.key}: {reply}") from None
        if strong and isinstance(waited, ReplyError):
            # Dapr does not look at how many replicas acknowledged; only a failed command errors.
            raise StoreError(f"redis waiting for {self.replicas} replicas to acknowledge write, err: {waited}")

    async def _evalsha(self, command: tuple[Any, ...], script: str) -> Any:
        reply = await self.client.call(*command)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Someone ran SCRIPT FLUSH: send the source once, which caches it again.
            reply = await self.client.call("EVAL", script, *command[2:])
        return reply

    def _delete_args(self, req: DeleteRequest, *, in_transaction: bool = False) -> tuple[list[Any], list[Any]]:
        if not in_transaction:
            check_options(req.concurrency, req.consistency)
        return [req.key], [req.etag if req.has_etag else "0"]

    async def delete(self, req: DeleteRequest) -> None:
        keys, args = self._delete_args(req)
        try:
            reply = await self._evalsha(("EVALSHA", self._delete_sha, 1, *keys, *args), _DELETE)
        except Exception as exc:
            reply = exc
        if isinstance(reply, Exception):
            # Dapr reports every error of the delete script as an ETag mismatch.
            raise ETagMismatch(_describe(reply)) from None

    async def transact(self, ops: Sequence[Operation], metadata: dict[str, str]) -> None:
        # Argument errors (bad option, bad etag) surface before anything is sent, like Dapr's Go code.
        commands = []
        for op in ops:
            script, (keys, args) = (
                (_SET, self._set_args(op, in_transaction=True))
                if isinstance(op, SetRequest)
                else (_DELETE, self._delete_args(op, in_transaction=True))
            )
            # EVAL with the source: inside MULTI a missing script would only show up after EXEC.
            commands.append(("EVAL", script, len(keys), *keys, *args))
        try:
            results = await self.client.transaction(commands)
        except Exception as exc:
            raise StoreError(_describe(exc)) from None
        if isinstance(results, ReplyError):
            raise StoreError(str(results))
        failures = [r for r in results if isinstance(r, ReplyError)]
        if failures:
            # MULTI/EXEC has no rollback: the other operations were applied.
            raise StoreError("; ".join(str(f) for f in failures))


def _retry_interval(value: str | None, default: float) -> float:
    """A retry interval from the component: a Go duration, or ``-1`` for none (as go-redis reads -1)."""
    return 0.0 if value is not None and value.strip() == "-1" else parse_duration(value, default)


def _ok(reply: Any) -> Any:
    if isinstance(reply, ReplyError):
        raise reply
    return reply


def _hash_item(reply: list[bytes]) -> Item | None:
    if not reply:
        return None
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    if b"data" not in fields or b"version" not in fields:
        raise StoreError("required hash field 'data' or 'version' was not found")
    return Item(fields[b"data"], fields[b"version"].decode())


def _is_go_int(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()


def _describe(exc: Exception) -> str:
    text = str(exc)
    return text or type(exc).__name__
