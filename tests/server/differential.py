"""Differential fuzzing: one random request sequence, sent in the same order to two sidecars, answers compared.

The machinery behind ``tests/server/test_differential.py``, in four parts:

* ``generate(seed, ns)``: a reproducible sequence of HTTP requests (``Step``) from a seed. Keys live under
  the namespace ``ns`` so that sequences sharing a store do not meet. A request that reuses an ETag names
  it as ``EtagRef(step, key)``, "the ETag this side read for ``key`` at step ``step``", and each side
  fills in its own: a current or a stale ETag means the same thing on both sides although the values differ.
* ``Client``: one keep-alive HTTP/1.1 connection that sends the path, headers and body exactly as given.
* ``Comparison``: normalises each pair of answers (and, at the end, the two stores' raw contents) and
  lists every difference as a ``Divergence``. What legitimately differs is absorbed here, each rule with
  its reason: random UUID ETags (mapped one-to-one between the sides), the completion order of daprd's
  concurrent multi-item saves in joined error messages, Go's random map order in values daprd's Redis
  store writes, clock seconds in expiry times.
* ``run_sequence``: sends a sequence to both sides, step by step, and returns the divergences.

Nothing here knows which answers are right: daprd is the judge, and the test decides which divergences
are known statelab bugs (``KNOWN_DIVERGENCES`` in the test module).
"""

from __future__ import annotations

import json
import random
import re
import socket
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

STORE_NAME = "statestore"
APP_PREFIX = "myapp||"
STATE = f"/v1.0/state/{STORE_NAME}"
ANSWER_TIMEOUT = 15.0  # seconds; longer is a hang
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CLOCK_SLACK = 3  # seconds two expiry times may differ by: the sides write a few ms apart, rounded to seconds
# Headers not compared by name: the date, the framing (Go sends a body over 4 KiB chunked, statelab with a
# Content-Length: both are HTTP/1.1, and the client sees the same bytes) and Content-Type, compared by value.
IGNORED_HEADERS = {"date", "content-length", "transfer-encoding", "connection", "content-type"}


# --- requests -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtagRef:
    """The ETag this side read for ``key`` at step ``step`` (GET header or bulk item); null if it read none."""

    step: int
    key: str

    def __repr__(self) -> str:
        return f"<etag of {self.key!r} read at step {self.step}>"


@dataclass
class Body:
    """A JSON body with ``EtagRef`` leaves, rendered per side, then shaped by ``style``."""

    template: Any
    style: str = "plain"  # plain | trailing | truncated | spaces | ascii
    garbage: bytes = b""

    def render(self, resolve: Callable[[EtagRef], str | None]) -> bytes:
        text = json.dumps(_fill(self.template, resolve), ensure_ascii=self.style == "ascii").encode()
        if self.style == "trailing":
            return text + self.garbage
        if self.style == "truncated":
            return text[: max(0, len(text) - 1 - len(self.garbage))]
        if self.style == "spaces":
            return b" \n\t" + text + b"\r\n"
        return text

    def __repr__(self) -> str:
        shown = json.dumps(_fill(self.template, lambda ref: f"<etag@{ref.step}>"), ensure_ascii=False)
        return shown + {"plain": "", "ascii": ""}.get(self.style, f" [{self.style} {self.garbage[:40]!r}]")


def _fill(value: Any, resolve: Callable[[EtagRef], str | None]) -> Any:
    if isinstance(value, EtagRef):
        return resolve(value)
    if isinstance(value, list):
        return [_fill(v, resolve) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, resolve) for k, v in value.items()}
    return value


@dataclass
class Step:
    """One request of a sequence. ``reads`` names the keys whose ETags the answer carries (GET, bulk get)."""

    kind: str  # reset | save | get | delete | bulk | transaction | malformed | route | readback | reproducer
    method: str
    target: str  # path and query, exactly as sent
    headers: list[tuple[str, str | EtagRef]] = field(default_factory=list)
    body: bytes | Body = b""
    reads: tuple[str, ...] = ()
    touches: tuple[str, ...] = ()  # every key the request may read or write (for tracing consequences)

    def describe(self) -> str:
        headers = "".join(f" -H '{name}: {value}'" for name, value in self.headers)
        shown = self.body if isinstance(self.body, Body) or len(self.body) < 400 else (
            self.body[:300] + b"...(%d bytes)" % len(self.body))
        body = "" if self.body == b"" else f" -d {shown!r}"
        return f"{self.method} {self.target}{headers}{body}"

    def etag_refs(self) -> list[EtagRef]:
        """Every ETag this request reuses from an earlier answer."""
        found: list[EtagRef] = []

        def walk(value: Any) -> None:
            if isinstance(value, EtagRef):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)

        walk([v for _, v in self.headers])
        walk(self.body.template if isinstance(self.body, Body) else None)
        return found

    def renamed(self, old: str, new: str) -> Step:
        """The same request with namespace ``old`` replaced by ``new`` everywhere (a replay on fresh keys)."""

        def swap(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace(old, new)
            if isinstance(value, bytes):
                return value.replace(old.encode(), new.encode())
            if isinstance(value, EtagRef):
                return EtagRef(value.step, swap(value.key))
            if isinstance(value, list):
                return [swap(v) for v in value]
            if isinstance(value, tuple):
                return tuple(swap(v) for v in value)
            if isinstance(value, dict):
                return {swap(k): swap(v) for k, v in value.items()}
            if isinstance(value, Body):
                return Body(swap(value.template), value.style, value.garbage)
            return value

        return Step(self.kind, self.method, swap(self.target), swap(self.headers), swap(self.body), swap(self.reads),
                    swap(self.touches))


def path_of(key: str) -> str:
    """A key's URL path segment as daprd expects it: everything escaped ('/' as %2F, '+' as %2B)."""
    return f"{STATE}/{quote(key, safe='')}"


# --- the generator ----------------------------------------------------------------------------------------------

# Values: what the stores re-encode differently (number forms, HTML characters, U+2028, map order, unicode).
STRINGS = ["", "v", "<&>", "a\u2028b", "é✓", "😀", 'q"uote', "back\\slash", "tab\t", "null", "1", " "]
NUMBERS = [0, 1, -1, 42, 1.5, 0.1, -0.0, 1e-7, 1e21, 123456789.123456789, 2**53 + 1, 12345678901234567890,
           3.14159265358979, 1e300, -2.5e-5, 100.0]  # fmt: skip
OPTION_VALUES = ["first-write", "last-write", "strong", "eventual", "", "bogus", "FIRST-WRITE"]
TTLS = ["3600", "600", "0", "-1", "-2", "x", "1.5", "", " 60", "2147483647", "2147483648", "9223372036",
        "9223372037", "99999999999", "+3600", "1e3", "1\""]  # fmt: skip
ETAG_LITERALS = ["1", "2", "3", "0", "-1", "9999999", "9223372036854775808", "bad-etag", "é", " 1", "1.0",
                 'W/"1"', "*"]  # fmt: skip
GARBAGE = [b"x", b"]", b"{", b"\xff\xfe", b"[1]", b" trailing", b"\x00", b"}}}"]


class Generator:
    """Draws one sequence's steps from ``rng``; keys are ``ns`` + a short name (see ``pool``)."""

    def __init__(self, rng: random.Random, ns: str) -> None:
        self.rng = rng
        self.ns = ns
        self.pool = [ns + s for s in ("a", "b", "c", "d", "a/b", "a+b", "a b", "é✓<&>")]
        self.odd = [ns + "x||y", ns + "k" * 300, ns + "\u2028"]  # keys of failing items (some not failing)
        self.weights = [8, 8, 6, 3, 2, 2, 2, 2]
        self.steps: list[Step] = []
        self.reads: dict[str, list[int]] = {}  # key -> steps that read its ETag

    # -- small draws --

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def key(self) -> str:
        return self.rng.choices(self.pool, self.weights)[0]

    def keys(self, lo: int, hi: int) -> list[str]:
        """Distinct keys: daprd writes a multi-item save concurrently, so duplicates would race there."""
        n = self.rng.randint(lo, hi)
        out: list[str] = []
        while len(out) < n:
            k = self.key()
            if k not in out:
                out.append(k)
        return out

    def odd_key(self) -> Any:
        return self.rng.choice(["", "||", 7, None, ["k"], *self.odd])

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth < 2 and r < 0.25:
            names = self.rng.sample(["b", "a", "z", "é", "<k>", "10", "1", "A", ""], self.rng.randint(0, 4))
            return {n: self.value(depth + 1) for n in names}
        if depth < 2 and r < 0.35:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        if r < 0.6:
            return self.rng.choice(STRINGS)
        if r < 0.9:
            return self.rng.choice(NUMBERS)
        return self.rng.choice([None, True, False])

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def etag(self, key: Any, *, typed: bool = True) -> Any:
        """An ETag for ``key`` of any shape: a ref to one this side read (current or stale), or a literal."""
        r = self.rng.random()
        seen = self.reads.get(key, []) if isinstance(key, str) else []
        if r < 0.35 and seen:
            return EtagRef(seen[-1], key)  # the latest read: current unless written since
        if r < 0.45 and seen:
            return EtagRef(self.rng.choice(seen), key)  # maybe stale
        if r < 0.50 and self.reads:
            other = self.rng.choice(sorted(self.reads))
            return EtagRef(self.rng.choice(self.reads[other]), other)  # another key's
        if r < 0.58:
            return ""
        if r < 0.62:
            return self.uuid()  # well-formed, matches nothing
        if r < 0.67 and typed:
            return self.rng.choice([1, 0, True, {}, ["1"]])  # not a string: 400
        return self.rng.choice(ETAG_LITERALS)

    def metadata(self) -> Any:
        r = self.rng.random()
        if r < 0.55:
            return None
        if r < 0.8:
            return {"ttlInSeconds": self.rng.choice(TTLS)}
        if r < 0.9:
            return {self.rng.choice(["contentType", "partitionKey", "TTLINSECONDS", "x"]):
                    self.rng.choice(["application/json", "text/plain", "p", "3600", ""])}  # fmt: skip
        return self.rng.choice([{"ttlInSeconds": 3600}, "3600", [], {"ttlInSeconds": None}])  # wrong types

    def options(self) -> Any:
        r = self.rng.random()
        if r < 0.5:
            return None
        out = {}
        if self.chance(0.7):
            out["concurrency"] = self.rng.choice(OPTION_VALUES[:2] * 3 + OPTION_VALUES)
        if self.chance(0.5):
            out["consistency"] = self.rng.choice(OPTION_VALUES[2:4] * 3 + OPTION_VALUES)
        if r > 0.95:
            return self.rng.choice(["strong", 1, {"concurrency": 1}])
        return out

    def item(self, key: Any, *, absent_key: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {} if absent_key else {"key": key}
        if self.chance(0.92):
            item["value"] = self.value()
        if self.chance(0.55):
            item["etag"] = self.etag(key)
        if (meta := self.metadata()) is not None:
            item["metadata"] = meta
        if (opts := self.options()) is not None:
            item["options"] = opts
        if self.chance(0.05):
            item["contentType"] = self.rng.choice(["application/json", "text/plain", 5])
        if self.chance(0.05):  # Go matches field names case-insensitively
            item = {(k.upper() if self.chance(0.5) else k.capitalize()): v for k, v in item.items()}
        return item

    def query(self, names: list[str]) -> str:
        pairs = []
        for name in names:
            if self.chance(0.2):
                value = {"consistency": OPTION_VALUES, "concurrency": OPTION_VALUES,
                         "metadata.ttlInSeconds": TTLS, "metadata.contentType": ["application/json", "text/plain"],
                         "metadata.partitionKey": ["p"]}[name]  # fmt: skip
                pairs.append(f"{name}={quote(self.rng.choice(value), safe='')}")
        return "?" + "&".join(pairs) if pairs else ""

    def body_style(self) -> tuple[str, bytes]:
        r = self.rng.random()
        style = "plain" if r < 0.9 else self.rng.choice(["trailing", "truncated", "spaces", "ascii"])
        return style, self.rng.choice(GARBAGE)

    def content_type(self) -> list[tuple[str, str | EtagRef]]:
        r = self.rng.random()
        if r < 0.7:
            return [("Content-Type", "application/json")]
        if r < 0.85:
            return []
        return [("Content-Type", self.rng.choice(["text/plain", "application/x-www-form-urlencoded", "bogus"]))]

    # -- steps --

    def add(self, step: Step) -> None:
        # Over-inclusive on purpose ("n1-a" is inside "n1-a/b"): used to trace consequences of a divergence.
        text = step.describe() + unquote_plus(step.target) + unquote(step.target)
        if isinstance(step.body, bytes):
            text += step.body[:10000].decode("utf-8", "replace")
        step.touches = tuple(k for k in self.pool + self.odd if k in text or quote(k, safe="") in text)
        if step.kind in ("save", "transaction", "malformed", "reset", "bulk"):
            step.touches += ("",)  # an item without a key is stored under the bare app prefix
        for key in step.reads:
            self.reads.setdefault(key, []).append(len(self.steps))
        self.steps.append(step)

    def save(self) -> None:
        n = 1 if self.chance(0.6) else self.rng.randint(2, 3)
        items: list[Any] = [self.item(k) for k in self.keys(n, n)]
        if self.chance(0.08):  # a failing item among good ones: no key, a bad key, a bad type
            bad = self.rng.choice(["nokey", "oddkey", "notobject"])
            spoiled: Any = self.item(None, absent_key=True) if bad == "nokey" else (
                self.item(self.odd_key()) if bad == "oddkey" else self.rng.choice([1, "x", None, []]))
            items.insert(self.rng.randrange(len(items) + 1), spoiled)
        style, garbage = self.body_style()
        query = self.query(["metadata.ttlInSeconds", "metadata.contentType", "consistency"])
        path = STATE + ("/" if self.chance(0.04) else "")  # a trailing slash is stripped
        headers = self.content_type()
        if self.chance(0.05):
            etag = self.etag(items[0].get("key") if isinstance(items[0], dict) else "", typed=False)
            if isinstance(etag, EtagRef) or etag.isascii():
                headers.append(("If-Match", etag))
        method = "POST" if self.chance(0.8) else "PUT"
        self.add(Step("save", method, path + query, headers, Body(items, style, garbage)))

    def read_modify_write(self) -> None:
        """GET a key, then write it with the ETag just read: the current-ETag paths, on either route."""
        key = self.key()
        self.add(Step("get", "GET", path_of(key), reads=(key,)))
        ref = EtagRef(len(self.steps) - 1, key)
        r = self.rng.random()
        if r < 0.5:
            item = self.item(key)
            item["etag"] = ref
            self.add(Step("save", "POST", STATE, [("Content-Type", "application/json")], Body([item])))
        elif r < 0.75:
            self.add(Step("delete", "DELETE", path_of(key) + self.query(["concurrency", "consistency"]),
                          [("If-Match", ref)]))  # fmt: skip
        else:
            # No second spelling of "etag": daprd decodes a transaction request with mapstructure, which picks
            # one of two case-variants of a field in Go's random map order.
            request = {k: v for k, v in self.item(key).items() if k.lower() != "etag"}
            op = {"operation": self.rng.choice(["upsert", "delete"]), "request": {**request, "etag": ref}}
            self.add(Step("transaction", "POST", f"{STATE}/transaction", [], Body({"operations": [op]})))

    def get(self) -> None:
        key = self.key()
        query = self.query(["consistency", "metadata.ttlInSeconds", "metadata.contentType", "metadata.partitionKey"])
        self.add(Step("get", "GET", path_of(key) + query, reads=(key,)))

    def delete(self) -> None:
        key = self.key()
        headers: list[tuple[str, str | EtagRef]] = []
        if self.chance(0.6):
            etag = self.etag(key, typed=False)
            if isinstance(etag, EtagRef) or isinstance(etag, str) and etag.isascii():  # header-safe
                headers.append(("If-Match", etag))
        query = self.query(["concurrency", "consistency", "metadata.ttlInSeconds"])
        self.add(Step("delete", "DELETE", path_of(key) + query, headers))

    def bulk(self) -> None:
        keys: list[Any] = [self.key() for _ in range(self.rng.randint(0, 5))]  # duplicates allowed
        if self.chance(0.1):
            keys.insert(self.rng.randrange(len(keys) + 1), self.rng.choice([self.ns + "missing", "", self.ns + "a||b"]))
        body: dict[str, Any] = {"keys": keys}
        if self.chance(0.3):
            body["parallelism"] = self.rng.choice([0, 1, 2, 10, -1, "3", None])
        if self.chance(0.2):
            body["metadata"] = self.rng.choice([{}, {"x": "y"}, {"ttlInSeconds": "5"}, {"n": 1}, "m"])
        if self.chance(0.04):
            body = self.rng.choice([{"keys": "k"}, {"keys": [1]}, {}, {"keys": None}])
        style, garbage = self.body_style()
        reads = tuple(k for k in dict.fromkeys(keys) if isinstance(k, str))
        query = self.query(["metadata.ttlInSeconds", "metadata.contentType"])
        method = "POST" if self.chance(0.85) else "PUT"
        self.add(Step("bulk", method, f"{STATE}/bulk{query}", self.content_type(), Body(body, style, garbage), reads))

    def transaction(self) -> None:
        ops: list[Any] = []
        for _ in range(self.rng.randint(0, 4)):
            r = self.rng.random()
            operation: Any = "upsert" if r < 0.55 else "delete" if r < 0.9 else self.rng.choice(
                ["get", "UPSERT", "", 1, None])
            key = self.key() if self.chance(0.93) else self.odd_key()
            request = self.item(key, absent_key=self.chance(0.02))
            if operation == "delete":
                request.pop("value", None)
            ops.append({"operation": operation, "request": request})
        body: Any = {"operations": ops}
        if self.chance(0.2):
            body["metadata"] = self.rng.choice([{"partitionKey": "p"}, {"ttlInSeconds": "3600"}, {"n": 2}])
        if self.chance(0.04):
            body = self.rng.choice([{"operations": {}}, {"operations": [1]}, {"operations": [{"request": 1}]}, []])
        style, garbage = self.body_style()
        query = self.query(["metadata.ttlInSeconds", "metadata.partitionKey"])
        method = "POST" if self.chance(0.85) else "PUT"
        self.add(Step("transaction", method, f"{STATE}/transaction{query}", self.content_type(),
                      Body(body, style, garbage)))  # fmt: skip

    def malformed(self) -> None:
        route = self.rng.choice(["", "/bulk", "/transaction"])
        key = self.key()
        bodies = [b"", b"not json", b"{", b"[", b"null", b"[]", b"{}", b"true", b"\"str\"", b"[1,2]",
                  b'{"key":"' + key.encode() + b'"}', b'[{"key":"' + key.encode() + b'","value":1}]garbage',
                  b'[{"key":"' + key.encode() + b'","value":1}] [2]', b'[{"key":1}]', b'[{"key":"k","etag":1}]',
                  b'[{"key":"k","metadata":{"ttlInSeconds":1}}]', b'{"keys":"x"}', b'{"operations":"x"}',
                  b'\xef\xbb\xbf[]', b'[{"key":"' + key.encode() + b'","value":"\xff"}]',
                  b"[" * 600 + b"]" * 600,
                  b'[{"key":"' + key.encode() + b'","value":' + b"[" * 520 + b"]" * 520 + b"}]",
                  b'[{"key":"' + key.encode() + b'","value":1e400}]', b'[{"key":"' + key.encode() + b'","value":01}]',
                  b'{"keys":["' + key.encode() + b'"],"keys":[]}']  # fmt: skip
        body = self.rng.choice(bodies)
        if self.chance(0.03):  # huge-ish: a 1 MiB value, or a body past daprd's 4 MiB limit
            size = self.rng.choice([1 << 20, 4 * (1 << 20) + 10])
            body = b'[{"key":"' + key.encode() + b'","value":"' + b"x" * size + b'"}]'
            route = ""
        reads = (key,) if route == "/bulk" else ()
        self.add(Step("malformed", self.rng.choice(["POST", "PUT"]), STATE + route, self.content_type(), body, reads))

    def route(self) -> None:
        """Paths and methods off the beaten track: %2F, '+', '||', unknown stores, slashes, unmatched methods."""
        key = self.key()
        raw = quote(key, safe="/+")  # '/' and '+' left raw
        choices = [
            ("GET", f"{STATE}/{raw}"),  # a raw '/' is another route (404); a raw '+' decodes to a space
            ("DELETE", f"{STATE}/{raw}"),
            ("GET", f"{STATE}/{quote(self.ns)}x%7C%7Cy"),
            ("DELETE", f"{STATE}/{quote(self.ns)}x||y"),
            ("GET", f"/v1.0/state/nostore/{quote(key, safe='')}"),
            ("DELETE", f"/v1.0/state/STATESTORE/{quote(key, safe='')}"),
            ("GET", f"/v1.0/state/%73tatestore/{quote(key, safe='')}"),
            ("POST", "/v1.0/state/nostore"),
            ("POST", "/v1.0/state/nostore/bulk"),
            ("POST", "/v1.0/state/nostore/transaction"),
            ("GET", f"{path_of(key)}/"),  # trailing slash
            ("GET", f"/v1.0//state//{STORE_NAME}/{quote(key, safe='')}"),  # doubled slashes
            ("GET", STATE),  # no key
            ("GET", f"{STATE}/"),
            ("POST", path_of(key)),  # no POST on a key
            ("PUT", path_of(key)),
            ("PATCH", path_of(key)),
            ("HEAD", path_of(key)),
            ("OPTIONS", STATE),
            ("DELETE", STATE),
            ("GET", f"{STATE}/bulk"),  # a plain get of the key "bulk"
            ("DELETE", f"{STATE}/transaction"),  # a plain delete of the key "transaction"
            ("GET", f"{STATE}/transaction"),
            ("GET", "/v1.0/state"),
            ("GET", "/v1.0/healthz"),
            ("GET", "/v1.0/healthz?appid=other"),
            ("GET", "/v1.0/healthz/outbound"),
            ("GET", f"{STATE}/{quote(key, safe='')}%"),  # a bad escape
            ("GET", f"{STATE}/{quote(key, safe='')}%2"),
            ("GET", f"/v1.0/state/{STORE_NAME}%2Fx/{quote(key, safe='')}"),
        ]
        method, target = self.rng.choice(choices)
        body: bytes | Body = b""
        if method in ("POST", "PUT") and self.chance(0.7):
            body = Body([self.item(key)]) if "bulk" not in target else Body({"keys": [key]})
        self.add(Step("route", method, target, self.content_type() if body else [], body))

    def readback(self) -> None:
        """At the end of every sequence: read every key of the pool, one by one and in bulk."""
        for key in self.pool:
            self.add(Step("readback", "GET", path_of(key), reads=(key,)))
        self.add(Step("readback", "POST", f"{STATE}/bulk", [], Body({"keys": self.pool}), tuple(self.pool)))


def generate(seed: int, ns: str, length: int) -> list[Step]:
    """The sequence for ``seed``: a reset, random steps up to ``length``, then the read-back (9 steps).

    The same seed gives the same requests under any namespace (only the key names change)."""
    gen = Generator(random.Random(seed), ns)
    # The one key outside every namespace is "<appid>||", which a transaction operation without a key
    # writes: delete it the same way first, so that no sequence starts with what an earlier one left.
    reset = {"operations": [{"operation": "delete", "request": {}}]}
    gen.add(Step("reset", "POST", f"{STATE}/transaction", [], Body(reset)))
    kinds = [gen.save, gen.read_modify_write, gen.get, gen.delete, gen.bulk, gen.transaction, gen.malformed,
             gen.route]  # fmt: skip
    weights = [28, 12, 12, 10, 9, 14, 7, 8]
    while len(gen.steps) < length:
        gen.rng.choices(kinds, weights)[0]()
    gen.readback()
    return gen.steps


# --- the wire -----------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in the order received
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def is_json(self) -> bool:
        return self.header("content-type") == "application/json"


class Client:
    """One keep-alive connection that sends requests byte for byte as given and reads framed answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"] + [f"{n}: {v}" for n, v in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body
        for attempt in (1, 2):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT)
            assert self.sock is not None
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                if not fresh and attempt == 1:  # the server had closed an idle keep-alive connection
                    self.close()
                    continue
                # An answer sent before the whole body was read (a body over the limit): read it all the same.
            try:
                answer, closed = self._read(head=method == "HEAD")
            except ConnectionError:
                self.close()
                if not fresh and attempt == 1 and not self.buf:
                    continue
                raise
            if closed:
                self.close()
            return answer
        raise AssertionError("unreachable")

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the sidecar closed the connection before a full answer")
        self.buf += chunk

    def _read(self, *, head: bool) -> tuple[Answer, bool]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        found = dict(headers)
        closed = found.get("connection", "").lower() == "close"
        if not head and status not in (204, 304) and found.get("transfer-encoding", "").lower() == "chunked":
            return Answer(status, headers, self._chunks()), closed
        if head or status in (204, 304):
            length = 0
        elif "content-length" in found:
            length = int(found["content-length"])
        else:  # no length: the body runs to the close
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
            length, closed = len(self.buf), True
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(status, headers, body), closed

    def _chunks(self) -> bytes:
        """A chunked body (Go's net/http sends one when the handler writes more than its 4 KiB buffer)."""
        parts: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:  # the last chunk: trailer lines, then a blank line
                while True:
                    while b"\r\n" not in self.buf:
                        self._fill()
                    line, _, self.buf = self.buf.partition(b"\r\n")
                    if not line:
                        return b"".join(parts)
            while len(self.buf) < size + 2:
                self._fill()
            parts.append(self.buf[:size])
            self.buf = self.buf[size + 2 :]


# --- JSON that keeps its spelling ------------------------------------------------------------------------------


class _RawJSON:
    """A JSON parser that keeps every number and string token as written, to compare encodings exactly."""

    WS = b" \t\r\n"

    def __init__(self, text: bytes) -> None:
        self.s, self.i = text, 0

    def parse(self) -> Any:
        value = self.value()
        self.skip()
        if self.i != len(self.s):
            raise ValueError("trailing data")
        return value

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in self.WS:
            self.i += 1

    def value(self) -> Any:
        self.skip()
        c = self.s[self.i : self.i + 1]
        if c == b"{":
            self.i += 1
            members: list[tuple[bytes, Any]] = []
            self.skip()
            if self.s[self.i : self.i + 1] == b"}":
                self.i += 1
                return ("obj", members)
            while True:
                self.skip()
                name = self.string()
                self.skip()
                if self.s[self.i : self.i + 1] != b":":
                    raise ValueError("expected ':'")
                self.i += 1
                members.append((name, self.value()))
                self.skip()
                c = self.s[self.i : self.i + 1]
                self.i += 1
                if c == b"}":
                    return ("obj", members)
                if c != b",":
                    raise ValueError("expected ',' or '}'")
        if c == b"[":
            self.i += 1
            items: list[Any] = []
            self.skip()
            if self.s[self.i : self.i + 1] == b"]":
                self.i += 1
                return ("arr", items)
            while True:
                items.append(self.value())
                self.skip()
                c = self.s[self.i : self.i + 1]
                self.i += 1
                if c == b"]":
                    return ("arr", items)
                if c != b",":
                    raise ValueError("expected ',' or ']'")
        if c == b'"':
            return ("str", self.string())
        m = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null").match(self.s, self.i)
        if not m:
            raise ValueError(f"unexpected {c!r}")
        self.i = m.end()
        return ("lit", m.group())

    def string(self) -> bytes:
        m = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S).match(self.s, self.i)
        if not m:
            raise ValueError("expected a string")
        self.i = m.end()
        return m.group()


@contextmanager
def _deep_recursion(limit: int = 20000) -> Iterator[None]:
    """Values nested a few hundred levels deep (Go takes up to 10000) need more than Python's default 1000 frames."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def raw_json(text: bytes) -> Any:
    with _deep_recursion():
        return _RawJSON(text).parse()


def spelled(tree: Any, *, sort_objects: bool) -> str:
    """A parse tree written back compactly, members sorted when ``sort_objects`` (Go's random map order)."""
    with _deep_recursion():
        return _spelled(tree, sort_objects)


def _spelled(tree: Any, sort_objects: bool) -> str:
    kind, content = tree
    if kind == "obj":
        members = [(name, _spelled(v, sort_objects)) for name, v in content]
        if sort_objects:
            members.sort()
        return "{" + ",".join(f"{name.decode()}:{v}" for name, v in members) + "}"
    if kind == "arr":
        return "[" + ",".join([_spelled(v, sort_objects) for v in content]) + "]"
    return content.decode("utf-8", "surrogateescape")


def member(tree: Any, name: str) -> Any:
    """The value of member ``name`` of a parsed object, or None."""
    if tree[0] != "obj":
        return None
    return next((v for n, v in tree[1] if json.loads(n) == name), None)


def stored_value(data: bytes, *, redis: bool) -> str:
    """A stored or returned value in a comparable form: the bytes themselves, except that the order of
    object members is ignored on Redis (daprd's Redis store encodes Go maps in their random order)."""
    if not redis:
        return data.decode("utf-8", "surrogateescape")
    try:
        return spelled(raw_json(data), sort_objects=True)
    except (ValueError, IndexError):
        return data.decode("utf-8", "surrogateescape")


# --- comparing -----------------------------------------------------------------------------------------------------


@dataclass
class Divergence:
    """One difference between the answers (or stores) of the two sides."""

    store: str
    seed: int
    step: int  # index in the sequence; -1 for the end-of-sequence store contents
    request: str  # the request as described by Step.describe, or "store contents"
    kind: str  # the step's kind, or "store"
    where: str  # what differs: status, errorCode, message, header:<name>, body, etag, store:<key>…
    statelab: Any
    daprd: Any
    target: str = ""  # the step's method and path (for matching)
    keys: tuple[str, ...] = ()  # the keys it concerns: a bulk item's or a store record's, else the step's

    def __str__(self) -> str:
        return (f"[{self.store} seed {self.seed} step {self.step}] {self.where} differs for {self.request[:400]}\n"
                f"    daprd:    {self.daprd!r:.1200}\n    statelab: {self.statelab!r:.1200}")  # fmt: skip


def joined_equal(a: str, b: str) -> bool:
    """Equal, or the same errors joined in another order.

    daprd saves the items of a multi-item request in goroutines and joins their errors (``errors.Join``,
    one per line) in the order they finish, which the Go scheduler decides; statelab joins them in request
    order. The message is ``<outer prefix>: <error 1>\\n<error 2>…``: the outer prefix sticks to the first
    line only, so every prefix of the first line that ends in ": " is tried.
    """
    if a == b:
        return True
    la, lb = a.split("\n"), b.split("\n")
    if len(la) != len(lb) or len(la) < 2:
        return False
    cut = 0
    while (cut := la[0].find(": ", cut) + 2) > 1:
        prefix = la[0][:cut]
        if lb[0].startswith(prefix):
            if sorted([la[0][cut:], *la[1:]]) == sorted([lb[0][cut:], *lb[1:]]):
                return True
    return False


ITEM_ETAG_ERROR = re.compile(r"^(.*?(error from state store|invalid etag value))(: .*)?$")


def one_of_several(message: str) -> str:
    """An ETag error of a multi-item save with the item it names cut off.

    When the items' failures mix ETag errors with others, daprd reports one ETag error alone: the handler
    takes the first one (``errors.As``) from the errors its goroutines joined in the order they finished
    (components-contrib ``state/bulk.go`` DoBulkSetDelete), so which item it names is up to the scheduler.
    """
    if "\n" in message:
        return message
    m = ITEM_ETAG_ERROR.match(message)
    return m.group(1) + ": <one of the items>" if m and m.group(3) else message


def _expiry(text: str | None) -> datetime | None:
    if text is None or not RFC3339_SECONDS.match(text):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


def times_close(a: str | None, b: str | None) -> bool:
    """Two RFC 3339 expiry times (whole seconds) that differ by no more than the clock slack."""
    if a is None or b is None:
        return a == b
    ta, tb = _expiry(a), _expiry(b)
    if ta is None or tb is None:
        return a == b
    return abs((ta - tb).total_seconds()) <= CLOCK_SLACK


class Comparison:
    """The state of one side-by-side run: ETags each side read, the ETag mapping, divergences found."""

    def __init__(self, store: str, seed: int) -> None:
        self.store = store
        self.seed = seed
        self.redis = store == "redis"
        self.read: dict[str, dict[tuple[int, str], str]] = {"statelab": {}, "daprd": {}}
        # ETags are random UUIDs on in-memory and sqlite: a one-to-one map between the two sides' values
        # stands in for equality (same write on both sides ⇔ mapped ETags). Redis versions must be equal.
        self.s2d: dict[str, str] = {}
        self.d2s: dict[str, str] = {}
        self.names: dict[str, str] = {}  # each side's ETag value -> "<etag N>", for messages
        self.found: list[Divergence] = []
        self.step = -1
        self.current: Step | None = None

    # -- per side --

    def resolver(self, side: str) -> Callable[[EtagRef], str | None]:
        return lambda ref: self.read[side].get((ref.step, ref.key))

    def render(self, step: Step, side: str) -> tuple[list[tuple[str, str]], bytes]:
        resolve = self.resolver(side)
        headers: list[tuple[str, str]] = []
        for name, value in step.headers:
            text = resolve(value) if isinstance(value, EtagRef) else value
            if text is not None:  # None: this side read no ETag, the header is left out
                headers.append((name, text))
        body = step.body.render(resolve) if isinstance(step.body, Body) else step.body
        return headers, body

    def remember(self, side: str, step: int, key: str, etag: str | None) -> None:
        if etag is not None:
            self.read[side][(step, key)] = etag

    # -- recording differences --

    def differ(self, where: str, statelab: Any, daprd: Any, key: str | None = None) -> None:
        step = self.current
        self.found.append(Divergence(
            self.store, self.seed, self.step, step.describe() if step else "store contents",
            step.kind if step else "store", where, statelab, daprd,
            f"{step.method} {step.target}" if step else "",
            (key,) if key is not None else step.touches if step else (),
        ))  # fmt: skip

    def check(self, where: str, statelab: Any, daprd: Any, key: str | None = None) -> None:
        if statelab != daprd:
            self.differ(where, statelab, daprd, key)

    def etags(self, where: str, statelab: str | None, daprd: str | None, key: str | None = None) -> None:
        """Two ETags for the same thing: both or neither, equal on Redis, mapped one-to-one elsewhere."""
        if statelab is None or daprd is None:
            self.check(f"{where} presence", statelab is not None, daprd is not None, key)
            return
        if self.redis:
            self.check(where, statelab, daprd, key)
            return
        shape = (bool(UUID.fullmatch(statelab)), bool(UUID.fullmatch(daprd)))
        if shape != (True, True):
            self.differ(f"{where} shape", statelab, daprd, key)
            return
        mapped, back = self.s2d.get(statelab), self.d2s.get(daprd)
        if mapped is None and back is None:
            self.s2d[statelab], self.d2s[daprd] = daprd, statelab
            self.names[statelab] = self.names[daprd] = f"<etag {len(self.s2d)}>"
        elif mapped != daprd or back != statelab:
            # One side handed out a new ETag where the other kept the old one (or the reverse).
            self.differ(f"{where} identity", self.names.get(statelab, "<new etag>"),
                        self.names.get(daprd, "<new etag>"), key)  # fmt: skip

    def text(self, side: str, text: str) -> str:
        """A message with each ETag this run has seen replaced by its name, other UUIDs by <uuid>."""
        if not self.redis:
            text = UUID.sub(lambda m: self.names.get(m.group(), "<uuid>"), text)
        return text

    # -- answers --

    def answers(self, step: Step, s: Answer, d: Answer) -> None:
        self.check("status", s.status, d.status)
        self.check("content-type", s.header("content-type"), d.header("content-type"))
        names_s = sorted({n for n, _ in s.headers} - IGNORED_HEADERS)
        names_d = sorted({n for n, _ in d.headers} - IGNORED_HEADERS)
        for name in sorted(set(names_s) ^ set(names_d)):
            self.differ(f"header:{name}", s.header(name), d.header(name))
        for name in sorted(set(names_s) & set(names_d)):
            if name == "etag":
                self.etags("header:etag", s.header(name), d.header(name))
            elif name.startswith("metadata."):
                a, b = s.header(name), d.header(name)
                if not (times_close(a, b) if name == "metadata.ttlexpiretime" else a == b):
                    self.differ(f"header:{name}", a, b)
        for key in step.reads if step.method == "GET" else ():
            self.remember("statelab", self.step, key, s.header("etag"))
            self.remember("daprd", self.step, key, d.header("etag"))
        if s.status != d.status or step.method == "HEAD":
            return
        if s.status >= 400 and s.is_json and d.is_json:
            items = step.body.template if isinstance(step.body, Body) else None
            self.error_bodies(s.body, d.body, several_items=isinstance(items, list) and len(items) > 1)
        elif s.status == 200 and step.method == "GET":
            self.check("body", stored_value(s.body, redis=self.redis), stored_value(d.body, redis=self.redis))
        elif s.status == 200 and step.method in ("POST", "PUT") and s.body and d.body:
            self.bulk(step, s.body, d.body)
        else:
            self.check("body", s.body, d.body)

    def error_bodies(self, s_body: bytes, d_body: bytes, *, several_items: bool = False) -> None:
        try:
            s, d = json.loads(s_body), json.loads(d_body)
        except ValueError:
            self.check("body", s_body, d_body)
            return
        if not (isinstance(s, dict) and isinstance(d, dict)):
            self.check("body", s, d)
            return
        self.check("error fields", sorted(s), sorted(d))
        self.check("errorCode", s.get("errorCode"), d.get("errorCode"))
        sm, dm = self.text("statelab", str(s.get("message"))), self.text("daprd", str(d.get("message")))
        same_text = sm == dm
        if several_items:
            sm, dm = one_of_several(sm), one_of_several(dm)
        if not joined_equal(sm, dm):
            self.differ("message", sm, dm)
        sd = self.text("statelab", json.dumps(s.get("details"), sort_keys=True))
        dd = self.text("daprd", json.dumps(d.get("details"), sort_keys=True))
        self.check("details", sd, dd)
        if same_text and sd == dd and s.get("errorCode") == d.get("errorCode"):
            # The same error: then the bytes must be the same too (field order, Go's escaping of <>&, U+2028).
            self.check("error body bytes", self.text("statelab", s_body.decode("utf-8", "replace")),
                       self.text("daprd", d_body.decode("utf-8", "replace")))  # fmt: skip

    def bulk(self, step: Step, s_body: bytes, d_body: bytes) -> None:
        """Bulk results item by item: keys in order, data, ETags, metadata, per-key errors."""
        self.check("body ends with a newline", s_body.endswith(b"\n"), d_body.endswith(b"\n"))
        try:
            s, d = raw_json(s_body), raw_json(d_body)
        except (ValueError, IndexError):
            self.check("body", s_body, d_body)
            return
        if s[0] != "arr" or d[0] != "arr":
            self.check("body", spelled(s, sort_objects=False), spelled(d, sort_objects=False))
            return
        keys_s = [json.loads(spelled(member(x, "key") or ("lit", b"null"), sort_objects=False)) for x in s[1]]
        keys_d = [json.loads(spelled(member(x, "key") or ("lit", b"null"), sort_objects=False)) for x in d[1]]
        self.check("bulk keys", keys_s, keys_d)
        if keys_s != keys_d:
            return
        for i, (x, y) in enumerate(zip(s[1], d[1], strict=True)):
            key = keys_s[i] if isinstance(keys_s[i], str) else None
            self.check(f"bulk[{i}] fields", [json.loads(n) for n, _ in x[1]], [json.loads(n) for n, _ in y[1]], key)
            for name in ("data", "metadata", "error"):
                a, b = member(x, name), member(y, name)
                if a is None or b is None:
                    continue
                if name == "data":
                    # daprd re-encodes data with Go's encoder: compact, HTML characters escaped.
                    self.check(f"bulk[{i}] data", spelled(a, sort_objects=self.redis),
                               spelled(b, sort_objects=self.redis), key)  # fmt: skip
                elif name == "metadata":
                    ma, mb = json.loads(spelled(a, sort_objects=True)), json.loads(spelled(b, sort_objects=True))
                    ta, tb = ma.pop("ttlExpireTime", None), mb.pop("ttlExpireTime", None)
                    if not times_close(ta, tb) or ma != mb:
                        self.differ(f"bulk[{i}] metadata", a, b, key)
                else:
                    ea = self.text("statelab", json.loads(spelled(a, sort_objects=False)))
                    eb = self.text("daprd", json.loads(spelled(b, sort_objects=False)))
                    self.check(f"bulk[{i}] error", ea, eb, key)
            ea, eb = member(x, "etag"), member(y, "etag")
            ta = json.loads(spelled(ea, sort_objects=False)) if ea else None
            tb = json.loads(spelled(eb, sort_objects=False)) if eb else None
            if ta is not None or tb is not None:
                self.etags(f"bulk[{i}] etag", ta, tb, key)
            if key is not None and key in step.reads:
                self.remember("statelab", self.step, key, ta)
                self.remember("daprd", self.step, key, tb)

    # -- store contents --

    def stores(self, statelab: dict[str, dict[str, Any]], daprd: dict[str, dict[str, Any]]) -> None:
        """The raw records of the two stores (``dump_redis``/``dump_sqlite``), key by key."""
        self.current = None
        self.step = -1
        for key in sorted(set(statelab) | set(daprd)):
            a, b = statelab.get(key), daprd.get(key)
            plain = key[len(APP_PREFIX) :] if key.startswith(APP_PREFIX) else key
            if a is None or b is None:
                self.differ(f"store:{key} presence", a, b, plain)
                continue
            for name in sorted(set(a) | set(b)):
                va, vb = a.get(name), b.get(name)
                if name == "etag":
                    self.etags(f"store:{key} etag", va, vb, plain)
                elif name in ("expires", "update_time"):
                    if (va is None) != (vb is None) or not times_close(va, vb):
                        self.differ(f"store:{key} {name}", va, vb, plain)
                elif name == "ttl":
                    if (va is None) != (vb is None) or va is not None and abs(va - vb) > CLOCK_SLACK:
                        self.differ(f"store:{key} ttl", va, vb, plain)
                else:
                    self.check(f"store:{key} {name}", va, vb, plain)


# --- raw store contents ----------------------------------------------------------------------------------------


def wanted(key: str, ns: str, others: re.Pattern[str]) -> bool:
    """Keys of this sequence's namespace, and the few outside any namespace (e.g. the bare app prefix)."""
    name = key[len(APP_PREFIX) :] if key.startswith(APP_PREFIX) else key
    return name.startswith(ns) or not others.match(name)


def dump_redis(client: Any, keep: Callable[[str], bool]) -> dict[str, dict[str, Any]]:
    """Every kept key: its type, hash fields (``data`` comparable across map orders), TTL in seconds."""
    out: dict[str, dict[str, Any]] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode("utf-8", "surrogateescape")
        if not keep(key):
            continue
        kind = client.type(raw).decode()
        record: dict[str, Any] = {"type": kind}
        if kind == "hash":
            for name, value in client.hgetall(raw).items():
                name = name.decode("utf-8", "surrogateescape")
                record[f"field {name}"] = stored_value(value, redis=True) if name == "data" else value
        elif kind == "string":
            record["value"] = client.get(raw)
        ttl = client.ttl(raw)
        record["ttl"] = None if ttl < 0 else ttl
        out[key] = record
    return out


SQLITE_COLUMNS = ("key", "value", "is_binary", "etag", "expiration_time", "update_time")


def dump_sqlite(path: Path, keep: Callable[[str], bool]) -> dict[str, dict[str, Any]]:
    """Every kept row of the ``state`` table: value text, is_binary, ETag, expiry and update time (present?)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(f"SELECT {', '.join(SQLITE_COLUMNS)} FROM state").fetchall()
    finally:
        conn.close()
    out: dict[str, dict[str, Any]] = {}
    for key, value, is_binary, etag, expires, updated in rows:
        if keep(key):
            out[key] = {
                "value": value,
                "is_binary": is_binary,
                "etag": etag,
                "expires": _sqlite_time(expires),
                "update_time": None if updated is None else "set",  # when, not compared: the clocks differ
            }
    return out


def _sqlite_time(value: Any) -> str | None:
    """An expiration_time as RFC 3339 seconds (both ``2026-01-02 03:04:05`` and Go's longer forms)."""
    if value is None:
        return None
    text = str(value).replace("T", " ")
    m = re.match(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)", text)
    return f"{m.group(1)}T{m.group(2)}Z" if m else text


def sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("PRAGMA table_info(state)").fetchall()
    finally:
        conn.close()


# --- one sequence on both sides -----------------------------------------------------------------------------------


@dataclass
class Sides:
    """The two sidecars of one store, and how to read each one's store directly."""

    store: str
    statelab: Client
    daprd: Client
    dump: Callable[[str, Callable[[str], bool]], dict[str, dict[str, Any]]] | None = None  # (side, keep) -> records


def run_sequence(sides: Sides, steps: list[Step], seed: int, ns: str, others: re.Pattern[str], *,
                 ids: list[int] | None = None, stop: Callable[[Comparison], bool] | None = None,
                 compare_stores: bool = True) -> tuple[Comparison, int]:  # fmt: skip
    """Send every step to statelab, then to daprd; compare the answers, then the stores.

    ``ids`` number the steps for ``EtagRef`` (default: their positions; a shrunk sequence keeps the original
    numbers). ``stop(comparison)`` is asked after each step: True ends the sequence there (the stores are not
    compared then). Returns the comparison (its ``found`` divergences) and the requests sent to each side.
    """
    comp = Comparison(sides.store, seed)
    sent = 0
    for i, step in zip(ids if ids is not None else range(len(steps)), steps, strict=True):
        comp.step, comp.current = i, step
        answers = []
        for name, client in (("statelab", sides.statelab), ("daprd", sides.daprd)):
            headers, body = comp.render(step, name)
            try:
                answers.append(client.request(step.method, step.target, headers, body))
            except (OSError, ConnectionError) as exc:
                client.close()
                answers.append(Answer(-1, [], f"no answer: {exc!r}".encode()))
        sent += 1
        comp.answers(step, answers[0], answers[1])
        if stop is not None and stop(comp):
            return comp, sent
    if compare_stores and sides.dump is not None:
        keep = lambda key: wanted(key, ns, others)  # noqa: E731
        comp.stores(sides.dump("statelab", keep), sides.dump("daprd", keep))
    return comp, sent


def shrink(sides: Sides, steps: list[Step], ns: str, fresh_ns: Callable[[], str], others: re.Pattern[str],
           still: Callable[[list[Divergence], list[Step], list[int]], bool],
           budget: float = 20.0) -> tuple[list[int], list[Step]]:  # fmt: skip
    """The fewest steps (greedy: chunks, then one by one) whose replay on fresh keys still shows the
    divergence ``still`` recognises. Returns the kept steps' original numbers and the steps themselves."""
    import time

    deadline = time.monotonic() + budget
    ids = list(range(len(steps)))

    def fails(candidate: list[int]) -> bool:
        new = fresh_ns()
        replay = [steps[i].renamed(ns, new) for i in candidate]
        comp, _ = run_sequence(sides, replay, -1, new, others, ids=candidate)
        return still(comp.found, replay, candidate)

    chunk = max(1, len(ids) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        while i < len(ids) and time.monotonic() < deadline:
            candidate = ids[:i] + ids[i + chunk :]
            if candidate and fails(candidate):
                ids = candidate
            else:
                i += chunk
        chunk //= 2
    return ids, [steps[i] for i in ids]
