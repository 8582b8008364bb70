"""``state.redis``: a real redis-server, laid out exactly like Dapr's ``state.redis`` (hash mode).

Each key is a hash ``appid||key -> {data, version[, first-write]}``. Writes run as Lua scripts so the
version check and the write are one atomic step; the scripts are loaded once and called by SHA.
The ETag is the integer ``version``. Dapr's quirks are kept on purpose because learners meet them on
a real sidecar too: an ETag on a missing key creates it, last-write ignores the ETag, a key once
written with first-write refuses later writes without an ETag, and ``consistency=strong`` sends
``WAIT <replicas> 1000`` whose answer is not checked. Transactions are MULTI/EXEC, not atomic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from statelab import gojson
from statelab.components import parse_duration
from statelab.errors import ComponentError, ETagInvalid, ETagMismatch, InvalidRequestOption, StoreError
from statelab.stores.base import (
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

    def __init__(self, metadata: dict[str, str]) -> None:
        if not metadata.get("redisHost"):
            raise ComponentError("redis store error: redisHost is empty")
        self.host, self.port = _host_port(metadata["redisHost"])
        self.password = metadata.get("redisPassword") or None
        self.username = metadata.get("redisUsername") or None
        self.db = int(metadata.get("redisDB") or 0)
        self.dial_timeout = parse_duration(metadata.get("dialTimeout"), 5.0)
        self.read_timeout = parse_duration(metadata.get("readTimeout"), 3.0)
        self.max_retries = int(metadata.get("redisMaxRetries") or 3)
        self.pool_size = int(metadata.get("poolSize") or 0) or 100
        try:
            self.default_ttl = parse_ttl({"ttlInSeconds": metadata["ttlInSeconds"]}) if metadata.get("ttlInSeconds") else None
        except InvalidRequestOption as exc:
            raise ComponentError(f"redis store error: ttlInSeconds: {exc}") from None
        self.replicas = 0
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None, "init() first"
        return self._client

    async def init(self) -> None:
        self._client = aioredis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.dial_timeout,
            socket_timeout=self.read_timeout,
            max_connections=self.pool_size,
            # A restarted Redis leaves dead pooled connections: reconnect instead of failing once.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.008), self.max_retries, (RedisConnectionError,)),
            health_check_interval=0,
        )
        self._set = self.client.register_script(_SET)
        self._delete = self.client.register_script(_DELETE)
        info = await self.client.info("replication")
        # Read once, as Dapr does: replicas added later are not waited for.
        self.replicas = int(info.get("connected_slaves", 0))
        await self.client.script_load(_SET)
        await self.client.script_load(_DELETE)
        log.info("redis store at %s:%d, %d connected replica(s)", self.host, self.port, self.replicas)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def ping(self) -> None:
        await self.client.ping()

    # --- reads ---------------------------------------------------------------------------------------

    async def get(self, key: str, *, consistency: str = "", metadata: dict[str, str] | None = None) -> Item | None:
        try:
            try:
                fields = await self.client.hgetall(key)
            except ResponseError:
                # Not a hash (a plain string written by something else): Dapr returns it without ETag.
                raw = await self.client.get(key)
                return None if raw is None else Item(raw, "")
        except Exception as exc:
            raise StoreError(_describe(exc)) from None
        return _hash_item(fields)

    async def bulk_get(self, keys: Sequence[str], *, parallelism: int = 0, metadata=None) -> list[BulkItem]:
        out: list[BulkItem] = []
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            try:
                results = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                raise StoreError(_describe(exc)) from None
        for key, fields in zip(keys, results, strict=False):
            if isinstance(fields, Exception):
                if isinstance(fields, ResponseError):
                    try:
                        raw = await self.client.get(key)
                    except Exception as exc:
                        out.append(BulkItem(key, error=_describe(exc)))
                        continue
                    out.append(BulkItem(key, None if raw is None else Item(raw, "")))
                else:
                    out.append(BulkItem(key, error=str(fields)))
            else:
                try:
                    out.append(BulkItem(key, _hash_item(fields)))
                except StoreError as exc:
                    out.append(BulkItem(key, error=str(exc)))
        return out

    # --- writes --------------------------------------------------------------------------------------

    def _set_args(self, req: SetRequest, *, in_transaction: bool = False) -> tuple[list[Any], list[Any]]:
        if not in_transaction:  # Dapr's Multi skips the option check and never marks first-write
            check_options(req.concurrency, req.consistency)
        try:
            ttl = parse_ttl(req.metadata)
        except InvalidRequestOption as exc:
            raise InvalidRequestOption(f"failed to parse ttl from metadata: {exc}") from None
        if ttl is None:
            ttl = self.default_ttl
        version = "0"
        if req.has_etag and req.concurrency != LAST_WRITE:
            etag = req.etag or ""
            if not _is_go_int(etag):
                raise ETagInvalid(f'strconv.Atoi: parsing "{etag}": invalid syntax')
            if not -(2**63) <= int(etag) < 2**63:
                raise ETagInvalid(f'strconv.Atoi: parsing "{etag}": value out of range')
            version = str(int(etag))
        data = req.value if isinstance(req.value, bytes) else gojson.dumps_jsoniter(req.value)
        first_write = "1" if req.concurrency == FIRST_WRITE and not in_transaction else "0"
        return [req.key], [version, data, first_write, "" if ttl is None else str(ttl)]

    async def set(self, req: SetRequest) -> None:
        keys, args = self._set_args(req)
        try:
            await self._set(keys=keys, args=args)
        except ResponseError as exc:
            if req.has_etag:
                raise ETagMismatch(str(exc)) from None
            raise StoreError(f"failed to set key {req.key}: {exc}") from None
        except Exception as exc:
            raise StoreError(_describe(exc)) from None
        if req.consistency == STRONG and self.replicas > 0:
            try:
                # Dapr does not look at how many replicas acknowledged; only a failed command errors.
                await self.client.execute_command("WAIT", self.replicas, 1000)
            except Exception as exc:
                raise StoreError(f"redis waiting for {self.replicas} replicas to acknowledge write, err: {exc}") from None

    def _delete_args(self, req: DeleteRequest, *, in_transaction: bool = False) -> tuple[list[Any], list[Any]]:
        if not in_transaction:
            check_options(req.concurrency, req.consistency)
        return [req.key], [req.etag if req.has_etag else "0"]

    async def delete(self, req: DeleteRequest) -> None:
        keys, args = self._delete_args(req)
        try:
            await self._delete(keys=keys, args=args)
        except Exception as exc:
            # Dapr reports every error of the delete script as an ETag mismatch.
            raise ETagMismatch(_describe(exc)) from None

    async def transact(self, ops: Sequence[Operation], metadata: dict[str, str]) -> None:
        # Argument errors (bad option, bad etag) surface before anything is sent, like Dapr's Go code.
        prepared = [
            (self._set, *self._set_args(op, in_transaction=True))
            if isinstance(op, SetRequest)
            else (self._delete, *self._delete_args(op, in_transaction=True))
            for op in ops
        ]
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for script, keys, args in prepared:
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            raise StoreError(_describe(exc)) from None
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            # MULTI/EXEC has no rollback: the other operations were applied.
            raise StoreError("; ".join(str(f) for f in failures))


def _hash_item(fields: dict[bytes, bytes]) -> Item | None:
    if not fields:
        return None
    if b"data" not in fields or b"version" not in fields:
        raise StoreError("required hash field 'data' or 'version' was not found")
    return Item(fields[b"data"], fields[b"version"].decode())


def _is_go_int(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()


def _describe(exc: Exception) -> str:
    text = str(exc)
    return text or type(exc).__name__
