"""The sidecar's HTTP state API, checked against the contract (docs/dapr-behaviour.md §1–§12) on every store.

Each test that takes ``api`` runs six times: in-memory, sqlite and redis (one replica), each behind statelab's
sidecar and behind a real daprd (``RUNTIMES``), with the same assertions: daprd is the judge. A bad request is
checked twice: the error itself (status, ``errorCode``, the JSON body shape) and the store afterwards, by
reading back a canary value written before the request. Per-store expectations follow the §12 matrix and
are written as dicts keyed by ``api.store``.

Tests that only make sense on one store (the Redis hash layout, the SQLite table) narrow ``api`` with
``@pytest.mark.parametrize("api", targets(..., runtimes=RUNTIMES), indirect=True)``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pytest
import requests
from helpers import APP_ID, BOTH_RUNTIMES, STORE_NAME, Target, make_stack, targets, wait_until

from statelab.local import Stack

JSON = "application/json"
MAX_BODY = 4 * 1024 * 1024  # daprd's default --max-body-size (§1.3)
MISMATCH = "possible etag mismatch. error from state store"
SAVE_PREFIX = f"failed saving state in state store {STORE_NAME}: "
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DIRECT_INVOKE_MESSAGE = "failed getting app id either from the URL path or the header dapr-app-id"

# §9.2 (KEYS_LIKE since v1.17); "ACTOR" is appended because each has ETAG and TRANSACTIONAL.
CAPABILITIES = {
    "in-memory": ["ETAG", "TRANSACTIONAL", "TTL", "DELETE_WITH_PREFIX", "KEYS_LIKE", "ACTOR"],
    "sqlite": ["ETAG", "TRANSACTIONAL", "TTL", "KEYS_LIKE", "ACTOR"],
    "redis": ["ETAG", "TRANSACTIONAL", "TTL", "KEYS_LIKE", "ACTOR"],
}

RUNTIMES = BOTH_RUNTIMES
only_redis = pytest.mark.parametrize("api", targets("redis", runtimes=RUNTIMES), indirect=True)
only_sqlite = pytest.mark.parametrize("api", targets("sqlite", runtimes=RUNTIMES), indirect=True)


# --- helpers ---------------------------------------------------------------------------------------------


ANY_DETAILS: Any = object()  # for assert_error: a details list is required, the caller checks it


def assert_error(
    resp: requests.Response, status: int, code: str, message: str | None = None, details: Any = None
) -> dict[str, Any]:
    """A JSON error body (§2): status, errorCode, the exact message if given, and details only if expected."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("Content-Type") == JSON
    body = resp.json()
    assert body["errorCode"] == code, body
    if message is not None:
        assert body["message"] == message
    if details is None:
        assert set(body) == {"errorCode", "message"}, f"unexpected fields in {body}"
    elif details is ANY_DETAILS:
        assert set(body) == {"errorCode", "message", "details"}, body
    else:
        assert set(body) == {"errorCode", "message", "details"}, body
        assert body["details"] == details
    return body


def store_not_found_details() -> list[dict]:
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "domain": "dapr.io",
            "metadata": {"appID": APP_ID},
            "reason": "DAPR_STATE_NOT_FOUND",
        }
    ]


def illegal_key_message(key: str) -> str:
    return f"api error: code = InvalidArgument desc = input key/keyPrefix '{key}' can't contain '||'"


def assert_illegal_key(resp: requests.Response, key: str, *, transaction: bool = False) -> None:
    """400 ERR_MALFORMED_REQUEST with BadRequest, ResourceInfo and ErrorInfo DAPR_STATE_ILLEGAL_KEY (§2.1)."""
    message = illegal_key_message(key)
    body = assert_error(resp, 400, "ERR_MALFORMED_REQUEST", message, ANY_DETAILS)
    bad_request, resource_info, error_info = body["details"]
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    (violation,) = bad_request["field_violations"]
    assert violation["description"] == message
    if transaction:
        # daprd reports the emptied key; encoding/json then drops the field (`json:"field,omitempty"`).
        assert violation == {"description": message}
    else:
        assert violation == {"field": key, "description": message}
    assert resource_info == {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "description": "",
        "owner": "",
        "resource_name": STORE_NAME,
        "resource_type": "state",
    }
    assert error_info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "dapr.io",
        "metadata": None,
        "reason": "DAPR_STATE_ILLEGAL_KEY",
    }


def assert_mismatch(resp: requests.Response, api: Target, key: str, *, op: str, in_memory_detail: str) -> None:
    """409 for an ETag mismatch on save or delete, with each store's own inner text (§2.1)."""
    code, prefix = {
        "save": ("ERR_STATE_SAVE", SAVE_PREFIX),
        "delete": ("ERR_STATE_DELETE", f"failed deleting state with key {key}: "),
    }[op]
    message = assert_error(resp, 409, code)["message"]
    if api.store == "in-memory":
        assert message == f"{prefix}{MISMATCH}: {in_memory_detail}"
    elif api.store == "sqlite":
        assert message == prefix + MISMATCH  # sqlite's mismatch carries no inner text
    else:
        assert message.startswith(f"{prefix}{MISMATCH}: ")
        script_error = "failed to set key" if op == "save" else "failed to delete"
        assert f"{script_error} {APP_ID}||{key}" in message


def key_url(api: Target, key: str) -> str:
    """The URL of any key, escaped as daprd expects (``/`` as %2F, ``+`` as %2B)."""
    return api.state_url(quote(key, safe=""))


def write(api: Target, key: str, value: Any = "v", **fields: Any) -> str:
    """Save one item (expecting 204) and return its new ETag."""
    resp = api.save({"key": key, "value": value, **fields})
    assert resp.status_code == 204, resp.text
    got = api.http.get(key_url(api, key))
    assert got.status_code == 200, got.text
    return got.headers["ETag"]


def read(api: Target, key: str) -> tuple[bytes, str] | None:
    """(raw value, ETag) of a key, or None when the sidecar answers 204."""
    resp = api.http.get(key_url(api, key))
    if resp.status_code == 204:
        assert resp.content == b""
        assert "ETag" not in resp.headers
        return None
    assert resp.status_code == 200, resp.text
    return resp.content, resp.headers["ETag"]


def value_of(api: Target, key: str) -> Any:
    """The JSON value stored under a key, or None when it is missing."""
    found = read(api, key)
    return None if found is None else json.loads(found[0])


def bulk(api: Target, keys: list[str], method: str = "POST") -> list[dict[str, Any]]:
    resp = api.http.request(method, api.state_url("bulk"), json={"keys": keys})
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("Content-Type") == JSON
    assert resp.content.endswith(b"\n"), "Go's json.Encoder ends the array with a newline"
    return resp.json()


def transact(api: Target, *operations: dict, method: str = "POST", **kwargs: Any) -> requests.Response:
    return api.http.request(method, api.state_url("transaction"), json={"operations": list(operations)}, **kwargs)


def upsert(key: str, value: Any, **request: Any) -> dict:
    return {"operation": "upsert", "request": {"key": key, "value": value, **request}}


def remove(key: str, **request: Any) -> dict:
    return {"operation": "delete", "request": {"key": key, **request}}


def has_ttl_header(resp: requests.Response) -> bool:
    return "metadata.ttlExpireTime" in resp.headers  # requests' headers are case-insensitive


def sqlite_row(api: Target, key: str) -> dict[str, Any] | None:
    """The raw row of a key in the sidecar's SQLite file (local.py points connectionString at run_dir/state.db)."""
    assert api.stack.run_dir is not None
    with sqlite3.connect(api.stack.run_dir / "state.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM state WHERE key = ?", (f"{APP_ID}||{key}",)).fetchone()
    return None if row is None else dict(row)


@dataclass
class Canary:
    """A value written before a bad request; ``assert_unchanged`` proves the request wrote nothing to it."""

    api: Target
    key: str
    raw: bytes
    etag: str

    def assert_unchanged(self) -> None:
        found = read(self.api, self.key)
        assert found is not None, f"canary {self.key} was deleted"
        assert found == (self.raw, self.etag), f"canary {self.key} was rewritten"


@pytest.fixture
def canary(api: Target) -> Canary:
    key = api.key("canary")
    write(api, key, {"canary": key})
    found = read(api, key)
    assert found is not None
    return Canary(api, key, *found)


# --- save (§3) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_save_is_204_with_an_empty_body_for_post_and_put(api: Target, method: str) -> None:
    key = api.key()
    resp = api.http.request(method, api.state_url(), json=[{"key": key, "value": "hello"}])
    assert resp.status_code == 204
    assert resp.content == b""
    assert read(api, key) is not None
    assert api.get(key).content == b'"hello"'


def test_save_of_several_items_writes_each_of_them(api: Target) -> None:
    keys = [api.key() for _ in range(3)]
    assert api.save(*({"key": key, "value": i} for i, key in enumerate(keys))).status_code == 204
    assert [value_of(api, key) for key in keys] == [0, 1, 2]


@pytest.mark.parametrize("body", [b"[]", b"null"])
def test_save_of_an_empty_array_or_null_is_204_and_writes_nothing(api: Target, canary: Canary, body: bytes) -> None:
    resp = api.http.post(api.state_url(), data=body)
    assert resp.status_code == 204
    assert resp.content == b""
    canary.assert_unchanged()


def test_save_ignores_unknown_fields_and_stores_a_missing_value_as_null(api: Target) -> None:
    key = api.key()
    resp = api.http.post(api.state_url(), data=json.dumps([{"key": key, "vae": "x", "colour": 1}]))
    assert resp.status_code == 204
    assert api.get(key).content == b"null"


def test_save_matches_item_field_names_case_insensitively(api: Target, canary: Canary) -> None:
    key = api.key()
    resp = api.http.post(api.state_url(), data=json.dumps([{"KEY": key, "Value": 7}]))
    assert resp.status_code == 204
    assert value_of(api, key) == 7
    resp = api.http.post(
        api.state_url(), data=json.dumps([{"Key": canary.key, "value": 1, "Options": {"CONCURRENCY": "bogus"}}])
    )
    assert_error(resp, 500, "ERR_STATE_SAVE", f"{SAVE_PREFIX}unrecognized concurrency model 'bogus'")
    canary.assert_unchanged()


def test_save_ignores_an_if_match_header(api: Target) -> None:
    key = api.key()
    stale = write(api, key, "v1")
    write(api, key, "v2")
    assert api.save({"key": key, "value": "v3"}, headers={"If-Match": stale}).status_code == 204
    assert value_of(api, key) == "v3"


def test_save_reads_only_the_first_json_value_of_the_body(api: Target) -> None:
    key = api.key()
    resp = api.http.post(api.state_url(), data=json.dumps([{"key": key, "value": 1}]).encode() + b" trailing junk")
    assert resp.status_code == 204
    assert value_of(api, key) == 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        pytest.param({"key": "k", "value": 1}, "object", id="object"),
        pytest.param("text", "string", id="string"),
        pytest.param(42, "number", id="number"),
        pytest.param(True, "bool", id="bool"),
    ],
)
def test_save_of_a_body_that_is_not_an_array_is_400(api: Target, canary: Canary, body: Any, kind: str) -> None:
    if isinstance(body, dict):
        body = {**body, "key": canary.key}
    resp = api.http.post(api.state_url(), json=body)
    assert_error(
        resp, 400, "ERR_MALFORMED_REQUEST", f"json: cannot unmarshal {kind} into Go value of type []state.SetRequest"
    )
    canary.assert_unchanged()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "EOF", id="empty"),
        pytest.param(b"[{", None, id="truncated"),
        pytest.param(b"[{'key': 'k'}]", None, id="single-quotes"),
        pytest.param(b"not json", None, id="garbage"),
    ],
)
def test_save_of_invalid_json_is_400(api: Target, canary: Canary, body: bytes, message: str | None) -> None:
    assert_error(api.http.post(api.state_url(), data=body), 400, "ERR_MALFORMED_REQUEST", message)
    canary.assert_unchanged()


@pytest.mark.parametrize(
    "item", [{"value": 1}, {"key": "", "value": 1}, {"key": None, "value": 1}], ids=["missing", "empty", "null"]
)
def test_save_of_an_item_without_a_key_is_400(api: Target, canary: Canary, item: dict) -> None:
    resp = api.http.post(api.state_url(), json=[item])
    assert_error(resp, 400, "ERR_MALFORMED_REQUEST", '"key" is a required field')
    canary.assert_unchanged()


def test_save_checks_every_key_before_writing_any_item(api: Target, canary: Canary) -> None:
    first = api.key()
    resp = api.save({"key": canary.key, "value": "overwritten"}, {"key": first, "value": 1}, {"value": 2})
    assert_error(resp, 400, "ERR_MALFORMED_REQUEST", '"key" is a required field')
    canary.assert_unchanged()
    assert read(api, first) is None


def test_save_of_a_key_containing_a_double_pipe_is_400_with_details(api: Target, canary: Canary) -> None:
    bad = f"a||{api.key()}"
    resp = api.save({"key": canary.key, "value": "overwritten"}, {"key": bad, "value": 1})
    assert_illegal_key(resp, bad)
    canary.assert_unchanged()


def test_save_with_a_numeric_etag_is_400(api: Target, canary: Canary) -> None:
    resp = api.http.post(api.state_url(), data=f'[{{"key":"{canary.key}","value":1,"etag":1}}]')
    assert_error(
        resp,
        400,
        "ERR_MALFORMED_REQUEST",
        "json: cannot unmarshal number into Go struct field SetRequest.etag of type string",
    )
    canary.assert_unchanged()


@pytest.mark.parametrize("value", [60, True, {"n": 1}], ids=["number", "bool", "object"])
def test_save_with_a_non_string_metadata_value_is_400(api: Target, canary: Canary, value: Any) -> None:
    resp = api.save({"key": canary.key, "value": "overwritten", "metadata": {"ttlInSeconds": value}})
    message = assert_error(resp, 400, "ERR_MALFORMED_REQUEST")["message"]
    assert message.startswith("json: cannot unmarshal ")
    canary.assert_unchanged()


@pytest.mark.parametrize("option", ["concurrency", "consistency"])
def test_save_with_an_unknown_concurrency_or_consistency_is_500(api: Target, canary: Canary, option: str) -> None:
    resp = api.save({"key": canary.key, "value": "overwritten", "options": {option: "bogus"}})
    assert_error(resp, 500, "ERR_STATE_SAVE", f"{SAVE_PREFIX}unrecognized {option} model 'bogus'")
    canary.assert_unchanged()


def test_save_with_known_options_is_204(api: Target) -> None:
    key = api.key()
    resp = api.save({"key": key, "value": 1, "options": {"concurrency": "last-write", "consistency": "strong"}})
    assert resp.status_code == 204
    assert value_of(api, key) == 1


def test_save_of_a_body_over_4_mib_is_400(api: Target, canary: Canary) -> None:
    body = json.dumps([{"key": canary.key, "value": "x" * MAX_BODY}]).encode()
    assert len(body) > MAX_BODY
    assert_error(api.http.post(api.state_url(), data=body), 400, "ERR_MALFORMED_REQUEST")
    canary.assert_unchanged()


@pytest.mark.parametrize("route", ["save", "bulk", "transaction"])
def test_a_small_first_value_followed_by_more_than_4_mib_is_read_as_that_value(api: Target, route: str) -> None:
    # daprd's decoder reads one JSON value through a 4 MiB-limited stream: what follows it is never read.
    key = api.key()
    first = {"save": [{"key": key, "value": "kept"}], "bulk": {"keys": [key]},
             "transaction": {"operations": [upsert(key, "kept")]}}[route]
    body = json.dumps(first).encode() + b" " + b"x" * (MAX_BODY + 10)
    url = api.state_url() if route == "save" else api.state_url(route)
    resp = api.http.post(url, data=body)
    if route == "bulk":
        assert (resp.status_code, resp.json()) == (200, [{"key": key}])
    else:
        assert resp.status_code == 204 and value_of(api, key) == "kept"


def test_a_first_value_running_past_4_mib_is_stream_too_large(api: Target, canary: Canary) -> None:
    body = b'[{"key":"' + canary.key.encode() + b'","value":' + b"1" * (MAX_BODY + 10) + b"}]"
    assert_error(api.http.post(api.state_url(), data=body), 400, "ERR_MALFORMED_REQUEST", "stream too large")
    canary.assert_unchanged()


def test_save_of_a_body_just_under_4_mib_is_204(api: Target) -> None:
    key = api.key()
    padding = MAX_BODY - len(json.dumps([{"key": key, "value": ""}])) - 16
    resp = api.save({"key": key, "value": "x" * padding})
    assert resp.status_code == 204
    assert len(api.get(key).content) == padding + 2


@pytest.mark.parametrize("etag_kind", ["stale", "non-numeric"])
def test_multi_item_save_with_one_bad_etag_writes_the_others(api: Target, etag_kind: str) -> None:
    first, conflicted, last = api.key(), api.key(), api.key()
    stale = write(api, conflicted, "v1")
    current = write(api, conflicted, "v2")
    etag = stale if etag_kind == "stale" else "not-a-number"
    resp = api.save(
        {"key": first, "value": "written"},
        {"key": conflicted, "value": "lost", "etag": etag},
        {"key": last, "value": "written"},
    )
    # All failures are ETag errors, so the joined error is wrapped once more (the prefix appears twice).
    if etag_kind == "non-numeric" and api.store == "redis":
        message = assert_error(resp, 400, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}invalid etag value: invalid etag value: strconv.Atoi")
    else:
        message = assert_error(resp, 409, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}{MISMATCH}: {MISMATCH}")
    assert value_of(api, first) == "written"
    assert value_of(api, last) == "written"
    assert read(api, conflicted) == (b'"v2"', current)


@pytest.mark.parametrize("etag_kind", ["stale", "non-numeric"])
def test_multi_item_save_mixing_an_etag_failure_and_another_reports_only_the_etag_failure(
        api: Target, etag_kind: str) -> None:
    # Settled with daprd 1.18.3: its handler finds the ETag error inside the joined error (errors.As) and
    # answers with it alone; the bad TTL's error is not in the message.
    good, conflicted, bad_ttl = api.key(), api.key(), api.key()
    write(api, conflicted, "v1")
    current = write(api, conflicted, "v2")
    etag = ("1" if api.store == "redis" else "stale") if etag_kind == "stale" else "not-a-number"
    resp = api.save(
        {"key": good, "value": "written"},
        {"key": conflicted, "value": "lost", "etag": etag},
        {"key": bad_ttl, "value": 2, "metadata": {"ttlInSeconds": "soon"}},
    )
    if etag_kind == "non-numeric" and api.store == "redis":
        message = assert_error(resp, 400, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}invalid etag value: strconv.Atoi")
    else:
        message = assert_error(resp, 409, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}{MISMATCH}") and f"{MISMATCH}: {MISMATCH}" not in message
    assert "soon" not in message and "\n" not in message
    assert value_of(api, good) == "written"
    assert read(api, conflicted) == (b'"v2"', current)
    assert read(api, bad_ttl) is None


def test_multi_item_save_with_one_bad_ttl_is_500_and_writes_the_others(api: Target) -> None:
    good, bad = api.key(), api.key()
    resp = api.save({"key": good, "value": 1}, {"key": bad, "value": 2, "metadata": {"ttlInSeconds": "soon"}})
    assert_error(resp, 500, "ERR_STATE_SAVE")
    assert value_of(api, good) == 1
    assert read(api, bad) is None


# --- unknown store and illegal keys, on every route (§2.1) -------------------------------------------------


def _route_requests(api: Target, key: str) -> dict[str, tuple[str, str, Any]]:
    """One well-formed request per state route on the store "nope", touching ``key``."""
    return {
        "save": ("POST", api.state_url(store="nope"), [{"key": key, "value": "overwritten"}]),
        "get": ("GET", api.state_url(key, store="nope"), None),
        "delete": ("DELETE", api.state_url(key, store="nope"), None),
        "bulk": ("POST", api.state_url("bulk", store="nope"), {"keys": [key]}),
        "transaction": ("POST", api.state_url("transaction", store="nope"), {"operations": [remove(key)]}),
    }


@pytest.mark.parametrize("route", ["save", "get", "delete", "bulk", "transaction"])
def test_an_unknown_store_is_400_store_not_found_on_every_route(api: Target, canary: Canary, route: str) -> None:
    method, url, body = _route_requests(api, canary.key)[route]
    resp = api.http.request(method, url, json=body)
    assert_error(resp, 400, "ERR_STATE_STORE_NOT_FOUND", "state store nope is not found", store_not_found_details())
    canary.assert_unchanged()


def test_the_store_not_found_body_is_byte_for_byte_dapr_s(api: Target) -> None:
    resp = api.http.get(api.state_url("k", store="nope"))
    assert resp.content == (
        b'{"errorCode":"ERR_STATE_STORE_NOT_FOUND","message":"state store nope is not found","details":'
        b'[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io","metadata":{"appID":"myapp"},'
        b'"reason":"DAPR_STATE_NOT_FOUND"}]}'
    )


def test_get_of_a_key_containing_a_double_pipe_is_400_with_details(api: Target) -> None:
    assert_illegal_key(api.get("a||b"), "a||b")


def test_delete_of_a_key_containing_a_double_pipe_is_400_with_details(api: Target) -> None:
    assert_illegal_key(api.delete("a||b"), "a||b")


def test_bulk_get_of_a_key_containing_a_double_pipe_is_400_with_details(api: Target) -> None:
    resp = api.http.post(api.state_url("bulk"), json={"keys": [api.key(), "a||b"]})
    assert_illegal_key(resp, "a||b")


@pytest.mark.parametrize("operation", ["upsert", "delete"])
def test_transaction_op_with_a_double_pipe_key_is_400_with_an_empty_field(
    api: Target, canary: Canary, operation: str
) -> None:
    bad = upsert("a||b", 1) if operation == "upsert" else remove("a||b")
    resp = transact(api, upsert(canary.key, "overwritten"), bad)
    # daprd overwrites the key with "" before building the violation, so only the message names it.
    assert_illegal_key(resp, "a||b", transaction=True)
    canary.assert_unchanged()


# --- get (§4) --------------------------------------------------------------------------------------------


def test_get_is_200_with_the_value_an_etag_and_json_content_type(api: Target) -> None:
    key = api.key()
    api.save({"key": key, "value": {"n": 1}})
    resp = api.get(key)
    assert resp.status_code == 200
    assert resp.content == b'{"n":1}'
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["ETag"]
    assert not has_ttl_header(resp)


def test_get_of_a_missing_key_is_204_without_body_or_etag(api: Target) -> None:
    resp = api.get(api.key("missing"))
    assert resp.status_code == 204
    assert resp.content == b""
    assert "ETag" not in resp.headers


@pytest.mark.parametrize("consistency", ["strong", "eventual", "bogus"])
def test_get_accepts_any_consistency_without_validating_it(api: Target, consistency: str) -> None:
    key = api.key()
    etag = write(api, key, "v")
    resp = api.get(key, params={"consistency": consistency})
    assert resp.status_code == 200
    assert resp.headers["ETag"] == etag


def test_get_of_a_string_value_returns_it_as_a_quoted_json_string(api: Target) -> None:
    key = api.key()
    write(api, key, "hello")
    assert api.get(key).content == b'"hello"'


# Sent as raw bytes so the document order, 2.50, 1.0 and 1e-7 reach the sidecar exactly as written.
VALUE_DOCUMENT = (
    '{"zeta":1.0,"alpha":"<b>&</b>","pi":3.14159265,"half":2.50,"tiny":1e-7,'
    '"big":12345678901234567890,"list":[1,"x>y"],"nested":{"b":true,"a":null},'
    r'"text":"\u00e9\u2028\n\u0001"}'
)
VALUE_AS_STORED = {
    # Go encoding/json: sorted keys, HTML escaped, every number through float64, shortest repr.
    "in-memory": (
        b'{"alpha":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e","big":12345678901234567000,"half":2.5,'
        b'"list":[1,"x\\u003ey"],"nested":{"a":null,"b":true},"pi":3.14159265,'
        b'"text":"\xc3\xa9\\u2028\\n\\u0001","tiny":1e-7,"zeta":1}'
    ),
    # jsoniter ConfigFastest: no HTML escaping, floats rounded to 6 decimals. The key order of a Go map is
    # random in daprd (seen: a new order on every write); the sidecar keeps document order, the one
    # deterministic choice, so the test compares members, not their order (docs/fidelity.md).
    "redis": (
        b'{"zeta":1,"alpha":"<b>&</b>","pi":3.141593,"half":2.5,"tiny":0,'
        b'"big":12345678901234567000,"list":[1,"x>y"],"nested":{"b":true,"a":null},'
        b'"text":"\xc3\xa9\xe2\x80\xa8\\n\\u0001"}'
    ),
}
VALUE_AS_STORED["sqlite"] = VALUE_AS_STORED["in-memory"]


def test_get_returns_the_value_as_each_store_re_encodes_it(api: Target) -> None:
    key = api.key()
    body = f'[{{"key":"{key}","value":{VALUE_DOCUMENT}}}]'
    assert api.http.post(api.state_url(), data=body.encode()).status_code == 204
    content, expected = api.get(key).content, VALUE_AS_STORED[api.store]
    if api.store != "redis":
        assert content == expected
        return
    assert json.loads(content) == json.loads(expected) and len(content) == len(expected)
    for member in (b'"zeta":1,', b'"alpha":"<b>&</b>"', b'"pi":3.141593', b'"tiny":0', b'"big":12345678901234567000',
                   b'"text":"\xc3\xa9\xe2\x80\xa8\\n\\u0001"'):
        assert member.rstrip(b",") in content
    # Members of a nested object come in a Go map's random order on daprd, in document order on the sidecar.
    assert b'"nested":{"b":true,"a":null}' in content or b'"nested":{"a":null,"b":true}' in content


def test_get_of_a_key_with_an_escaped_slash_works(api: Target) -> None:
    key = f"dir/{api.key()}"
    write(api, key, "slashed")
    resp = api.http.get(api.state_url(quote(key, safe="")))
    assert resp.status_code == 200
    assert resp.content == b'"slashed"'
    assert api.http.delete(api.state_url(quote(key, safe=""))).status_code == 204
    assert api.http.get(api.state_url(quote(key, safe=""))).status_code == 204


def test_a_plus_in_the_path_decodes_to_a_space(api: Target) -> None:
    spaced, plussed = f"a b-{api.key()}", f"a+b-{api.key()}"
    write(api, spaced, "space")
    write(api, plussed, "plus")
    assert api.http.get(api.state_url(spaced.replace(" ", "+"))).content == b'"space"'
    assert api.http.get(api.state_url(plussed.replace("+", "%2B"))).content == b'"plus"'
    assert api.http.get(api.state_url(plussed)).status_code == 204  # asks for "a b-…", which does not exist


def test_get_of_the_key_named_bulk_is_a_plain_get(api: Target) -> None:
    marker = api.key("marker")
    write(api, "bulk", marker)
    resp = api.http.get(api.state_url("bulk"))
    assert resp.status_code == 200
    assert resp.json() == marker
    assert api.http.delete(api.state_url("bulk")).status_code == 204
    assert api.http.get(api.state_url("bulk")).status_code == 204


# --- bulk get (§5) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bulk_get_returns_found_items_with_data_and_etag_and_missing_ones_as_key_only(api: Target, method: str) -> None:
    found, missing = api.key("found"), api.key("missing")
    etag = write(api, found, {"b": 2, "a": 1})
    items = bulk(api, [found, missing], method=method)
    by_key = {item["key"]: item for item in items}
    assert by_key[missing] == {"key": missing}
    assert by_key[found] == {"key": found, "data": {"b": 2, "a": 1}, "etag": etag}


@pytest.mark.parametrize("parallelism", [-1, 0, 1, 10])
def test_bulk_get_embeds_the_stored_bytes_as_data_whatever_the_parallelism(api: Target, parallelism: int) -> None:
    key = api.key()
    write(api, key, {"b": 2, "a": 1})
    raw = api.get(key).content
    resp = api.http.post(api.state_url("bulk"), json={"keys": [key], "parallelism": parallelism})
    assert resp.status_code == 200
    assert b'"data":' + raw in resp.content


def test_bulk_get_orders_items_by_request_except_sqlite_which_lists_found_rows_first(api: Target) -> None:
    found = [api.key("found") for _ in range(3)]
    missing = [api.key("missing") for _ in range(2)]
    for key in found:
        write(api, key, key)
    request = [missing[0], found[2], found[0], missing[1], found[1]]
    items = bulk(api, request)
    keys = [item["key"] for item in items]
    if api.store == "sqlite":
        assert sorted(keys[:3]) == sorted(found)  # database order
        assert keys[3:] == missing  # then the missing keys, in request order
    else:
        assert keys == request
    for item in items:
        if item["key"] in missing:
            assert item == {"key": item["key"]}
        else:
            assert item["data"] == item["key"]


@pytest.mark.parametrize("body", [b"{}", b'{"keys":[]}', b'{"keys":null}'])
def test_bulk_get_of_no_keys_is_an_empty_array(api: Target, body: bytes) -> None:
    resp = api.http.post(api.state_url("bulk"), data=body)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == JSON
    assert resp.content == b"[]\n"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"", "EOF", id="empty"),
        pytest.param(b"not json", None, id="garbage"),
        pytest.param(b'["k"]', None, id="array"),
        pytest.param(b'{"keys":"k"}', None, id="keys-not-a-list"),
        pytest.param(b'{"keys":[1]}', None, id="numeric-key"),
    ],
)
def test_bulk_get_with_an_undecodable_body_is_400(api: Target, body: bytes, detail: str | None) -> None:
    resp = api.http.post(api.state_url("bulk"), data=body)
    message = assert_error(resp, 400, "ERR_MALFORMED_REQUEST")["message"]
    assert message.startswith("failed deserializing HTTP body: ")
    if detail is not None:
        assert message == f"failed deserializing HTTP body: {detail}"


def test_bulk_get_returns_keys_without_the_app_prefix_and_with_slashes(api: Target) -> None:
    key = f"dir/{api.key()}"
    write(api, key, 1)
    (item,) = bulk(api, [key])
    assert item["key"] == key


# --- delete (§6) -----------------------------------------------------------------------------------------


def test_delete_is_204_and_removes_the_value(api: Target) -> None:
    key = api.key()
    write(api, key)
    resp = api.delete(key)
    assert resp.status_code == 204
    assert resp.content == b""
    assert read(api, key) is None


def test_delete_of_a_missing_key_is_204(api: Target) -> None:
    assert api.delete(api.key("missing")).status_code == 204


def test_delete_with_the_current_etag_is_204(api: Target) -> None:
    key = api.key()
    etag = write(api, key)
    assert api.delete(key, headers={"If-Match": etag}).status_code == 204
    assert read(api, key) is None


def test_delete_with_stale_etag_is_409(api: Target) -> None:
    key = api.key()
    stale = write(api, key, "v1")
    current = write(api, key, "v2")
    resp = api.delete(key, headers={"If-Match": stale})
    detail = f"state etag not match for key={APP_ID}||{key}: current={current}, expect={stale}"
    assert_mismatch(resp, api, key, op="delete", in_memory_detail=detail)
    assert read(api, key) == (b'"v2"', current)


def test_delete_with_a_non_numeric_etag_is_409_on_every_store(api: Target) -> None:
    key = api.key()
    current = write(api, key)
    resp = api.delete(key, headers={"If-Match": "not-a-number"})
    detail = f"state etag not match for key={APP_ID}||{key}: current={current}, expect=not-a-number"
    assert_mismatch(resp, api, key, op="delete", in_memory_detail=detail)
    assert read(api, key) == (b'"v"', current)


def test_delete_with_an_empty_if_match_counts_as_no_etag(api: Target) -> None:
    key = api.key()
    write(api, key)
    assert api.delete(key, headers={"If-Match": ""}).status_code == 204
    assert read(api, key) is None


def test_delete_with_an_etag_of_a_missing_key_is_204_on_redis_and_409_elsewhere(api: Target) -> None:
    key = api.key("missing")
    resp = api.delete(key, headers={"If-Match": "1"})
    if api.store == "redis":
        assert resp.status_code == 204
    else:
        assert_mismatch(
            resp, api, key, op="delete", in_memory_detail=f"state not exist or expired for key={APP_ID}||{key}"
        )
    assert read(api, key) is None


def test_delete_with_first_write_and_no_etag_is_409_only_on_in_memory(api: Target) -> None:
    key = api.key()
    etag = write(api, key)
    resp = api.delete(key, params={"concurrency": "first-write"})
    if api.store == "in-memory":
        assert_mismatch(resp, api, key, op="delete", in_memory_detail="item already exists and no etag was passed")
        assert read(api, key) == (b'"v"', etag)
    else:
        assert resp.status_code == 204
        assert read(api, key) is None


@pytest.mark.parametrize("option", ["concurrency", "consistency"])
def test_delete_with_an_unknown_concurrency_or_consistency_is_500(api: Target, canary: Canary, option: str) -> None:
    resp = api.delete(canary.key, params={option: "bogus"})
    assert_error(
        resp,
        500,
        "ERR_STATE_DELETE",
        f"failed deleting state with key {canary.key}: unrecognized {option} model 'bogus'",
    )
    canary.assert_unchanged()


# --- ETag semantics per store (§12 matrix) ---------------------------------------------------------------


def test_etags_are_versions_on_redis_and_fresh_uuids_elsewhere(api: Target) -> None:
    key = api.key()
    etags = [write(api, key, i) for i in range(3)]
    if api.store == "redis":
        assert etags == ["1", "2", "3"]
    else:
        assert all(UUID4.match(etag) for etag in etags), etags
        assert len(set(etags)) == 3


def test_save_with_the_current_etag_is_204_and_changes_the_etag(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1")
    assert api.save({"key": key, "value": "v2", "etag": etag}).status_code == 204
    found = read(api, key)
    assert found is not None and found[0] == b'"v2"' and found[1] != etag


def test_save_with_a_wrong_etag_is_409_and_keeps_the_value(api: Target, canary: Canary) -> None:
    resp = api.save({"key": canary.key, "value": "overwritten", "etag": "9999999"})
    detail = f"state etag not match for key={APP_ID}||{canary.key}: current={canary.etag}, expect=9999999"
    assert_mismatch(resp, api, canary.key, op="save", in_memory_detail=detail)
    canary.assert_unchanged()


def test_save_with_an_etag_on_a_missing_key_creates_version_1_on_redis_and_is_409_elsewhere(api: Target) -> None:
    key = api.key("missing")
    resp = api.save({"key": key, "value": "new", "etag": "5"})
    if api.store == "redis":
        assert resp.status_code == 204
        assert read(api, key) == (b'"new"', "1")
    else:
        assert_mismatch(
            resp, api, key, op="save", in_memory_detail=f"state not exist or expired for key={APP_ID}||{key}"
        )
        assert read(api, key) is None


def test_last_write_with_a_stale_etag_ignores_the_etag_on_redis_and_is_409_elsewhere(api: Target) -> None:
    key = api.key()
    stale = write(api, key, "v1")
    current = write(api, key, "v2")
    resp = api.save({"key": key, "value": "v3", "etag": stale, "options": {"concurrency": "last-write"}})
    if api.store == "redis":
        assert resp.status_code == 204
        assert read(api, key) == (b'"v3"', "3")
    else:
        detail = f"state etag not match for key={APP_ID}||{key}: current={current}, expect={stale}"
        assert_mismatch(resp, api, key, op="save", in_memory_detail=detail)
        assert read(api, key) == (b'"v2"', current)


def test_save_with_a_non_numeric_etag_is_400_invalid_on_redis_and_409_elsewhere(api: Target, canary: Canary) -> None:
    resp = api.save({"key": canary.key, "value": "overwritten", "etag": "abc"})
    if api.store == "redis":
        assert_error(
            resp, 400, "ERR_STATE_SAVE", f'{SAVE_PREFIX}invalid etag value: strconv.Atoi: parsing "abc": invalid syntax'
        )
    else:
        detail = f"state etag not match for key={APP_ID}||{canary.key}: current={canary.etag}, expect=abc"
        assert_mismatch(resp, api, canary.key, op="save", in_memory_detail=detail)
    canary.assert_unchanged()


def test_last_write_with_a_non_numeric_etag_is_204_on_redis_and_409_elsewhere(api: Target) -> None:
    key = api.key()
    current = write(api, key, "v1")
    resp = api.save({"key": key, "value": "v2", "etag": "abc", "options": {"concurrency": "last-write"}})
    if api.store == "redis":
        assert resp.status_code == 204
        assert value_of(api, key) == "v2"
    else:
        assert resp.status_code == 409
        assert read(api, key) == (b'"v1"', current)


def test_an_etag_of_zero_means_no_etag_on_redis_and_is_409_elsewhere(api: Target) -> None:
    key = api.key()
    current = write(api, key, "v1")
    saved = api.save({"key": key, "value": "v2", "etag": "0"})
    deleted = api.delete(key, headers={"If-Match": "0"})
    if api.store == "redis":
        assert saved.status_code == 204
        assert deleted.status_code == 204
        assert read(api, key) is None
    else:
        assert saved.status_code == 409
        assert deleted.status_code == 409
        assert read(api, key) == (b'"v1"', current)


@pytest.mark.parametrize("etag", ["", None], ids=["empty", "null"])
def test_an_empty_or_null_etag_counts_as_no_etag(api: Target, etag: str | None) -> None:
    key = api.key()
    write(api, key, "v1")
    assert api.save({"key": key, "value": "v2", "etag": etag}).status_code == 204
    assert value_of(api, key) == "v2"


def test_first_write_on_a_missing_key_is_204(api: Target) -> None:
    key = api.key()
    resp = api.save({"key": key, "value": "first", "options": {"concurrency": "first-write"}})
    assert resp.status_code == 204
    assert value_of(api, key) == "first"


def test_first_write_with_the_current_etag_is_204(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1", options={"concurrency": "first-write"})
    resp = api.save({"key": key, "value": "v2", "etag": etag, "options": {"concurrency": "first-write"}})
    assert resp.status_code == 204
    assert value_of(api, key) == "v2"


def test_first_write_without_etag_on_an_existing_key_is_409_except_on_redis(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1")
    resp = api.save({"key": key, "value": "v2", "options": {"concurrency": "first-write"}})
    if api.store == "redis":
        assert resp.status_code == 204  # the key was not written with first-write
        assert read(api, key) == (b'"v2"', "2")
    else:
        assert_mismatch(resp, api, key, op="save", in_memory_detail="item already exists and no etag was passed")
        assert read(api, key) == (b'"v1"', etag)


def test_first_write_without_etag_on_a_first_write_key_is_500_on_redis_and_409_elsewhere(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1", options={"concurrency": "first-write"})
    resp = api.save({"key": key, "value": "v2", "options": {"concurrency": "first-write"}})
    if api.store == "redis":
        message = assert_error(resp, 500, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}failed to set key {APP_ID}||{key}: ")
    else:
        assert_mismatch(resp, api, key, op="save", in_memory_detail="item already exists and no etag was passed")
    assert read(api, key) == (b'"v1"', etag)


def test_a_plain_save_over_a_first_write_key_fails_only_on_redis(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1", options={"concurrency": "first-write"})
    resp = api.save({"key": key, "value": "v2"})
    if api.store == "redis":
        # The sticky first-write marker makes every later write without the right etag fail (§12).
        message = assert_error(resp, 500, "ERR_STATE_SAVE")["message"]
        assert message.startswith(f"{SAVE_PREFIX}failed to set key {APP_ID}||{key}: ")
        assert read(api, key) == (b'"v1"', etag)
    else:
        assert resp.status_code == 204
        assert value_of(api, key) == "v2"


# --- TTL (§3, §4, §12) -------------------------------------------------------------------------------------


def test_items_saved_with_a_short_ttl_disappear(api: Target) -> None:
    # SQLite counts in whole seconds, so a 1 s TTL ends at the next second boundary, which may come before
    # the first read; 2 s there keeps at least one second of life. Elsewhere 1 s is 1 s.
    ttl = "2" if api.store == "sqlite" else "1"
    in_item, in_url, url_over_body, repeated, in_transaction, keeper = (
        api.key(hint) for hint in ("item", "url", "over", "repeated", "txn", "keep")
    )
    assert api.save({"key": in_item, "value": 1, "metadata": {"ttlInSeconds": ttl}}).status_code == 204
    url_ttl = {"metadata.ttlInSeconds": ttl}
    assert api.http.post(api.state_url(), params=url_ttl, json=[{"key": in_url, "value": 2}]).status_code == 204
    over = [{"key": url_over_body, "value": 3, "metadata": {"ttlInSeconds": "3600"}}]
    assert api.http.post(api.state_url(), params=url_ttl, json=over).status_code == 204  # the URL wins
    first_wins = f"{api.state_url()}?metadata.ttlInSeconds={ttl}&metadata.ttlInSeconds=3600"
    assert api.http.post(first_wins, json=[{"key": repeated, "value": 4}]).status_code == 204
    assert transact(api, upsert(in_transaction, 5, metadata={"ttlInSeconds": ttl})).status_code == 204
    write(api, keeper, 6)
    expiring = [in_item, in_url, url_over_body, repeated, in_transaction]
    assert [value_of(api, key) for key in expiring] == [1, 2, 3, 4, 5]

    assert wait_until(lambda: all(api.get(key).status_code == 204 for key in expiring), timeout=4, interval=0.1)
    assert bulk(api, expiring) == [{"key": key} for key in expiring]
    assert value_of(api, keeper) == 6


def test_ttl_expire_time_is_reported_by_in_memory_and_sqlite_but_not_redis(api: Target) -> None:
    key = api.key()
    before = time.time()
    write(api, key, "v", metadata={"ttlInSeconds": "60"})
    resp = api.get(key)
    (item,) = bulk(api, [key])
    if api.store == "redis":
        assert not has_ttl_header(resp)
        assert not any(name.lower().startswith("metadata.") for name in resp.headers)
        assert "metadata" not in item
        return
    expire = resp.headers["metadata.ttlExpireTime"]
    assert RFC3339_SECONDS.match(expire), expire
    expires_at = datetime.strptime(expire, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert before + 60 - 2 <= expires_at <= time.time() + 60 + 1
    assert item["metadata"] == {"ttlExpireTime": expire}


@pytest.mark.parametrize("where", ["item", "url"])
def test_a_ttl_that_is_not_an_integer_is_500(api: Target, canary: Canary, where: str) -> None:
    if where == "item":
        resp = api.save({"key": canary.key, "value": "overwritten", "metadata": {"ttlInSeconds": "abc"}})
    else:
        resp = api.http.post(
            api.state_url(), params={"metadata.ttlInSeconds": "abc"}, json=[{"key": canary.key, "value": "overwritten"}]
        )
    inner = {
        "in-memory": 'strconv.Atoi: parsing "abc": invalid syntax',
        "sqlite": "error parsing TTL: incorrect value for metadata 'ttlInSeconds': "
        'strconv.ParseInt: parsing "abc": invalid syntax',
        "redis": 'failed to parse ttl from metadata: strconv.ParseInt: parsing "abc": invalid syntax',
    }[api.store]
    assert_error(resp, 500, "ERR_STATE_SAVE", SAVE_PREFIX + inner)
    canary.assert_unchanged()


def test_a_ttl_below_minus_one_is_rejected_only_by_sqlite(api: Target) -> None:
    key = api.key()
    resp = api.save({"key": key, "value": 1, "metadata": {"ttlInSeconds": "-2"}})
    if api.store == "sqlite":
        assert_error(
            resp,
            500,
            "ERR_STATE_SAVE",
            f"{SAVE_PREFIX}error parsing TTL: incorrect value for metadata 'ttlInSeconds': must be -1 or greater",
        )
        assert read(api, key) is None
    else:
        assert resp.status_code == 204  # in-memory clamps to 0, redis PERSISTs: no expiry either way
        assert not has_ttl_header(api.get(key))


def test_a_resave_without_ttl_keeps_the_old_ttl_only_on_redis(api: Target) -> None:
    key = api.key()
    write(api, key, "v1", metadata={"ttlInSeconds": "100"})
    write(api, key, "v2")
    resp = api.get(key)
    assert resp.content == b'"v2"'
    if api.store == "redis":
        assert 0 < api.redis().ttl(f"{APP_ID}||{key}") <= 100
    else:
        assert not has_ttl_header(resp)


def test_a_ttl_of_minus_one_removes_an_existing_ttl(api: Target) -> None:
    key = api.key()
    write(api, key, "v1", metadata={"ttlInSeconds": "100"})
    write(api, key, "v2", metadata={"ttlInSeconds": "-1"})
    assert not has_ttl_header(api.get(key))
    if api.store == "redis":
        assert api.redis().ttl(f"{APP_ID}||{key}") == -1


# --- transaction (§7) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_transaction_of_an_upsert_and_a_delete_is_204(api: Target, method: str) -> None:
    kept, dropped = api.key(), api.key()
    write(api, dropped)
    resp = transact(api, upsert(kept, {"n": 1}), remove(dropped), method=method)
    assert resp.status_code == 204
    assert resp.content == b""
    assert value_of(api, kept) == {"n": 1}
    assert read(api, dropped) is None


def test_transaction_applies_operations_in_order(api: Target) -> None:
    gone, last_wins, reborn = api.key(), api.key(), api.key()
    write(api, gone)
    write(api, reborn)
    resp = transact(
        api,
        remove(gone),
        upsert(gone, "back"),
        remove(gone),
        upsert(last_wins, "first"),
        upsert(last_wins, "second"),
        remove(reborn),
        upsert(reborn, "new"),
    )
    assert resp.status_code == 204
    assert read(api, gone) is None
    assert value_of(api, last_wins) == "second"
    assert value_of(api, reborn) == "new"


def test_transaction_with_the_current_etag_is_204(api: Target) -> None:
    key, other = api.key(), api.key()
    etag = write(api, key, "v1")
    other_etag = write(api, other, "doomed")
    assert transact(api, upsert(key, "v2", etag=etag), remove(other, etag=other_etag)).status_code == 204
    assert value_of(api, key) == "v2"
    assert read(api, other) is None


def test_transaction_with_an_unknown_operation_is_400(api: Target, canary: Canary) -> None:
    other = api.key()
    resp = transact(
        api, upsert(canary.key, "overwritten"), {"operation": "merge", "request": {"key": other, "value": 1}}
    )
    assert_error(resp, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION", "operation type merge not supported")
    canary.assert_unchanged()
    assert read(api, other) is None


def test_transaction_with_a_stale_etag_is_500_and_atomic_except_on_redis(api: Target) -> None:
    changed, conflicted, deleted = api.key(), api.key(), api.key()
    before = {key: write(api, key, "before") for key in (changed, conflicted, deleted)}
    resp = transact(api, upsert(changed, "after"), upsert(conflicted, "lost", etag="9999999"), remove(deleted))
    message = assert_error(resp, 500, "ERR_STATE_TRANSACTION")["message"]
    assert message.startswith("error while executing state transaction: ")
    assert read(api, conflicted) == (b'"before"', before[conflicted])
    if api.store == "redis":
        # MULTI/EXEC without rollback: the ops around the failing script are applied.
        assert value_of(api, changed) == "after"
        assert read(api, deleted) is None
    else:
        assert read(api, changed) == (b'"before"', before[changed])
        assert read(api, deleted) == (b'"before"', before[deleted])


def test_transaction_with_a_non_numeric_etag_is_500_and_applies_nothing(api: Target) -> None:
    # Redis rejects the etag before sending anything; the others see a mismatch and roll back.
    changed, conflicted = api.key(), api.key()
    etags = {key: write(api, key, "before") for key in (changed, conflicted)}
    resp = transact(api, upsert(changed, "after"), upsert(conflicted, "lost", etag="abc"))
    message = assert_error(resp, 500, "ERR_STATE_TRANSACTION")["message"]
    assert message.startswith("error while executing state transaction: ")
    for key, etag in etags.items():
        assert read(api, key) == (b'"before"', etag)


def test_transaction_upserts_with_the_same_etag_pass_only_on_in_memory(api: Target) -> None:
    # in-memory validates every op against the state before the transaction; sqlite sees its own
    # first write (and rolls back); redis fails the second script but keeps the first.
    key = api.key()
    etag = write(api, key, "v1")
    resp = transact(api, upsert(key, "v2", etag=etag), upsert(key, "v3", etag=etag))
    if api.store == "in-memory":
        assert resp.status_code == 204
        assert value_of(api, key) == "v3"
        return
    assert_error(resp, 500, "ERR_STATE_TRANSACTION")
    if api.store == "sqlite":
        assert read(api, key) == (b'"v1"', etag)
    else:
        assert read(api, key) == (b'"v2"', "2")


def test_transaction_first_write_after_a_delete_of_the_same_key_fails_only_on_in_memory(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1")
    resp = transact(api, remove(key), upsert(key, "v2", options={"concurrency": "first-write"}))
    if api.store == "in-memory":
        assert_error(resp, 500, "ERR_STATE_TRANSACTION")
        assert read(api, key) == (b'"v1"', etag)
    else:
        assert resp.status_code == 204
        assert value_of(api, key) == "v2"


def test_transaction_first_write_over_an_existing_key_is_204_only_on_redis(api: Target) -> None:
    key = api.key()
    etag = write(api, key, "v1")
    resp = transact(api, upsert(key, "v2", options={"concurrency": "first-write"}))
    if api.store == "redis":
        assert resp.status_code == 204
        assert value_of(api, key) == "v2"
        assert api.redis().hexists(f"{APP_ID}||{key}", "first-write") == 0  # never recorded in transactions
    else:
        assert_error(resp, 500, "ERR_STATE_TRANSACTION")
        assert read(api, key) == (b'"v1"', etag)


def test_transaction_upsert_with_an_unknown_concurrency_is_500_except_on_redis(api: Target, canary: Canary) -> None:
    resp = transact(api, upsert(canary.key, "overwritten", options={"concurrency": "bogus"}))
    if api.store == "redis":
        assert resp.status_code == 204  # Multi never checks the options
        assert value_of(api, canary.key) == "overwritten"
    else:
        assert_error(
            resp,
            500,
            "ERR_STATE_TRANSACTION",
            "error while executing state transaction: unrecognized concurrency model 'bogus'",
        )
        canary.assert_unchanged()


def test_transaction_delete_with_an_unknown_concurrency_is_500_only_on_sqlite(api: Target, canary: Canary) -> None:
    resp = transact(api, remove(canary.key, options={"concurrency": "bogus"}))
    if api.store == "sqlite":
        assert_error(
            resp,
            500,
            "ERR_STATE_TRANSACTION",
            "error while executing state transaction: unrecognized concurrency model 'bogus'",
        )
        canary.assert_unchanged()
    else:
        assert resp.status_code == 204  # in-memory never validates delete options in a transaction
        assert read(api, canary.key) is None


def test_transaction_matches_request_field_names_case_insensitively(api: Target) -> None:
    key = api.key()
    resp = api.http.post(
        api.state_url("transaction"),
        json={"operations": [{"operation": "upsert", "request": {"KEY": key, "Value": {"n": 1}}}]},
    )
    assert resp.status_code == 204
    assert value_of(api, key) == {"n": 1}


def test_transaction_op_without_a_key_writes_the_bare_app_prefix(api: Target) -> None:
    marker = api.key("marker")
    assert transact(api, {"operation": "upsert", "request": {"value": marker}}).status_code == 204
    (item,) = bulk(api, [""])
    assert item["key"] == ""
    assert item["data"] == marker
    assert transact(api, {"operation": "delete", "request": {}}).status_code == 204
    assert bulk(api, [""]) == [{"key": ""}]


def test_transaction_url_metadata_reaches_every_op_but_body_metadata_does_not(api: Target) -> None:
    from_url, from_body = api.key("url"), api.key("body")
    assert transact(api, upsert(from_url, 1), params={"metadata.ttlInSeconds": "100"}).status_code == 204
    resp = api.http.post(
        api.state_url("transaction"),
        json={"operations": [upsert(from_body, 2)], "metadata": {"ttlInSeconds": "100"}},
    )
    assert resp.status_code == 204
    if api.store == "redis":
        assert 0 < api.redis().ttl(f"{APP_ID}||{from_url}") <= 100
        assert api.redis().ttl(f"{APP_ID}||{from_body}") == -1
    else:
        assert has_ttl_header(api.get(from_url))
        assert not has_ttl_header(api.get(from_body))


@pytest.mark.parametrize("body", [b'{"operations":[]}', b"{}", b"null", b'{"operations":null}'])
def test_transaction_without_operations_is_204(api: Target, canary: Canary, body: bytes) -> None:
    resp = api.http.post(api.state_url("transaction"), data=body)
    assert resp.status_code == 204
    canary.assert_unchanged()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"", "EOF", id="empty"),
        pytest.param(b"not json", None, id="garbage"),
        pytest.param(b"[]", None, id="array"),
        pytest.param(b'{"operations":{}}', None, id="operations-not-a-list"),
    ],
)
def test_transaction_with_an_undecodable_body_is_400(
    api: Target, canary: Canary, body: bytes, detail: str | None
) -> None:
    resp = api.http.post(api.state_url("transaction"), data=body)
    message = assert_error(resp, 400, "ERR_MALFORMED_REQUEST")["message"]
    assert message.startswith("failed deserializing HTTP body: ")
    if detail is not None:
        assert message == f"failed deserializing HTTP body: {detail}"
    canary.assert_unchanged()


@pytest.mark.parametrize(
    "request_fields",
    [{"etag": 5}, {"metadata": {"ttlInSeconds": 5}}],
    ids=["numeric-etag", "numeric-metadata"],
)
def test_transaction_op_with_badly_typed_fields_is_400(api: Target, canary: Canary, request_fields: dict) -> None:
    resp = transact(api, upsert(canary.key, "overwritten"), upsert(canary.key, "again", **request_fields))
    message = assert_error(resp, 400, "ERR_MALFORMED_REQUEST")["message"]
    assert message.startswith("failed deserializing HTTP body: ")
    canary.assert_unchanged()


# --- key prefixing and storage layout (§11, §12) ----------------------------------------------------------


@only_redis
def test_redis_stores_each_key_as_a_hash_with_data_and_version(api: Target) -> None:
    key = api.key()
    write(api, key, {"n": 1})
    client = api.redis()
    assert client.type(f"{APP_ID}||{key}") == b"hash"
    assert client.hgetall(f"{APP_ID}||{key}") == {b"data": b'{"n":1}', b"version": b"1"}
    assert client.exists(key) == 0  # never unprefixed


@only_redis
def test_redis_marks_keys_written_with_first_write(api: Target) -> None:
    key = api.key()
    write(api, key, "v", options={"concurrency": "first-write"})
    assert api.redis().hgetall(f"{APP_ID}||{key}") == {b"data": b'"v"', b"version": b"1", b"first-write": b"0"}


@only_redis
def test_redis_strong_save_is_on_the_replica_when_the_request_returns(api: Target) -> None:
    key = api.key()
    resp = api.save({"key": key, "value": "replicated", "options": {"consistency": "strong"}})
    assert resp.status_code == 204
    assert api.redis(1).hget(f"{APP_ID}||{key}", "data") == b'"replicated"'


@only_redis
def test_redis_returns_a_plain_string_key_raw_and_without_an_etag(api: Target) -> None:
    key = api.key()
    api.redis().set(f"{APP_ID}||{key}", b"legacy")
    resp = api.get(key)
    assert resp.status_code == 200
    assert resp.content == b"legacy"
    assert resp.headers["Content-Type"] == JSON  # even when the bytes are not JSON
    assert "ETag" not in resp.headers
    write(api, key, "new")  # the SET script drops the string and writes a fresh hash
    assert api.redis().hgetall(f"{APP_ID}||{key}") == {b"data": b'"new"', b"version": b"1"}


@only_redis
def test_redis_hash_without_a_version_is_a_500_on_get_and_an_item_error_in_bulk(api: Target) -> None:
    key, good = api.key(), api.key()
    api.redis().hset(f"{APP_ID}||{key}", "data", b'"orphan"')
    write(api, good, "fine")
    resp = api.get(key)
    assert_error(
        resp,
        500,
        "ERR_STATE_GET",
        f"fail to get {key} from state store {STORE_NAME}: required hash field 'data' or 'version' was not found",
    )
    items = bulk(api, [key, good])
    assert items[0] == {"key": key, "error": "required hash field 'data' or 'version' was not found"}
    assert items[1]["data"] == "fine"


@only_redis
def test_redis_data_that_is_not_json_is_served_raw_by_get_and_breaks_bulk_get(api: Target) -> None:
    key = api.key()
    api.redis().hset(f"{APP_ID}||{key}", mapping={"data": b"not json", "version": b"1"})
    resp = api.get(key)
    assert resp.status_code == 200
    assert resp.content == b"not json"
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["ETag"] == "1"
    # daprd embeds data as json.RawMessage; the encoder fails and the handler ignores it (§5).
    resp = api.http.post(api.state_url("bulk"), json={"keys": [key]})
    assert resp.status_code == 200
    assert resp.content == b""


@only_sqlite
def test_sqlite_stores_each_key_as_a_row_of_the_state_table(api: Target) -> None:
    key = api.key()
    etag = write(api, key, {"n": 1})
    row = sqlite_row(api, key)
    assert row is not None
    assert row["key"] == f"{APP_ID}||{key}"
    assert row["value"] == '{"n":1}'
    assert row["etag"] == etag
    assert not row["is_binary"]
    assert row["expiration_time"] is None


@only_sqlite
def test_sqlite_clears_the_expiration_time_on_a_resave_without_ttl(api: Target) -> None:
    key = api.key()
    write(api, key, "v1", metadata={"ttlInSeconds": "100"})
    row = sqlite_row(api, key)
    assert row is not None and row["expiration_time"] is not None
    write(api, key, "v2")
    row = sqlite_row(api, key)
    assert row is not None and row["expiration_time"] is None


# --- health and metadata (§9) ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1.0/healthz", "/v1.0/healthz/outbound", "/v1.0/healthz?appid=myapp"])
def test_health_endpoints_are_204(api: Target, path: str) -> None:
    resp = api.http.get(api.url + path)
    assert resp.status_code == 204
    assert resp.content == b""


def test_health_with_another_app_id_is_500(api: Target) -> None:
    resp = api.http.get(f"{api.url}/v1.0/healthz", params={"appid": "other"})
    assert_error(resp, 500, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")


def test_metadata_describes_the_app_and_its_state_store(api: Target) -> None:
    resp = api.http.get(f"{api.url}/v1.0/metadata")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == JSON
    assert resp.content.endswith(b"\n")
    meta = resp.json()
    assert list(meta)[:2] == ["id", "runtimeVersion"]
    assert meta["id"] == APP_ID
    assert meta["components"] == [
        {"name": STORE_NAME, "type": f"state.{api.store}", "version": "v1", "capabilities": CAPABILITIES[api.store]}
    ]
    assert meta["components"][0]["capabilities"][-1] == "ACTOR"
    assert meta["extended"]["daprRuntimeVersion"] == meta["runtimeVersion"]
    assert meta["actorRuntime"]["runtimeStatus"] in {"INITIALIZING", "DISABLED", "RUNNING"}
    assert isinstance(meta["actorRuntime"]["hostReady"], bool)


def test_put_metadata_stores_the_raw_body_in_extended(api: Target) -> None:
    name = api.key("lesson")
    resp = api.http.put(f"{api.url}/v1.0/metadata/{name}", data=b'{"not": "parsed"}')
    assert resp.status_code == 204
    assert resp.content == b""
    extended = api.http.get(f"{api.url}/v1.0/metadata").json()["extended"]
    assert extended[name] == '{"not": "parsed"}'
    assert list(extended) == sorted(extended)
    assert api.http.put(f"{api.url}/v1.0/metadata/{name}", data=b"second").status_code == 204
    assert api.http.get(f"{api.url}/v1.0/metadata").json()["extended"][name] == "second"


def test_put_metadata_cannot_change_the_runtime_version(api: Target) -> None:
    assert api.http.put(f"{api.url}/v1.0/metadata/daprRuntimeVersion", data=b"9.9.9").status_code == 204
    meta = api.http.get(f"{api.url}/v1.0/metadata").json()
    assert meta["extended"]["daprRuntimeVersion"] == meta["runtimeVersion"] != "9.9.9"


def test_put_metadata_over_the_body_limit_is_400_body_read(api: Target) -> None:
    resp = api.http.put(f"{api.url}/v1.0/metadata/{api.key()}", data=b"x" * (MAX_BODY + 10))
    assert_error(resp, 400, "ERR_BODY_READ", "failed to read request body: stream too large")


def test_get_headers_come_in_gos_canonical_spelling(api: Target) -> None:
    key = api.key()
    assert api.save({"key": key, "value": 1, "metadata": {"ttlInSeconds": "100"}}).status_code == 204
    names = set(api.get(key).raw.headers.keys())  # as sent, not case-folded
    assert "Etag" in names and "ETag" not in names
    assert ("Metadata.ttlexpiretime" in names) == (api.store != "redis")


# --- query, alpha (§8) -----------------------------------------------------------------------------------


def _query(api: Target, body: bytes, store: str = STORE_NAME) -> requests.Response:
    return api.http.post(f"{api.url}/v1.0-alpha1/state/{store}/query", data=body)


def test_query_on_an_unknown_store_names_no_app_id_in_its_details(api: Target) -> None:
    body = assert_error(_query(api, b"{}", "nope"), 400, "ERR_STATE_STORE_NOT_FOUND", "state store nope is not found",
                        ANY_DETAILS)
    assert body["details"] == [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "domain": "dapr.io",
                                "metadata": None, "reason": "DAPR_STATE_NOT_FOUND"}]


@pytest.mark.parametrize("query, failure", [
    (b"", "failed to parse JSON query body: unexpected end of JSON input"),
    (b"x", "failed to parse JSON query body: invalid character 'x' looking for beginning of value"),
    (b"{}", "redis-json server support is required for query capability"),
])
def test_query_on_redis_without_redisjson_fails_after_parsing_the_query(api: Target, query: bytes, failure: str) -> None:
    if api.store != "redis":
        assert_error(_query(api, query), 500, "ERR_STATE_STORE_NOT_SUPPORTED", "state store does not support querying",
                     ANY_DETAILS)
        return
    assert_error(_query(api, query), 500, "ERR_STATE_QUERY", f"state store {STORE_NAME} query failed: {failure}",
                 ANY_DETAILS)


# --- routing (§1.1) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1.0/state/statestore"),
        ("DELETE", "/v1.0/state/statestore"),
        ("POST", "/v1.0/state/statestore/{canary}"),
        ("PUT", "/v1.0/state/statestore/{canary}"),
        ("PATCH", "/v1.0/state/statestore"),
        ("GET", "/v1.0/state/statestore/dir/{canary}"),
        ("GET", "/v1.0/nothing-here"),
        ("POST", "/v1.0/healthz"),
        ("DELETE", "/v1.0/metadata"),
    ],
)
def test_an_unmatched_path_or_method_is_404_direct_invoke(api: Target, canary: Canary, method: str, path: str) -> None:
    url = api.url + path.format(canary=canary.key)
    resp = api.http.request(method, url, json=[{"key": canary.key, "value": "overwritten"}])
    assert_error(resp, 404, "ERR_DIRECT_INVOKE", DIRECT_INVOKE_MESSAGE)
    canary.assert_unchanged()


def test_head_on_a_state_key_is_404(api: Target, canary: Canary) -> None:
    resp = api.http.head(api.state_url(canary.key))
    assert resp.status_code == 404
    assert resp.headers.get("Content-Type") == JSON


def test_a_trailing_slash_is_stripped(api: Target) -> None:
    key = api.key()
    assert api.http.post(api.state_url() + "/", json=[{"key": key, "value": "slash"}]).status_code == 204
    assert value_of(api, key) == "slash"
    resp = api.http.get(api.state_url(key) + "/")
    assert resp.status_code == 200
    assert resp.content == b'"slash"'
    assert api.http.get(f"{api.url}/v1.0/healthz/").status_code == 204
    assert api.http.get(f"{api.url}/v1.0/metadata/").json()["id"] == APP_ID


def test_duplicate_slashes_are_collapsed(api: Target) -> None:
    key = api.key()
    resp = api.http.post(f"{api.url}/v1.0//state//{STORE_NAME}", json=[{"key": key, "value": "doubled"}])
    assert resp.status_code == 204
    assert api.http.get(f"{api.url}/v1.0/state/{STORE_NAME}//{key}").content == b'"doubled"'


# --- API token (§1.2) ------------------------------------------------------------------------------------

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An extra in-memory stack whose sidecar requires ``dapr-api-token: s3cret``."""
    with make_stack(tmp_path_factory.mktemp("token"), store="in-memory", app_id=APP_ID, api_token=TOKEN) as stack:
        yield stack


@pytest.fixture
def secured_http(secured: Stack) -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def _secured_requests(base: str, key: str) -> list[tuple[str, str, Any]]:
    state = f"{base}/v1.0/state/{STORE_NAME}"
    return [
        ("POST", state, [{"key": key, "value": 1}]),
        ("GET", f"{state}/{key}", None),
        ("DELETE", f"{state}/{key}", None),
        ("POST", f"{state}/bulk", {"keys": [key]}),
        ("POST", f"{state}/transaction", {"operations": [upsert(key, 1)]}),
        ("GET", f"{base}/v1.0/metadata", None),
        ("PUT", f"{base}/v1.0/metadata/foo", None),
        ("POST", f"{base}/v1.0/healthz", None),  # only GET is exempt
        ("GET", f"{base}/v1.0/nothing-here", None),  # the check runs before routing
    ]


@pytest.mark.parametrize("token", [None, "wrong", "S3CRET", ""], ids=["missing", "wrong", "wrong-case", "empty"])
def test_requests_without_the_right_api_token_are_401_plain_text(
    secured: Stack, secured_http: requests.Session, token: str | None
) -> None:
    headers = {} if token is None else {"dapr-api-token": token}
    for method, url, body in _secured_requests(secured.endpoint, "k"):
        resp = secured_http.request(method, url, json=body, headers=headers)
        assert resp.status_code == 401, f"{method} {url}: {resp.status_code}"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.content == b"invalid api token\n"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/v1.0/healthz", "/v1.0/healthz/outbound"])
def test_health_checks_are_exempt_from_the_api_token(secured: Stack, secured_http: requests.Session, path: str) -> None:
    assert secured_http.get(secured.endpoint + path).status_code == 204


def test_requests_with_the_right_api_token_work(secured: Stack, secured_http: requests.Session) -> None:
    secured_http.headers["Dapr-Api-Token"] = TOKEN  # header names are case-insensitive
    state = f"{secured.endpoint}/v1.0/state/{STORE_NAME}"
    assert secured_http.post(state, json=[{"key": "granted", "value": 1}]).status_code == 204
    resp = secured_http.get(f"{state}/granted")
    assert resp.status_code == 200
    assert resp.content == b"1"
    meta = secured_http.get(f"{secured.endpoint}/v1.0/metadata")
    assert meta.status_code == 200
    assert meta.json()["id"] == APP_ID


def test_a_request_rejected_for_its_token_writes_nothing(secured: Stack, secured_http: requests.Session) -> None:
    state = f"{secured.endpoint}/v1.0/state/{STORE_NAME}"
    token = {"dapr-api-token": TOKEN}
    assert secured_http.post(state, json=[{"key": "kept", "value": "original"}], headers=token).status_code == 204
    wrong = {"dapr-api-token": "wrong"}
    assert secured_http.post(state, json=[{"key": "rejected", "value": 1}], headers=wrong).status_code == 401
    assert secured_http.post(state, json=[{"key": "kept", "value": "changed"}], headers=wrong).status_code == 401
    assert secured_http.delete(f"{state}/kept", headers=wrong).status_code == 401
    assert secured_http.get(f"{state}/rejected", headers=token).status_code == 204
    assert secured_http.get(f"{state}/kept", headers=token).content == b'"original"'
