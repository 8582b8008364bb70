"""Hostile input on every route of every store: the sidecar answers as daprd does and loses nothing.

Two fuzzers drive the real sidecar of each store (the ``api`` fixture: in-memory, sqlite, redis):

* hypothesis strategies written here, sent over a raw socket so that paths, query strings, headers and
  bodies can be anything well-framed HTTP/1.1 carries: unicode keys, ``%2F``, ``||``, empty and very
  long keys, ETags of every shape, wrong JSON types, truncated and trailing-garbage bodies, deep nesting,
  odd methods, path tricks (``//``, ``..``, trailing ``/``), chunked bodies;
* schemathesis, generating valid and invalid requests from ``docs/openapi.yaml`` and checking the answers
  against it (status codes, content types, response schemas).

Invariants, checked on every answer:

* every 4xx/5xx carries a Dapr JSON error body (``errorCode`` ``ERR_…`` and ``message``), except 401,
  which is Go's ``text/plain`` ``invalid api token`` as in daprd;
* no answer ever contains traceback text, and the sidecar logs none;
* the only 5xx answers are the documented ones (``docs/dapr-behaviour.md`` §2.1, §8, §9.1): a bad
  concurrency/consistency option or ``ttlInSeconds``, Redis first-write, transaction failures, query
  unsupported, health app-id mismatch;
* a request that fails leaves the key it named as it was (on Redis, transactions excepted: MULTI/EXEC
  has no rollback);
* a canary key written before the run is byte-identical (value and ETag) after it.

Counts are bounded so the default run takes a few seconds per store, with fixed seeds (CI never flakes
on a new random case). ``STATELAB_SOAK=1`` runs 20 times as many cases with fresh random seeds
(``STATELAB_SOAK=N``: N times); ``pytest --hypothesis-show-statistics`` prints the counts.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from helpers import APP_ID, FUZZ_REQUESTS, ROOT, STORE_NAME, Target, soak_factor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SOAK = soak_factor()
OPENAPI = ROOT / "docs" / "openapi.yaml"
JSON = "application/json"
ANSWER_TIMEOUT = 10.0  # seconds; an answer that takes longer is a hang


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SOAK,
        deadline=None,
        database=None,  # nothing written into the work tree
        derandomize=SOAK == 1,  # the bounded run is the same every time; soak runs explore
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
        print_blob=True,
    )


# --- what an answer may be ------------------------------------------------------------------------------

# 5xx answers daprd gives on purpose, by errorCode, with what their message must say (§2.1, §8, §9.1).
DOCUMENTED_5XX = {
    "ERR_STATE_SAVE": r"unrecognized (concurrency|consistency) model|ttl|TTL|strconv\.|failed to set key",
    "ERR_STATE_DELETE": r"unrecognized (concurrency|consistency) model",
    "ERR_STATE_TRANSACTION": (
        r"etag mismatch|unrecognized (concurrency|consistency) model|ttl|TTL|strconv\.|failed to (set key|delete)"
    ),
    "ERR_STATE_STORE_NOT_SUPPORTED": r"does not support querying",
    "ERR_STATE_QUERY": r"query failed",
    "ERR_HEALTH_APPID_NOT_MATCH": r"app-id does not match",
}
# Every (status, errorCode) a route may answer besides its successes; 404 is daprd's no-route fallback.
COMMON_4XX = {(400, "ERR_MALFORMED_REQUEST"), (400, "ERR_STATE_STORE_NOT_FOUND"), (404, "ERR_DIRECT_INVOKE")}
ROUTE_ERRORS = {
    "save": COMMON_4XX | {(400, "ERR_STATE_SAVE"), (409, "ERR_STATE_SAVE"), (500, "ERR_STATE_SAVE")},
    "get": COMMON_4XX,
    "delete": COMMON_4XX | {(400, "ERR_STATE_DELETE"), (409, "ERR_STATE_DELETE"), (500, "ERR_STATE_DELETE")},
    "bulk": COMMON_4XX,
    "transaction": COMMON_4XX
    | {
        (400, "ERR_NOT_SUPPORTED_STATE_OPERATION"),
        (400, "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS"),
        (500, "ERR_STATE_TRANSACTION"),
    },
    "query": COMMON_4XX | {(500, "ERR_STATE_STORE_NOT_SUPPORTED"), (500, "ERR_STATE_QUERY")},
    "healthz": {(500, "ERR_HEALTH_APPID_NOT_MATCH"), (404, "ERR_DIRECT_INVOKE")},
    "metadata": COMMON_4XX,
}
ROUTE_ERRORS["other"] = set().union(*ROUTE_ERRORS.values())  # a stray path may land on any route
ROUTE_SUCCESSES = {
    "save": {204},
    "get": {200, 204},
    "delete": {204},
    "bulk": {200},
    "transaction": {204},
    "query": set(),
    "healthz": {204},
    "metadata": {200, 204},
    "other": {200, 204},
}
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
GO_PLAIN_400 = b"400 Bad Request"  # malformed HTTP: what Go's net/http (and the sidecar) answer, then close
BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # Go refuses such a request line ("invalid URL escape")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def check_answer(route: str, method: str, answer: Answer, request: str = "", target: str = "") -> None:
    """The invariants every answer must meet (module docstring); ``request`` describes it for a failure.

    A ``target`` with an invalid %-escape is refused before routing, as daprd does: plain 400, then close.
    """
    where = f"{method} {route}: {answer.status} {answer.body[:300]!r}" + (f"\n  for {request}" if request else "")
    assert not TRACEBACK.search(answer.body), f"traceback text in the answer: {where}"
    assert not any(TRACEBACK.search(v.encode("latin-1", "replace")) for v in answer.headers.values()), where
    if answer.status < 400:
        assert answer.status in ROUTE_SUCCESSES[route], f"unexpected success status: {where}"
        return
    if answer.status == 401:
        assert answer.headers.get("content-type") == "text/plain; charset=utf-8", where
        assert method == "HEAD" or answer.body == b"invalid api token\n", where
        return
    if answer.headers.get("content-type", "").startswith("text/plain") and answer.body == GO_PLAIN_400:
        if BAD_ESCAPE.search(target.split("?", 1)[0]):
            assert answer.closed, f"a refused request line closes the connection: {where}"
            return
        pytest.fail(f"the request was not well-formed HTTP (a generator bug, not a sidecar one): {where}")
    assert answer.headers.get("content-type") == JSON, f"error without a JSON body: {where}"
    if method == "HEAD":
        return  # no body on HEAD; the Content-Type still says JSON
    body = answer.json
    assert isinstance(body, dict), where
    assert set(body) <= {"errorCode", "message", "details"}, where
    assert isinstance(body.get("errorCode"), str) and re.fullmatch(r"ERR_[A-Z_]+", body["errorCode"]), where
    assert isinstance(body.get("message"), str), where
    assert "details" not in body or isinstance(body["details"], list), where
    code = body["errorCode"]
    assert code != "ERR_INTERNAL", f"the sidecar's last-resort handler answered (a bug; see its log): {where}"
    assert (answer.status, code) in ROUTE_ERRORS[route], f"undocumented answer for {route}: {where}"
    if answer.status >= 500:
        pattern = DOCUMENTED_5XX.get(code)
        assert pattern is not None and re.search(pattern, body["message"]), f"undocumented 5xx: {where}"


# --- a raw HTTP/1.1 connection ----------------------------------------------------------------------------


class RawHTTP:
    """One keep-alive connection that sends bytes as given and reads Content-Length framed answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        chunked: bool = False,
    ) -> Answer:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
        for name, value in headers or []:
            lines.append(f"{name}: {value}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            half = len(body) // 2
            pieces = [p for p in (body[:half], body[half:]) if p]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        else:
            if body or method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {len(body)}")
            payload = body
        data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT)
        try:
            self.sock.sendall(data)
            answer = self._read(head=method == "HEAD")
        except BaseException:
            self.close()
            raise
        if answer.closed:
            self.close()
        return answer

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 16)  # a timeout here means the sidecar hung: the test fails
        if not chunk:
            raise ConnectionError("the sidecar closed the connection before a full answer")
        self.buf += chunk

    def _read(self, *, head: bool) -> Answer:
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break  # 100 Continue is an interim answer: read on
        length = 0 if head or status in (204, 304) else int(headers.get("content-length", "0"))
        closed = headers.get("connection", "").lower() == "close"
        if "content-length" not in headers and status not in (204, 304) and not head:
            # Only the plain 400 for malformed HTTP comes without a length: the body runs to the close.
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
            length, closed = len(self.buf), True
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(status, headers, body, closed)


# --- the guarded run: canary, log, failed-request checks ----------------------------------------------------


def _read_key(conn: RawHTTP, key: str) -> tuple[int, bytes, str | None]:
    # '.' escaped too: a path segment "." or ".." would be cleaned away before routing (§1.1).
    answer = conn.request("GET", f"/v1.0/state/{STORE_NAME}/{quote(key, safe='').replace('.', '%2E')}")
    assert answer.status in (200, 204), f"reading {key[:80]!r}: {answer.status} {answer.body[:200]!r}"
    return answer.status, answer.body, answer.headers.get("etag")


@dataclass
class Fuzzer:
    api: Target
    conn: RawHTTP
    pool: list[str]  # keys the strategies draw from, so saves, reads and deletes meet each other
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def send(self, route: str, method: str, target: str, headers=None, body: bytes = b"", chunked=False) -> Answer:
        described = f"{method} {target[:300]} headers={headers!r} body={body[:200]!r} chunked={chunked}"
        try:
            answer = self.conn.request(method, target, headers, body, chunked=chunked)
        except TimeoutError:
            pytest.fail(f"the sidecar did not answer within {ANSWER_TIMEOUT:.0f} s (a hang): {described}")
        self.sent += 1
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        check_answer(route, method, answer, described, target)
        return answer

    def snapshot(self, keys: list[str]) -> dict[str, tuple[int, bytes, str | None]]:
        return {k: _read_key(self.conn, k) for k in keys if k and "||" not in k}

    def etag_of(self, key: str) -> str | None:
        if not key or "||" in key:
            return None
        return _read_key(self.conn, key)[2]


def _port(api: Target) -> int:
    return int(api.url.rsplit(":", 1)[1])


@pytest.fixture
def fuzz(api: Target) -> Iterator[Fuzzer]:
    """A fuzzer on ``api`` whose run is bracketed by the canary check and a scan of the sidecar's log."""
    conn = RawHTTP(_port(api))
    canary = f"canary-{uuid.uuid4().hex}"
    value = {"canary": "ünïcødé ✓ <&> \u2028", "n": [1, 2.5, None, True, -0.000001], "nested": {"z": {}, "a": []}}
    assert api.save({"key": canary, "value": value}).status_code == 204
    before = _read_key(conn, canary)
    redis_before = api.redis().hgetall(f"{APP_ID}||{canary}") if api.store == "redis" else None
    assert api.stack.run_dir is not None
    log = api.stack.run_dir / "sidecar-0.log"
    log_start = log.stat().st_size
    pool = [f"fz-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)] + ["bulk", "transaction", "a/b", "a+b", "é ✓"]
    fuzzer = Fuzzer(api, conn, pool)
    try:
        yield fuzzer
    finally:
        conn.close()
    conn = fuzzer.conn = RawHTTP(_port(api))
    try:
        assert _read_key(conn, canary) == before, "the canary changed"
        if redis_before is not None:
            assert api.redis().hgetall(f"{APP_ID}||{canary}") == redis_before, "the canary's Redis hash changed"
        assert conn.request("GET", "/v1.0/healthz").status == 204
        # Whatever the run wrote to the pool keys can still be read, one by one and in bulk.
        fuzzer.snapshot(pool)
        bulk = conn.request("POST", f"/v1.0/state/{STORE_NAME}/bulk", body=json.dumps({"keys": pool}).encode())
        assert bulk.status == 200 and len(bulk.json) == len(pool), bulk.body[:300]
    finally:
        conn.close()
    with log.open("rb") as f:
        f.seek(log_start)
        logged = f.read()
    assert b"Traceback" not in logged, f"the sidecar logged a traceback:\n{logged.decode(errors='replace')[-3000:]}"
    assert fuzzer.sent > 0
    FUZZ_REQUESTS[api.store] += fuzzer.sent


# --- strategies -----------------------------------------------------------------------------------------------

LONG = st.builds(lambda c, n: c * n, st.sampled_from(["k", "é", "😀", "%", "|", "/"]), st.integers(1000, 20000))
SPECIAL_KEYS = st.sampled_from(
    ["", "||", "a||b", "||x", "x||", "%2F", "a/b", "a%2Fb", "+", "a+b", " ", "%", "%zz", ".", "..", "bulk",
     "transaction", "\x00", "\u2028", "é", "😀", "\ufeff", "a\tb", "null", "*", "?", "#", "a;b", "~"]
)  # fmt: skip


def keys(pool: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(pool), SPECIAL_KEYS, st.text(max_size=30), LONG)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 1e-320, 2**53 + 1, 0.1, -0.0]),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ETAGS = st.one_of(
    st.none(),
    st.just("__current__"),  # resolved at send time to the key's real ETag
    st.sampled_from(["", "0", "1", "-1", "+1", "00", "1.0", " 1", "9223372036854775807", "9223372036854775808",
                     "99999999999999999999999", "-9223372036854775809", "W/\"1\"", "*", "bad-etag", "é"]),
    st.text(max_size=12),
    st.integers(-(2**70), 2**70).map(str),
)  # fmt: skip
# No short positive TTLs: a key expiring between two reads of one example would look like a lost write.
TTLS = st.one_of(
    st.sampled_from(["0", "-1", "-2", "3600", "+3600", "2147483647", "2147483648", "9223372036", "9223372037",
                     "99999999999", "9223372036854775", "9223372036854775807", "9223372036854775808",
                     "-9223372036854775809", "1.5", "", " 1", "1e3", "0x10", "１"]),
    st.integers(-(2**70), 2**70).filter(lambda n: n <= 0 or n >= 600).map(str),
)  # fmt: skip
OPTION_VALUES = st.one_of(
    st.sampled_from(["first-write", "last-write", "strong", "eventual", "", "FIRST-WRITE", "Strong", "x"]),
    st.text(max_size=8),
)
METADATA = st.fixed_dictionaries({"ttlInSeconds": TTLS}) | st.dictionaries(
    st.sampled_from(["ttlInSeconds", "contentType", "partitionKey", "TTLINSECONDS"]) | st.text(max_size=8),
    TTLS | st.text(max_size=10),
    max_size=3,
)
ANYTHING = JSON_VALUES  # for a field that should have another type


def _renamed(obj: dict[str, Any], case: list[bool]) -> dict[str, Any]:
    """Go matches field names case-insensitively: upper-case some of them."""
    return {(k.upper() if i < len(case) and case[i] else k): v for i, (k, v) in enumerate(obj.items())}


def items(pool: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    good = st.fixed_dictionaries(
        {"key": keys(pool)},
        optional={
            "value": JSON_VALUES,
            "etag": ETAGS,
            "metadata": METADATA | st.none(),
            "options": st.fixed_dictionaries({}, optional={"concurrency": OPTION_VALUES, "consistency": OPTION_VALUES}),
        },
    )
    bad = st.fixed_dictionaries(
        {},
        optional={
            "key": keys(pool) | ANYTHING,
            "value": ANYTHING,
            "etag": ETAGS | ANYTHING,
            "metadata": METADATA | ANYTHING,
            "options": ANYTHING,
            "contentType": ANYTHING,
            "extra": ANYTHING,
        },
    )
    return st.builds(_renamed, st.one_of(good, good, good, bad), st.lists(st.booleans(), max_size=6))


def encode(obj: Any, how: str, garbage: bytes) -> bytes:
    """A body from ``obj``: plain JSON, with trailing bytes, truncated, or not JSON at all."""
    text = json.dumps(obj, ensure_ascii=how != "utf8").encode()
    if how == "trailing":
        return text + garbage
    if how == "truncated":
        return text[: max(0, len(text) - 1 - len(garbage))]
    if how == "garbage":
        return garbage
    if how == "spaces":
        return b" \n\t" + text + b"\r\n"
    return text


BODY_STYLES = st.sampled_from(["plain", "plain", "plain", "utf8", "trailing", "truncated", "garbage", "spaces"])
GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"]", b"{", b"\xff\xfe", b"NaN", b"[" * 2000, b"[" * 600 + b"]" * 600, b"\x00", b"nul"]),
)
QUERY_NAMES = st.sampled_from(
    ["consistency", "concurrency", "metadata.ttlInSeconds", "metadata.contentType", "metadata.partitionKey",
     "metadata.", "appid", "Consistency", "metadata.ttlInSeconds"]
) | st.text(max_size=8)  # fmt: skip
QUERY_VALUES = OPTION_VALUES | TTLS | st.text(max_size=10)
HEADER_NAMES = st.sampled_from(
    ["If-Match", "if-match", "dapr-api-token", "Content-Type", "dapr-app-id", "Accept", "User-Agent",
     "traceparent", "Cookie", "X-Forwarded-For", "consistency", "concurrency", "metadata.ttlInSeconds"]
) | st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "host", "connection", "upgrade", "expect", "te")
)  # fmt: skip


def header_safe(value: str | None) -> bool:
    """A value Go's net/http takes in a header (no control characters, latin-1); others are a plain 400 there too."""
    return value is not None and all(c == "\t" or 0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in value)


HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=40
) | ETAGS.filter(lambda e: header_safe(e) and e != "__current__")


def _query_part(text: str, style: str) -> str:
    if style == "raw":  # whatever is legal in a request line left as is: '+', '%', '&', '=' keep their meaning
        return quote(text, safe="+%&=;:@!$'()*,/?")
    return quote(text, safe="")


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=4))
    style = draw(st.sampled_from(["quoted", "quoted", "raw"]))
    parts = [f"{_query_part(n, style)}={_query_part(v, style)}" for n, v in pairs]
    parts += draw(st.lists(st.sampled_from(["%zz", "%", "%E9", "=", "&", "a", "metadata.x=%C3%28"]), max_size=2))
    return "?" + "&".join(parts) if parts else draw(st.sampled_from(["", "?", "?&"]))


@st.composite
def key_segments(draw: st.DrawFn, pool: list[str]) -> tuple[str, str]:
    """(key, how it appears in the path): escaped as daprd expects, or with '/', '+' and '%' left raw."""
    key = draw(keys(pool))
    style = draw(st.sampled_from(["escaped", "escaped", "escaped", "loose", "double"]))
    if style == "loose":
        return key, quote(key, safe="/+%")
    if style == "double":
        return key, quote(quote(key, safe=""), safe="")
    return key, quote(key, safe="")


STORE_SEGMENTS = st.one_of(
    st.just(STORE_NAME),
    st.just(STORE_NAME),
    st.just(STORE_NAME),
    st.sampled_from(["STATESTORE", "statestore%2F", "nope", "%73tatestore", "statestore%00", "", ".", ".."]),
    st.text(max_size=10).map(lambda t: quote(t, safe="")),
)


@st.composite
def extras(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], bool]:
    """(query string, extra headers, chunked?) for any request."""
    return (
        draw(query_strings()),
        draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3)),
        draw(st.sampled_from([False, False, False, True])),
    )


def _resolve(fuzz: Fuzzer, body: Any) -> Any:
    """Replace the ``__current__`` ETag placeholder by the key's real ETag (so some ETags match)."""
    if isinstance(body, list):
        return [_resolve(fuzz, x) for x in body]
    if isinstance(body, dict):
        out = {k: _resolve(fuzz, v) for k, v in body.items()}
        for name in [k for k in out if k.lower() == "etag"]:
            if out[name] == "__current__":
                key = next((v for k, v in out.items() if k.lower() == "key"), None)
                out[name] = fuzz.etag_of(key) if isinstance(key, str) else None
        return out
    return body


def _item_keys(items_: Any) -> list[str]:
    """The string keys a save body or a transaction's requests name (the ones a failure must not touch)."""
    found = []
    for obj in items_ if isinstance(items_, list) else []:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k.lower() == "key" and isinstance(v, str):
                    found.append(v)
    return found


# --- the hypothesis fuzz tests --------------------------------------------------------------------------------


def test_fuzzed_saves_answer_like_daprd_and_failed_ones_change_nothing(fuzz: Fuzzer) -> None:
    @fuzz_settings(80)
    @given(
        body=st.one_of(
            st.lists(items(fuzz.pool), max_size=3), st.lists(items(fuzz.pool), min_size=1, max_size=1), ANYTHING
        ),
        style=BODY_STYLES,
        garbage=GARBAGE,
        method=st.sampled_from(["POST", "PUT"]),
        store=STORE_SEGMENTS,
        extra=extras(),
    )
    def run(body, style, garbage, method, store, extra) -> None:
        query, headers, chunked = extra
        body = _resolve(fuzz, body)
        named = _item_keys(body)
        before = fuzz.snapshot(named)
        answer = fuzz.send(
            "save", method, f"/v1.0/state/{store}{query}", headers, encode(body, style, garbage), chunked
        )
        after = fuzz.snapshot(named)  # whatever was written reads back (200 or 204, never an error)
        if answer.status >= 400 and len(named) == 1:
            # One item: a failure writes nothing (several items are independent writes, §3).
            assert after == before, f"a failed save ({answer.status}) changed {named}: {answer.body!r}"

    run()


def test_fuzzed_reads_answer_like_daprd(fuzz: Fuzzer) -> None:
    @fuzz_settings(60)
    @given(key=key_segments(fuzz.pool), store=STORE_SEGMENTS, extra=extras(), body=st.sampled_from([b"", b"[]", b"x"]))
    def run(key, store, extra, body) -> None:
        query, headers, chunked = extra
        answer = fuzz.send("get", "GET", f"/v1.0/state/{store}/{key[1]}{query}", headers, body, chunked and bool(body))
        if answer.status == 200:
            assert answer.headers.get("content-type") == JSON
            assert answer.headers.get("etag"), "a found item has an ETag"

    run()


def test_fuzzed_deletes_answer_like_daprd_and_failed_ones_change_nothing(fuzz: Fuzzer) -> None:
    @fuzz_settings(60)
    @given(
        key=key_segments(fuzz.pool),
        store=STORE_SEGMENTS,
        etag=ETAGS.filter(lambda e: e is None or header_safe(e)),
        extra=extras(),
        seed_value=st.booleans(),
    )
    def run(key, store, etag, extra, seed_value) -> None:
        raw_key, segment = key
        if seed_value and raw_key in fuzz.pool:
            fuzz.api.save({"key": raw_key, "value": {"seeded": True}})
        query, headers, chunked = extra
        if etag == "__current__":
            etag = fuzz.etag_of(raw_key)
        if etag is not None:
            headers = [*headers, ("If-Match", etag)]
        before = fuzz.snapshot([raw_key])
        answer = fuzz.send("delete", "DELETE", f"/v1.0/state/{store}/{segment}{query}", headers, b"", False)
        if answer.status >= 400:
            assert fuzz.snapshot([raw_key]) == before, f"a failed delete ({answer.status}) changed {raw_key[:80]!r}"

    run()


def test_fuzzed_bulk_gets_answer_like_daprd(fuzz: Fuzzer) -> None:
    bodies = st.one_of(
        st.fixed_dictionaries(
            {"keys": st.lists(keys(fuzz.pool), max_size=5)},
            optional={"parallelism": st.integers(-5, 100) | ANYTHING, "metadata": METADATA | ANYTHING},
        ),
        st.fixed_dictionaries({}, optional={"keys": ANYTHING, "parallelism": ANYTHING, "metadata": ANYTHING}),
        ANYTHING,
    )

    @fuzz_settings(60)
    @given(
        body=bodies,
        style=BODY_STYLES,
        garbage=GARBAGE,
        method=st.sampled_from(["POST", "PUT"]),
        store=STORE_SEGMENTS,
        extra=extras(),
    )
    def run(body, style, garbage, method, store, extra) -> None:
        query, headers, chunked = extra
        answer = fuzz.send(
            "bulk", method, f"/v1.0/state/{store}/bulk{query}", headers, encode(body, style, garbage), chunked
        )
        if answer.status == 200 and answer.body:
            assert answer.body.endswith(b"\n")
            got = answer.json
            assert isinstance(got, list) and all(isinstance(x, dict) and "key" in x for x in got)

    run()


def test_fuzzed_transactions_answer_like_daprd_and_failed_ones_change_nothing(fuzz: Fuzzer) -> None:
    op = st.fixed_dictionaries(
        {
            "operation": st.sampled_from(["upsert", "delete", "upsert", "UPSERT", "get", ""]) | ANYTHING,
            "request": items(fuzz.pool),
        }
    ) | st.fixed_dictionaries({}, optional={"operation": ANYTHING, "request": ANYTHING})
    bodies = st.one_of(
        st.fixed_dictionaries({"operations": st.lists(op, max_size=4)}, optional={"metadata": METADATA | ANYTHING}),
        st.fixed_dictionaries({}, optional={"operations": ANYTHING, "metadata": ANYTHING}),
        ANYTHING,
    )

    @fuzz_settings(80)
    @given(
        body=bodies,
        style=BODY_STYLES,
        garbage=GARBAGE,
        method=st.sampled_from(["POST", "PUT"]),
        store=STORE_SEGMENTS,
        extra=extras(),
    )
    def run(body, style, garbage, method, store, extra) -> None:
        query, headers, chunked = extra
        body = _resolve(fuzz, body)
        ops = body.get("operations") if isinstance(body, dict) else None
        named = _item_keys([o.get("request") for o in ops if isinstance(o, dict)]) if isinstance(ops, list) else []
        before = fuzz.snapshot(named)
        answer = fuzz.send(
            "transaction",
            method,
            f"/v1.0/state/{store}/transaction{query}",
            headers,
            encode(body, style, garbage),
            chunked,
        )
        if answer.status >= 400 and fuzz.api.store != "redis":
            # in-memory and sqlite transactions are atomic (§12); Redis MULTI/EXEC has no rollback.
            assert fuzz.snapshot(named) == before, f"a failed transaction ({answer.status}) changed {named}"

    run()


def test_fuzzed_health_metadata_and_query_routes_answer_like_daprd(fuzz: Fuzzer) -> None:
    routes = st.sampled_from(
        [
            ("healthz", "GET", "/v1.0/healthz"),
            ("healthz", "GET", "/v1.0/healthz/outbound"),
            ("metadata", "GET", "/v1.0/metadata"),
            ("metadata", "PUT", "/v1.0/metadata/{key}"),
            ("query", "POST", "/v1.0-alpha1/state/{store}/query"),
            ("query", "PUT", "/v1.0-alpha1/state/{store}/query"),
        ]
    )

    @fuzz_settings(50)
    @given(
        route=routes,
        key=key_segments(["fuzzed"]),
        store=STORE_SEGMENTS,
        body=st.binary(max_size=64) | GARBAGE,
        extra=extras(),
    )
    def run(route, key, store, body, extra) -> None:
        name, method, template = route
        query, headers, chunked = extra
        path = template.replace("{key}", key[1] or "k").replace("{store}", store)
        fuzz.send(name, method, f"{path}{query}", headers, body, chunked and bool(body))

    run()


def test_fuzzed_methods_and_paths_fall_back_to_daprds_404(fuzz: Fuzzer) -> None:
    """Unknown methods, path tricks and stray segments: daprd's answer (mostly 404 ERR_DIRECT_INVOKE) or a route's."""
    segments = st.one_of(
        st.sampled_from(["v1.0", "state", STORE_NAME, "bulk", "transaction", "healthz", "outbound", "metadata",
                         "v1.0-alpha1", "query", "", ".", "..", "%2F", "%2E%2E", "k", "v1", "v1.0 "]),
        st.text(max_size=6).map(lambda t: quote(t, safe="")),
    )  # fmt: skip
    # Methods the HTTP parser knows; others (and raw non-ASCII in the path) get the transport's plain 400.
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])

    @fuzz_settings(60)
    @given(
        method=methods,
        parts=st.lists(segments, min_size=0, max_size=6),
        extra=extras(),
        body=st.sampled_from([b"", b"[]", b"{}", b"x"]),
    )
    def run(method, parts, extra, body) -> None:
        query, headers, chunked = extra
        path = "/" + "/".join(p.replace(" ", "%20") for p in parts)
        answer = fuzz.send("other", method, f"{path}{query}", headers, body, chunked and bool(body))
        if answer.status in (200, 204):
            assert method in ("GET", "POST", "PUT", "DELETE"), f"{method} {path} answered {answer.status}"

    run()


# --- schemathesis against docs/openapi.yaml ---------------------------------------------------------------------

SCHEMA = schemathesis.openapi.from_path(OPENAPI)
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


def test_openapi_description_is_valid_and_covers_every_route() -> None:
    SCHEMA.validate()
    labels = {op.ok().label for op in SCHEMA.get_all_operations()}
    for route in [
        "POST /v1.0/state/{storeName}", "PUT /v1.0/state/{storeName}", "GET /v1.0/state/{storeName}/{key}",
        "DELETE /v1.0/state/{storeName}/{key}", "POST /v1.0/state/{storeName}/bulk", "PUT /v1.0/state/{storeName}/bulk",
        "POST /v1.0/state/{storeName}/transaction", "PUT /v1.0/state/{storeName}/transaction", "GET /v1.0/healthz",
        "GET /v1.0/healthz/outbound", "GET /v1.0/metadata", "PUT /v1.0/metadata/{key}",
    ]:  # fmt: skip
        assert route in labels


def _route_of(label: str) -> str:
    path = label.split(" ", 1)[1]
    if path.endswith("/bulk"):
        return "bulk"
    if path.endswith("/transaction"):
        return "transaction"
    if path.endswith("/query"):
        return "query"
    if "healthz" in path:
        return "healthz"
    if "metadata" in path:
        return "metadata"
    if path.endswith("{key}"):
        return "get" if label.startswith("GET") else "delete"
    return "save"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_schemathesis_requests_get_documented_answers(fuzz: Fuzzer, mode: GenerationMode) -> None:
    import requests

    session = requests.Session()

    @fuzz_settings(60)
    @given(case=SCHEMA.as_strategy(generation_mode=mode), real_store=st.booleans(), pooled=st.booleans())
    def run(case, real_store, pooled) -> None:
        if real_store and "storeName" in (case.path_parameters or {}):
            case.path_parameters["storeName"] = STORE_NAME
        if pooled and "key" in (case.path_parameters or {}) and case.operation.path.startswith("/v1.0/state"):
            case.path_parameters["key"] = fuzz.pool[0]
        response = case.call(base_url=fuzz.api.url, session=session, timeout=15)
        fuzz.sent += 1
        answer = Answer(
            response.status_code,
            {k.lower(): ", ".join(v) if isinstance(v, list) else v for k, v in response.headers.items()},
            response.content,
        )
        check_answer(_route_of(case.operation.label), case.method.upper(), answer)
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, checks=CONFORMANCE)
        else:
            # Invalid input may be accepted (daprd ignores unknown fields): only the declared shapes are checked.
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance])

    try:
        run()
    finally:
        session.close()


# --- what the fuzzers found, pinned ------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_a_ttl_longer_than_a_go_duration_is_a_500_and_writes_nothing(api: Target) -> None:
    """Was: in-memory stored it and then failed every read of the key (500 ERR_INTERNAL); Redis wrote the value,
    failed the EXPIRE, and answered 500 (409 with an ETag) for a write that had happened."""
    for fields in ({}, {"etag": "1"}):
        key = api.key("ttl-huge")
        resp = api.save({"key": key, "value": "v", "metadata": {"ttlInSeconds": "9223372037"}, **fields})
        assert resp.status_code == 500, resp.text
        assert resp.json()["errorCode"] == "ERR_STATE_SAVE" and "9223372037" in resp.json()["message"]
        assert api.get(key).status_code == 204
    key = api.key("ttl-longest")
    resp = api.save({"key": key, "value": "v", "metadata": {"ttlInSeconds": "9223372036"}})  # 292 years
    if api.store == "sqlite":
        assert resp.status_code == 500  # components-contrib's sqlite takes at most 2^31-1 seconds
    else:
        assert resp.status_code == 204, resp.text
        got = api.get(key)
        assert got.status_code == 200 and got.json() == "v"
        assert api.http.post(api.state_url("bulk"), json={"keys": [key]}).status_code == 200


@pytest.mark.parametrize("api", ["redis"], indirect=True)
def test_a_redis_etag_outside_int64_is_invalid_not_a_mismatch(api: Target) -> None:
    """Go's strconv.Atoi refuses it, so daprd answers 400 "invalid etag value" (it was a 409)."""
    key = api.key()
    assert api.save({"key": key, "value": 1}).status_code == 204
    resp = api.save({"key": key, "value": 2, "etag": "9223372036854775808"})
    assert resp.status_code == 400
    assert resp.json() == {
        "errorCode": "ERR_STATE_SAVE",
        "message": f"failed saving state in state store {STORE_NAME}: invalid etag value: "
        'strconv.Atoi: parsing "9223372036854775808": value out of range',
    }
    assert api.get(key).json() == 1


def test_json_nested_up_to_the_limit_round_trips_and_deeper_is_400_on_every_route(api: Target) -> None:
    """Was: depth ~980 was accepted by a save and then failed bulk reads with 500 ERR_INTERNAL."""
    key = api.key("deep")
    value = _nested(510)  # + the body's array and item object: 512 levels
    assert api.save({"key": key, "value": value}).status_code == 204
    assert api.get(key).json() == value
    bulk = api.http.post(api.state_url("bulk"), json={"keys": [key]})
    assert bulk.status_code == 200 and bulk.json()[0]["data"] == value
    deep = _nested(600)
    answers = [
        api.save({"key": key, "value": deep}),
        api.http.post(api.state_url("bulk"), json={"keys": [key], "metadata": deep}),
        api.http.post(
            api.state_url("transaction"),
            json={"operations": [{"operation": "upsert", "request": {"key": key, "value": deep}}]},
        ),
    ]
    for resp in answers:
        assert resp.status_code == 400, resp.text
        assert resp.json()["errorCode"] == "ERR_MALFORMED_REQUEST"
        assert resp.json()["message"].endswith("exceeded max depth")
    assert api.get(key).json() == value


def test_the_query_route_decodes_the_store_name_like_every_other_route(api: Target) -> None:
    resp = api.http.post(f"{api.url}/v1.0-alpha1/state/%73tatestore/query", json={})
    assert resp.status_code == 500
    assert resp.json()["errorCode"] in ("ERR_STATE_STORE_NOT_SUPPORTED", "ERR_STATE_QUERY")
    resp = api.http.post(f"{api.url}/v1.0-alpha1/state/n%6F%2Fpe/query", json={})
    assert resp.status_code == 400
    assert resp.json()["message"] == "state store no/pe is not found"
