"""Differential fuzzing: statelab's sidecar and a real daprd get the same random requests and must answer alike.

For each store (in-memory, sqlite, redis) two stacks run side by side, each on a fresh store of its own
(Redis: one server per stack, no replica): statelab's sidecar and a real daprd (``./scripts/daprd``), same
app id. Seeded random sequences (``differential.generate``) of saves with every option, gets, deletes,
bulk gets, transactions, malformed bodies and odd paths and methods go to both in the same order; the
answers are compared after normalisation (``differential.Comparison``): status, errorCode and message,
Content-Type, ETag shape and identity, ``metadata.*`` headers, values, bulk items in order; at the end of
each sequence the stores' raw records (Redis hashes with TTLs, SQLite rows) are compared too.

daprd is the judge. A divergence fails the test unless ``KNOWN_DIVERGENCES`` (below) lists it: a statelab
bug written down with a reason and a minimal reproducer. Each entry also gets its own strict-xfail test
that replays the reproducer, so fixing the bug turns that test into an XPASS failure that says to remove
the entry. A request that may leave the two stores different (an entry's ``taints``) makes every later
difference on the keys it touched a consequence, not a new divergence.

Runs are reproducible: every failure prints the sequence seed.

* ``STATELAB_DIFF_SEED=N`` sets the base seed (default fixed; ``STATELAB_SOAK`` picks a random one, printed);
* ``STATELAB_DIFF_SEQUENCE=S`` replays only sequence ``S`` (the seed a failure names) and prints its steps and
  every divergence, known or not (``pytest -s -k <store> tests/server/test_differential.py``).

A failure also shows the first unknown divergence of up to three sequences, each shrunk to the fewest
requests that still show it (replayed on fresh keys), with both answers.

Bounded in CI (60 sequences of 49 requests per store, about 10 s for the three stores); ``STATELAB_SOAK=1``
runs 20 times as many with a random base seed (``STATELAB_SOAK=N``: N times); the requests sent per store
and the known divergences seen are printed under "reliability figures".
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from differential import (
    STATE,
    Body,
    Client,
    Comparison,
    Divergence,
    Sides,
    Step,
    dump_redis,
    dump_sqlite,
    generate,
    joined_equal,
    one_of_several,
    run_sequence,
    shrink,
    sqlite_schema,
    stored_value,
)
from helpers import APP_ID, RELIABILITY, ROOT, make_stack, soak_factor

from statelab.local import Stack

STORES = ("in-memory", "sqlite", "redis")
SOAK = soak_factor()
SEQUENCES = 60 * SOAK  # ~49 requests each: ~2,900 per store in CI, ~59,000 with STATELAB_SOAK=1
STEPS = 40  # requests per sequence before the read-back, which adds 9
_seed = os.environ.get("STATELAB_DIFF_SEED", "").strip()
BASE_SEED = int(_seed) if _seed else (random.randrange(1, 10**6) if SOAK > 1 else 1)
ONLY_SEQUENCE = os.environ.get("STATELAB_DIFF_SEQUENCE", "").strip()
NAMESPACES = re.compile(r"n\d+-")  # every sequence's keys start with its own n<i>-
SHOWN = 3  # unknown divergences shrunk and shown in a failure

pytestmark = pytest.mark.timeout(max(300, 120 * SOAK))


def _daprd() -> tuple[str | None, str]:
    """The daprd to compare with (``scripts/daprd --no-build``) or None, and why there is none.

    Without one the module is skipped, with one line; with ``STATELAB_DAPRD_REQUIRED`` set (CI) every test of
    the module fails with that line instead (the other modules still run)."""
    script = ROOT / "scripts" / "daprd"
    done = subprocess.run([str(script), "--no-build"], capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1], ""
    why = (done.stderr.strip().splitlines() or ["scripts/daprd --no-build failed"])[-1]
    if not os.environ.get("STATELAB_DAPRD_REQUIRED"):
        pytest.skip(f"no daprd to compare with ({why}); run ./scripts/daprd to build one", allow_module_level=True)
    return None, f"differential fuzzing needs a real daprd (STATELAB_DAPRD_REQUIRED is set) and has none: {why}"


DAPRD, NO_DAPRD = _daprd()


# --- known divergences ---------------------------------------------------------------------------------------------


def req(method: str, target: str, body: Any = b"", *, headers: tuple[tuple[str, Any], ...] = (),
        reads: tuple[str, ...] = ()) -> Step:  # fmt: skip
    """A reproducer step; keys start with ``NS-`` (replaced by a fresh namespace when replayed)."""
    return Step("reproducer", method, target, list(headers), body if isinstance(body, bytes) else Body(body),
                reads, touches=reads)  # fmt: skip


def when(*, request: str = "", where: str = "", daprd: str = "", statelab: str = "") -> Callable[[Divergence], bool]:
    """A divergence whose request, field, and daprd and statelab values (as repr) match these regexes."""
    patterns = [(attr, re.compile(p)) for attr, p in
                (("request", request), ("where", where), ("daprd", daprd), ("statelab", statelab)) if p]  # fmt: skip

    def matches(d: Divergence) -> bool:
        return all(p.search(getattr(d, attr) if attr in ("request", "where") else repr(getattr(d, attr)))
                   for attr, p in patterns)  # fmt: skip

    return matches


def _type_error_field(message: Any) -> str | None:
    """The field path an encoding/json type error names (``options.concurrency``), lower-cased."""
    m = re.search(r"cannot unmarshal \w+ into Go struct field \w+\.([\w.]+) of type", str(message))
    return m.group(1).lower() if m else None


def either(*predicates: Callable[[Divergence], bool]) -> Callable[[Divergence], bool]:
    return lambda d: any(p(d) for p in predicates)


@dataclass(frozen=True)
class Known:
    """A divergence that is a statelab bug (daprd is right), until it is fixed and the entry removed."""

    name: str
    stores: tuple[str, ...]
    reason: str  # what daprd answers, what statelab answers
    reproducer: tuple[Step, ...]  # the fewest requests that show it
    matches: Callable[[Divergence], bool]  # recognises it in a fuzz run
    # A regex over requests (Step.describe) that may leave the two stores different, whether or not their own
    # answers differ (one item of a multi-item save can fail silently): later differences on their keys are
    # consequences, not new divergences.
    taints: str = ""
    shows: Callable[[Divergence], bool] | None = None  # what the reproducer shows, if not ``matches``


J = (("Content-Type", "application/json"),)
T = f"{STATE}/transaction"
EMPTY_TTL = r'"ttlInSeconds": (""|null)|metadata\.ttlInSeconds=(&|$| )'
HUGE_TTL = r'ttlInSeconds"?(: |=)"?(9223372037|99999999999)'
# A delete operation with a contentType that is not a string (nested objects allowed one level deep).
DELETE_WITH_TYPED_CONTENT_TYPE = (
    r'"operation": ?"delete", ?"request": ?\{(?:[^{}]|\{[^{}]*\})*"(?i:contenttype)": ?[^" ]'
)
REDIS_JSON_TRANSACTION = (
    r'/transaction.*("(?i:contenttype)": "application/json"|metadata\.contentType=application%2Fjson)'
)
REPEATED_FIELD = r'(?i)"(key|value|etag|metadata|options)": ?(?:[^{}]|\{[^{}]*\})*?"\1": ?'  # one object, twice

KNOWN_DIVERGENCES: tuple[Known, ...] = (
    Known(
        "ttl-beyond-a-go-duration-is-accepted",
        ("in-memory", "redis"),
        "daprd takes a `ttlInSeconds` above 9223372036 (the largest whole-second Go duration): in-memory "
        "multiplies it into an overflowing duration (9223372037: 204 and the item is already expired, GET 204; "
        "99999999999: 204, stored with a ttlExpireTime in 2273), Redis sends it to EXPIRE (204, stored). "
        "statelab answers 500 ERR_STATE_SAVE `ttlInSeconds 9223372037 is out of range: at most 9223372036 "
        "seconds` and writes nothing (transactions: 500 ERR_STATE_TRANSACTION). tests/server/test_fuzz.py pins "
        "statelab's answer without having checked it against daprd.",
        (req("POST", STATE, [{"key": "NS-k", "value": 1, "metadata": {"ttlInSeconds": "99999999999"}}], headers=J),
         req("GET", f"{STATE}/NS-k", reads=("NS-k",))),  # fmt: skip
        when(request=HUGE_TTL),
        taints=HUGE_TTL,
    ),
    Known(
        "sqlite-ttl-out-of-range-message",
        ("sqlite",),
        "Both refuse a `ttlInSeconds` above 2147483647 with 500, but daprd says `error parsing TTL: incorrect "
        "value for metadata 'ttlInSeconds': must be -1 or greater` (components-contrib converts it to int32 "
        "first) and statelab, for values above 9223372036, `…: ttlInSeconds 9223372037 is out of range: at most "
        "9223372036 seconds`.",
        (req("POST", STATE, [{"key": "NS-k", "value": 1, "metadata": {"ttlInSeconds": "9223372037"}}], headers=J),),
        when(request=HUGE_TTL, where="^message$", daprd="must be -1 or greater", statelab="is out of range"),
    ),
    Known(
        "transaction-body-type-names",
        STORES,
        "A transaction body of the wrong shape is decoded by daprd into its own types, which its error names: "
        "`{\"operations\":[1]}` gives 400 `failed deserializing HTTP body: json: cannot unmarshal number into Go "
        "struct field stateTransactionRequestBody.operations of type http.stateTransactionRequestBodyOperation`; "
        "statelab says `…into Go value of type state.TransactionalStateOperation`; for `{\"operation\":1}` daprd "
        "says `…Go struct field stateTransactionRequestBodyOperation.operations.operation of type string`, statelab "
        "`…Go struct field TransactionalStateOperation.operation of type string`.",
        (req("POST", T, {"operations": [1]}, headers=J),
         req("POST", T, {"operations": [{"operation": 1, "request": {"key": "NS-k"}}]}, headers=J)),  # fmt: skip
        when(where="^message$", daprd="stateTransactionRequestBody", statelab="TransactionalState"),
    ),
    Known(
        "transaction-request-is-decoded-by-mapstructure",
        STORES,
        "daprd decodes each operation's `request` with mapstructure, after checking the operation type "
        "(dapr pkg/api/http/http.go onPostStateTransaction). So `{\"operation\":\"get\",\"request\":1}` is 400 "
        "ERR_NOT_SUPPORTED_STATE_OPERATION `operation type get not supported` (statelab: ERR_MALFORMED_REQUEST), "
        "`{\"operation\":\"upsert\",\"request\":1}` is `failed deserializing HTTP body: '' expected a map, got "
        "'float64'` and a wrongly typed field gives mapstructure's text, e.g. `…: 1 error(s) decoding:\\n\\n* "
        "'ETag' expected type 'string', got unconvertible type 'float64', value: '1'` (all errors listed); statelab "
        "answers with encoding/json's text `json: cannot unmarshal number into Go struct field SetRequest.etag of "
        "type string`.",
        (req("POST", T, {"operations": [{"operation": "get", "request": 1}]}, headers=J),
         req("POST", T, {"operations": [{"operation": "upsert", "request": {"key": "NS-k", "etag": 1}}]}, headers=J)),
        either(
            when(where="^message$", daprd=r"failed deserializing HTTP body: (\d+ error\(s\) decoding|'' expected a)"),
            when(request="/transaction", where="^errorCode$", daprd="ERR_NOT_SUPPORTED_STATE_OPERATION",
                 statelab="ERR_MALFORMED_REQUEST"),
            when(request="/transaction", where="^message$", daprd="^.operation type .* not supported",
                 statelab="failed deserializing HTTP body"),
        ),  # fmt: skip
    ),
    Known(
        "transaction-delete-ignores-fields-a-delete-has-not",
        STORES,
        "A delete operation's request is decoded into state.DeleteRequest, which has no `value` or "
        "`contentType`: daprd ignores them whatever their type, so `{\"operation\":\"delete\",\"request\":"
        "{\"key\":\"k\",\"contentType\":5}}` deletes k (204). statelab answers 400 `failed deserializing HTTP "
        "body: json: cannot unmarshal number into Go struct field DeleteRequest.contentType of type string` and "
        "deletes nothing.",
        (req("POST", STATE, [{"key": "NS-k", "value": 1}], headers=J),
         req("POST", T, b'{"operations":[{"operation":"delete","request":{"key":"NS-k","contentType":5}}]}', headers=J),
         req("GET", f"{STATE}/NS-k", reads=("NS-k",))),  # fmt: skip
        when(request=DELETE_WITH_TYPED_CONTENT_TYPE),
        taints=DELETE_WITH_TYPED_CONTENT_TYPE,
    ),
    Known(
        "first-type-error-in-document-order",
        STORES,
        "encoding/json keeps decoding after a field of the wrong type and reports the first such error in "
        "document order: `[{\"key\":\"k\",\"metadata\":{\"a\":1},\"etag\":1}]` is 400 `json: cannot unmarshal "
        "number into Go struct field SetRequest.metadata of type string` in daprd; statelab reports the etag "
        "(`…SetRequest.etag of type string`): it checks the fields in its own order.",
        (req("POST", STATE, b'[{"key":"NS-k","metadata":{"a":1},"etag":1}]', headers=J),),
        lambda d: d.where == "message" and _type_error_field(d.daprd) not in (None, _type_error_field(d.statelab)),
    ),
    Known(
        "go-json-syntax-error-texts",
        STORES,
        "For a body that is not JSON daprd returns Go's scanner error, which names where it failed: `not json` "
        "→ `invalid character 'o' in literal null (expecting 'u')`, `tru` → `unexpected EOF`, `[1 2]` → `invalid "
        "character '2' after array element`, `{\"a\" 1}` → `…after object key`, `01` → `…after object key:value "
        "pair`, `-}` → `…in numeric literal`, `\"\\x\"` → `…in string escape code`, a raw control character → `…in "
        "string literal` (400 ERR_MALFORMED_REQUEST; with `failed deserializing HTTP body: ` on bulk and "
        "transaction). statelab says `invalid character 'n' looking for beginning of value` for all of them.",
        (req("POST", STATE, b"not json", headers=J), req("POST", f"{STATE}/bulk", b"[1 2]", headers=J),
         req("POST", T, b"tru", headers=J)),  # fmt: skip
        when(where="^message$", statelab="looking for beginning of value",
             daprd=r"in literal|after (array element|object key|top-level value)|unexpected EOF|in numeric literal|"
                   r"in string (literal|escape code)|after decimal point|in exponent"),  # fmt: skip
    ),
    Known(
        "a-number-out-of-float64-range",
        STORES,
        "encoding/json reports a number too big for float64 only where it decodes one, naming the field: "
        "`[{\"key\":\"k\",\"value\":1e400}]` is 400 `json: cannot unmarshal number 1e400 into Go struct field "
        "SetRequest.value of type float64`, and in a body of the wrong shape the shape error comes first (bulk "
        "`[{\"value\":1e400}]`: `failed deserializing HTTP body: json: cannot unmarshal array into Go value of type "
        "http.BulkGetRequest`). statelab rejects the number while parsing: `…cannot unmarshal number 1e400 into "
        "Go value of type float64` in every case.",
        (req("POST", STATE, b'[{"key":"NS-k","value":1e400}]', headers=J),
         req("POST", f"{STATE}/bulk", b'[{"key":"NS-k","value":1e400}]', headers=J)),  # fmt: skip
        when(where="^message$", statelab=r"cannot unmarshal number \S+ into Go value of type float64"),
    ),
    Known(
        "a-repeated-field-is-type-checked-every-time",
        STORES,
        "A field given twice (Go matches names case-insensitively, so `Etag` and `etag` are the same field) is "
        "decoded twice and a wrong type in either is an error: `[{\"key\":\"k\",\"etag\":true,\"etag\":null}]` "
        "is 400 `json: cannot unmarshal bool into Go struct field SetRequest.etag of type string` and writes "
        "nothing; statelab keeps only the last value and answers 204 (it writes).",
        (req("POST", STATE, b'[{"key":"NS-k","value":1,"Etag":true,"etag":null}]', headers=J),
         req("GET", f"{STATE}/NS-k", reads=("NS-k",))),  # fmt: skip
        when(request=REPEATED_FIELD),
        taints=REPEATED_FIELD,
    ),
    Known(
        "in-memory-transaction-validates-every-operation-before-any-etag",
        ("in-memory",),
        "components-contrib's in-memory Multi first validates every operation (options, TTL, value) and only "
        "then checks ETags, so `[upsert NS-a with etag \"x\", upsert NS-b with concurrency bogus]` is 500 "
        "`error while executing state transaction: unrecognized concurrency model 'bogus'`; statelab checks "
        "operation by operation and reports the first op's ETag: `…possible etag mismatch. error from state "
        "store: state not exist or expired for key=myapp||NS-a`.",
        (req("POST", T, {"operations": [{"operation": "upsert", "request": {"key": "NS-a", "etag": "x"}},
                                        {"operation": "upsert", "request": {"key": "NS-b",
                                                                            "options": {"concurrency": "bogus"}}}]},
             headers=J),),  # fmt: skip
        when(request="/transaction", where="^message$", daprd=r"unrecognized|strconv|expected",
             statelab="possible etag mismatch"),  # fmt: skip
    ),
    Known(
        "redis-script-errors-keep-redis-prefix",
        ("redis",),
        "When one of components-contrib's Lua scripts refuses a write, Redis prefixes the script's error and daprd "
        "passes it on: a delete with If-Match 2 of a key at version 1 is 409 `failed deleting state with key k: "
        "possible etag mismatch. error from state store: ERR Error running script (call to "
        "f_2446db0de2c963f100727b388f03ead01d18c265): @user_script:6: user_script:6: failed to delete myapp||k`; a "
        "first-write over a first-write key is 500 `…failed to set key myapp||k: ERR Error running script (call to "
        "f_d908b9553add63a82e03589b5c6d01a7654ef0f2): @user_script:14: user_script:14: failed to set key myapp||k`. "
        "statelab leaves the Redis part out (`…error from state store: failed to delete myapp||k`).",
        (req("POST", STATE, [{"key": "NS-k", "value": 1}], headers=J),
         req("DELETE", f"{STATE}/NS-k", headers=(("If-Match", "2"),))),  # fmt: skip
        when(where="^message$", daprd=r"ERR Error running script \(call to f_[0-9a-f]{40}\): @user_script:\d+: ",
             statelab="failed to (set key|delete)"),  # fmt: skip
    ),
    Known(
        "redis-transaction-ttl-applies-even-when-the-write-fails",
        ("redis",),
        "daprd's Redis Multi queues, per upsert, the set script and then a separate EXPIRE (ttlInSeconds > 0) or "
        "PERSIST (<= 0) in one MULTI/EXEC, which does not roll back: when the set script fails (a first-write "
        "over a first-write key, an ETag mismatch) the TTL still changes. statelab puts the TTL into its script, "
        "so a failed set leaves the TTL alone. Seen only in the raw store (TTL of the key).",
        (req("POST", STATE, [{"key": "NS-k", "value": 1, "options": {"concurrency": "first-write"}}], headers=J),
         req("POST", f"{T}?metadata.ttlInSeconds=3600", {"operations": [{"operation": "upsert", "request": {
             "key": "NS-k", "value": 2, "options": {"concurrency": "first-write"}}}]}, headers=J)),  # fmt: skip
        lambda d: False,  # only a consequence: see taints
        taints=r"/transaction.*ttlInSeconds",
        shows=when(where=r"^store:\S+ ttl$"),
    ),
    Known(
        "redis-transaction-with-json-content-type-needs-redisjson",
        ("redis",),
        "In a transaction daprd's Redis store picks its RedisJSON scripts for every operation whose metadata says "
        "`contentType: application/json` (also through `?metadata.contentType=application/json`), without "
        "checking that the server has RedisJSON (Set does check): on a plain Redis the whole MULTI fails, 500 "
        "`error while executing state transaction: ERR Error running script (call to f_c5d8cabb8162d7f0980fe627a55d8"
        "3f54c800e66): @user_script:4: @user_script: 4: Unknown Redis command called from Lua script` (the other "
        "operations of the MULTI still run). statelab answers 204 and writes.",
        (req("POST", T, {"operations": [{"operation": "upsert", "request": {
            "key": "NS-k", "value": 1, "metadata": {"contentType": "application/json"}}}]}, headers=J),
         req("GET", f"{STATE}/NS-k", reads=("NS-k",))),  # fmt: skip
        when(request=REDIS_JSON_TRANSACTION),
        taints=REDIS_JSON_TRANSACTION,
    ),
    Known(
        "sqlite-bulk-get-of-a-repeated-key",
        ("sqlite",),
        "components-contrib's SQLite BulkGet runs one `IN (…)` query and then adds each requested key it did not "
        "find: a missing key asked twice is listed twice, a found key asked twice once, and the slots left over "
        "come last as `{\"key\":\"\"}`. `{\"keys\":[\"x\",\"b\",\"a\",\"x\",\"a\",\"b\"]}` with a and b stored gives "
        "a, b, x, x, \"\", \"\" (6 items); statelab answers a, b, x (3 items).",
        (req("POST", STATE, [{"key": "NS-a", "value": 1}], headers=J),
         req("POST", f"{STATE}/bulk", {"keys": ["NS-x", "NS-a", "NS-x", "NS-a"]}, headers=J, reads=("NS-a",))),
        lambda d: (d.where == "bulk keys" and isinstance(d.daprd, list) and isinstance(d.statelab, list)
                   and len(d.daprd) > len(d.statelab) and set(d.daprd) | {""} == set(d.statelab) | {""}),  # fmt: skip
    ),
    Known(
        "sqlite-transaction-checks-each-operation-in-turn",
        ("sqlite",),
        "components-contrib's SQLite Multi runs the operations one by one inside the SQL transaction and each "
        "checks its own options, TTL and ETag as it runs: `[upsert c with etag \"2\" (missing), upsert d with "
        "concurrency bogus]` is 500 `error while executing state transaction: possible etag mismatch. error from "
        "state store`. statelab validates every operation's options first: `…unrecognized concurrency model "
        "'bogus'`.",
        (req("POST", T, {"operations": [{"operation": "upsert", "request": {"key": "NS-c", "etag": "2"}},
                                        {"operation": "upsert", "request": {"key": "NS-d",
                                                                            "options": {"concurrency": "bogus"}}}]},
             headers=J),),  # fmt: skip
        when(request="/transaction", where="^message$", daprd="possible etag mismatch|error parsing TTL|strconv",
             statelab="unrecognized con|error parsing TTL"),  # fmt: skip
    ),
    Known(
        "json-nesting-limit-is-10000",
        STORES,
        "Go's encoding/json accepts nesting up to 10000 levels (daprd: 204 for a value nested 600 deep, which "
        "GET and bulk get return as saved) and beyond says `invalid character '[' exceeded max depth`. statelab "
        "refuses anything deeper than 512 with 400 ERR_MALFORMED_REQUEST `exceeded max depth` (and, for a "
        "body whose outer type is wrong, says so instead of daprd's `json: cannot unmarshal array into Go value "
        "of type state.SetRequest`); tests/server/test_fuzz.py pins the 512 limit without having checked it.",
        (req("POST", STATE, b'[{"key":"NS-k","value":' + b"[" * 600 + b"]" * 600 + b"}]", headers=J),
         req("GET", f"{STATE}/NS-k", reads=("NS-k",))),  # fmt: skip
        when(request=r"\[{250}"),
        taints=r"\[{250}",
    ),
    Known(
        "invalid-utf8-byte-is-named-as-a-latin-1-character",
        STORES,
        "Go's scanner names the offending byte, not a decoded character: a body starting with the UTF-8 BOM "
        "(EF BB BF) is 400 `invalid character 'ï' looking for beginning of value` (0xEF as U+00EF); statelab "
        "says `invalid character '\\ufeff' looking for beginning of value`.",
        (req("POST", STATE, b"\xef\xbb\xbf[]", headers=J),),
        when(where="^message$", daprd="invalid character '[\x80-\xff]'",
             statelab=r"invalid character '(\\\\u|[^\x00-\xff])"),  # fmt: skip
    ),
    Known(
        "type-error-inside-options-names-the-inner-struct",
        STORES,
        "encoding/json (Go 1.20+) names the innermost struct and the full field path: "
        "`[{\"key\":\"k\",\"options\":{\"concurrency\":1}}]` is 400 `json: cannot unmarshal number into Go struct "
        "field SetStateOption.options.Concurrency of type string` (SetStateOption has no json tags); statelab "
        "says `…Go struct field SetRequest.options.concurrency of type string`.",
        (req("POST", STATE, b'[{"key":"NS-k","options":{"concurrency":1}}]', headers=J),),
        when(where="^message$", daprd=r"Go struct field SetStateOption\.options\.",
             statelab=r"Go struct field SetRequest\.options\."),  # fmt: skip
    ),
)


def known(d: Divergence) -> Known | None:
    return next((k for k in KNOWN_DIVERGENCES if d.store in k.stores and k.matches(d)), None)


# --- the two stacks per store -------------------------------------------------------------------------------------


@dataclass
class Pair:
    """statelab's and daprd's stack on one store, and fresh key namespaces for sequences run on them."""

    store: str
    statelab: Stack
    daprd: Stack
    sides: Sides
    used: int = 0

    def fresh_namespace(self) -> str:
        self.used += 1
        return f"n{self.used}-"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Pair]]:
    """Start (on first use) one statelab and one daprd stack per store, each with its own store."""
    if DAPRD is None:
        pytest.fail(NO_DAPRD, pytrace=False)
    started: dict[str, Pair] = {}
    previous = os.environ.get("STATELAB_DAPRD")
    os.environ["STATELAB_DAPRD"] = DAPRD

    def get(store: str) -> Pair:
        if store not in started:
            stacks = {}
            for runtime in ("statelab", "daprd"):
                run_dir = tmp_path_factory.mktemp(f"differential-{runtime}-{store}")
                stack = make_stack(run_dir, store=store, replicas=0, app_id=APP_ID, runtime=runtime)
                stacks[runtime] = stack.start()
            dump = _dumper(store, stacks)
            sides = Sides(store, Client(stacks["statelab"].http_port), Client(stacks["daprd"].http_port), dump)
            started[store] = Pair(store, stacks["statelab"], stacks["daprd"], sides)
        return started[store]

    try:
        yield get
    finally:
        for pair in started.values():
            pair.sides.statelab.close()
            pair.sides.daprd.close()
            pair.statelab.stop()
            pair.daprd.stop()
        if previous is None:
            os.environ.pop("STATELAB_DAPRD", None)
        else:
            os.environ["STATELAB_DAPRD"] = previous


def _dumper(store: str, stacks: dict[str, Stack]) -> Callable[[str, Callable[[str], bool]], dict] | None:
    if store == "redis":
        clients = {side: redis.Redis.from_url(stack.redis_url()) for side, stack in stacks.items()}
        return lambda side, keep: dump_redis(clients[side], keep)
    if store == "sqlite":
        return lambda side, keep: dump_sqlite(_sqlite_file(stacks[side]), keep)
    return None  # in-memory: the read-back at the end of each sequence is all there is to see


def _sqlite_file(stack: Stack) -> Path:
    assert stack.run_dir is not None
    return stack.run_dir / "state.db"


# --- classifying what a run found ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    known: Counter[str]
    consequences: int
    unknown: list[Divergence]


TAINTS = [(k, re.compile(k.taints)) for k in KNOWN_DIVERGENCES if k.taints]


def classify(found: list[Divergence], steps: list[Step], ids: list[int] | None = None, store: str = "") -> Verdict:
    """Known divergences, differences that follow from a known one that may have changed state, and the rest."""
    verdict = Verdict(Counter(), 0, [])
    tainted_from: dict[str, int] = {}  # key -> first step that may have left it different
    for i, step in zip(ids if ids is not None else range(len(steps)), steps, strict=True):
        # An ETag read from a key that may differ may itself differ (one side read none, so sent none); a
        # write that involves a key that may differ may fail on one side only, and with it its other items.
        tainted_ref = any(tainted_from.get(ref.key, 1 << 30) < ref.step for ref in step.etag_refs())
        writes = step.method not in ("GET", "HEAD") and step.kind not in ("bulk", "readback")
        shares_fate = writes and any(tainted_from.get(key, 1 << 30) < i for key in step.touches)
        known_taint = writes and any(store in k.stores and p.search(step.describe()) for k, p in TAINTS)
        if tainted_ref or shares_fate or known_taint:
            for key in step.touches:
                tainted_from.setdefault(key, i)
    for d in sorted(found, key=lambda d: (d.step < 0, d.step)):  # the store contents come last
        entry = known(d)
        if entry is not None:
            verdict.known[entry.name] += 1
        elif any(tainted_from.get(key, 1 << 30) < d.step or d.step < 0 and key in tainted_from for key in d.keys):
            verdict.consequences += 1
        else:
            verdict.unknown.append(d)
    return verdict


def seeds() -> list[int]:
    if ONLY_SEQUENCE:
        return [int(ONLY_SEQUENCE)]
    return [BASE_SEED * 100_000 + i for i in range(SEQUENCES)]


def _explain(pair: Pair, seed: int, steps: list[Step], ns: str, first: Divergence) -> str:
    """The fewest steps that still show ``first`` (replayed on fresh keys), with both answers."""

    def still(found: list[Divergence], replayed: list[Step], ids: list[int]) -> bool:
        unknown = classify(found, replayed, ids, pair.store).unknown
        return any(d.where == first.where and d.step == first.step for d in unknown)

    ids, kept = shrink(pair.sides, steps, ns, pair.fresh_namespace, NAMESPACES, still)
    new = pair.fresh_namespace()
    replay = [s.renamed(ns, new) for s in kept]
    comp, _ = run_sequence(pair.sides, replay, seed, new, NAMESPACES, ids=ids)
    lines = [f"minimal reproducer ({len(kept)} of {len(steps)} steps; [n] = step number, keys under {new}):"]
    lines += [f"  [{i}] {s.describe()[:800]}" for i, s in zip(ids, replay, strict=True)]
    lines += ["  " + str(d).replace("\n", "\n  ") for d in classify(comp.found, replay, ids, pair.store).unknown]
    return "\n".join(lines)


# --- the tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES)
def test_statelab_answers_random_request_sequences_as_daprd_does(pairs: Callable[[str], Pair], store: str) -> None:
    pair = pairs(store)
    started = time.monotonic()
    sent = 0
    known_seen: Counter[str] = Counter()
    consequences = unknown = 0
    failures: list[str] = []
    for seed in seeds():
        ns = pair.fresh_namespace()
        steps = generate(seed, ns, STEPS)
        comp, n = run_sequence(pair.sides, steps, seed, ns, NAMESPACES)
        sent += n
        verdict = classify(comp.found, steps, store=store)
        known_seen.update(verdict.known)
        consequences += verdict.consequences
        unknown += len(verdict.unknown)
        if ONLY_SEQUENCE:
            print(f"sequence {seed} on {store}:")
            for i, step in enumerate(steps):
                print(f"  [{i}] {step.describe()[:800]}")
            for d in comp.found:
                print(f"  {'known: ' + k.name if (k := known(d)) else 'UNKNOWN'} {d}")
        if verdict.unknown and len(failures) < SHOWN:
            first = verdict.unknown[0]
            failures.append(
                f"sequence seed {seed} (STATELAB_DIFF_SEQUENCE={seed} to replay it, STATELAB_DIFF_SEED={BASE_SEED} "
                f"for the whole run): {len(verdict.unknown)} unknown divergences, the first:\n{first}\n"
                + _explain(pair, seed, steps, ns, first)
            )
    elapsed = time.monotonic() - started
    figures = ", ".join(f"{name} {n}" for name, n in sorted(known_seen.items()))
    run = f"sequence {ONLY_SEQUENCE}" if ONLY_SEQUENCE else f"seed {BASE_SEED}"
    RELIABILITY.append(
        f"differential fuzzing: {store} {sent} requests in {elapsed:.0f} s ({run}), {unknown} divergences, "
        f"{sum(known_seen.values())} known ({len(known_seen)} kinds: {figures or 'none'}) and {consequences} "
        "of their consequences"
    )
    assert sent >= (2000 if not ONLY_SEQUENCE else 1)
    assert not failures, "statelab answered differently from daprd:\n\n" + "\n\n".join(failures)


@pytest.mark.parametrize("store", ["sqlite"])
def test_the_sqlite_state_table_has_daprds_columns(pairs: Callable[[str], Pair], store: str) -> None:
    pair = pairs(store)
    probe = f'[{{"key":"{pair.fresh_namespace()}schema-probe","value":1}}]'.encode()
    for client in (pair.sides.statelab, pair.sides.daprd):  # each creates its table on the first write
        assert client.request("POST", STATE, list(J), probe).status == 204
    statelab = [row[1:] for row in sqlite_schema(_sqlite_file(pair.statelab))]
    daprd = [row[1:] for row in sqlite_schema(_sqlite_file(pair.daprd))]
    assert statelab == daprd


@pytest.mark.parametrize(
    "entry,store",
    [pytest.param(k, s, id=f"{k.name}-{s}",
                  marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                               reason=f"known divergence {k.name} (KNOWN_DIVERGENCES)"))
     for k in KNOWN_DIVERGENCES for s in k.stores],
)  # fmt: skip
def test_known_divergence_is_gone(pairs: Callable[[str], Pair], entry: Known, store: str) -> None:
    """Fails (xfail) while statelab still diverges; passes, so strictly fails, once fixed: remove the entry."""
    pair = pairs(store)
    ns = pair.fresh_namespace()
    steps = [s.renamed("NS-", ns) for s in entry.reproducer]
    comp, _ = run_sequence(pair.sides, steps, 0, ns, NAMESPACES)
    shown = [d for d in comp.found if (entry.shows or entry.matches)(d)]
    assert not shown, "\n".join(str(d) for d in shown)


# --- the normalisation rules, on their own ---------------------------------------------------------------------------


def test_errors_joined_in_another_order_compare_equal() -> None:
    prefix = "failed saving state in state store statestore: "
    daprd = prefix + "unrecognized consistency model 'y'\nunrecognized concurrency model 'x'\nstrconv.Atoi: bad"
    statelab = prefix + "unrecognized concurrency model 'x'\nstrconv.Atoi: bad\nunrecognized consistency model 'y'"
    assert joined_equal(daprd, statelab)
    assert not joined_equal(daprd, statelab.replace("'x'", "'z'"))
    assert not joined_equal(prefix + "a", prefix + "b")


def test_the_etag_error_daprd_picks_among_several_items_is_not_compared() -> None:
    mismatch = "failed saving state in state store statestore: possible etag mismatch. error from state store: "
    assert one_of_several(mismatch + "state not exist or expired for key=myapp||a") == one_of_several(
        mismatch + "state etag not match for key=myapp||b: current=1, expect=2")
    joined = mismatch + "x\ny"
    assert one_of_several(joined) == joined  # several errors joined: all of them are compared


def test_redis_values_compare_equal_in_any_member_order_but_not_any_spelling() -> None:
    assert stored_value(b'{"b":1,"a":[1.5,{"z":"<&>","y":null}]}', redis=True) == stored_value(
        b'{"a":[1.5,{"y":null,"z":"<&>"}],"b":1}', redis=True)
    assert stored_value(b'{"a":"<"}', redis=True) != stored_value(b'{"a":"\\u003c"}', redis=True)
    assert stored_value(b'{"b":1,"a":2}', redis=False) != stored_value(b'{"a":2,"b":1}', redis=False)


def test_uuid_etags_must_map_one_to_one_between_the_sides() -> None:
    comp = Comparison("in-memory", 0)
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    comp.etags("etag", a, b)
    comp.etags("etag", a, b)  # the same write read twice
    comp.etags("etag", c, d)  # another write
    assert comp.found == []
    comp.etags("etag", a, d)  # statelab kept its ETag where daprd handed out a new one
    comp.etags("etag", "1", d)
    assert [x.where for x in comp.found] == ["etag identity", "etag shape"]
