"""The gRPC state API as the official Python SDK uses it, on every store (docs/dapr-behaviour.md §10, §13).

The first test is the python-sdk ``examples/state_store`` sequence, written here in our own code; the rest
pin the status-code table, the API token, and what a value saved over one protocol reads as over the other.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, Consistency, StateItem, StateOptions
from dapr.proto import api_service_v1, api_v1, common_v1
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import APP_ID, BOTH_RUNTIMES, STORE_NAME, Target, free_port_base, wait_until

from statelab import local, sdk

RUNTIMES = BOTH_RUNTIMES  # every `api` test runs on statelab's sidecar and on a real daprd
Code = grpc.StatusCode
FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write, consistency=Consistency.strong)


@pytest.fixture
def dapr(api: Target) -> Iterator[DaprClient]:
    client = sdk.connect(api.stack)
    yield client
    client.close()


@pytest.fixture
def stub(api: Target) -> Iterator[api_service_v1.DaprStub]:
    """The generated stub itself, for requests the SDK would not send."""
    with grpc.insecure_channel(api.stack.grpc_endpoint) as channel:
        yield api_service_v1.DaprStub(channel)


def refused(call, *args, **kwargs) -> DaprGrpcError:
    with pytest.raises(DaprGrpcError) as raised:
        call(*args, **kwargs)
    return raised.value


def raw_refused(call, request, **kwargs) -> tuple[grpc.StatusCode, str, list]:
    """(code, message, decoded google.rpc details) of a raw stub call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, **kwargs)
    err = raised.value
    status = rpc_status.from_call(err)
    details = []
    for packed in status.details if status else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.ResourceInfo):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                details.append(detail)
    return err.code(), err.details(), details


# --- the SDK's documented flow --------------------------------------------------------------------------


def test_the_sdk_state_store_example_runs_on_every_store(api: Target, dapr: DaprClient):
    key, another, yet_another, outbox = (api.key(n) for n in ("key_1", "key_2", "key_3", "key1"))

    dapr.save_state(store_name=STORE_NAME, key=key, value="value_1")

    err = refused(dapr.save_state, store_name=STORE_NAME, key=key, value="value_2", etag="9999")
    assert err.code() == Code.ABORTED
    assert err.error_code() == "ERR_STATE_SAVE"

    dapr.save_bulk_state(
        store_name=STORE_NAME,
        states=[StateItem(key=another, value="value_2"), StateItem(key=yet_another, value="value_3")],
    )
    err = refused(
        dapr.save_bulk_state,
        store_name=STORE_NAME,
        states=[StateItem(key=another, value="value_2", etag="999"), StateItem(key=yet_another, value="value_3", etag="999")],
    )
    assert err.code() == Code.ABORTED

    state = dapr.get_state(store_name=STORE_NAME, key=key, state_metadata={"metakey": "metavalue"})
    assert state.data == b"value_1"
    assert state.etag

    dapr.execute_state_transaction(
        store_name=STORE_NAME,
        operations=[
            TransactionalStateOperation(
                operation_type=TransactionOperationType.upsert, key=key, data="value_1_updated", etag=state.etag
            ),
            TransactionalStateOperation(key=another, data="value_2"),
            TransactionalStateOperation(key=yet_another, data="value_3"),
        ],
    )
    items = dapr.get_bulk_state(store_name=STORE_NAME, keys=[key, another], states_metadata={"metakey": "metavalue"}).items
    assert [(i.key, i.data) for i in items] == [(key, b"value_1_updated"), (another, b"value_2")]
    assert all(i.etag for i in items)

    dapr.execute_state_transaction(
        store_name=STORE_NAME,
        operations=[
            TransactionalStateOperation(key=outbox, data="val1", metadata={"outbox.projection": "false"}),
            TransactionalStateOperation(key=outbox, data="val2", metadata={"outbox.projection": "true"}),
        ],
    )
    assert dapr.get_state(store_name=STORE_NAME, key=outbox).data == b"val2"

    dapr.execute_state_transaction(
        store_name=STORE_NAME,
        operations=[
            TransactionalStateOperation(operation_type=TransactionOperationType.delete, key=key),
            TransactionalStateOperation(operation_type=TransactionOperationType.delete, key=another),
        ],
    )
    items = dapr.get_bulk_state(store_name=STORE_NAME, keys=[key, another]).items
    assert sorted((i.key, i.data, i.etag) for i in items) == sorted([(key, b"", ""), (another, b"", "")])

    dapr.delete_state(store_name=STORE_NAME, key=yet_another, state_metadata={"metakey": "metavalue"})
    assert dapr.get_state(store_name=STORE_NAME, key=yet_another).data == b""


def test_a_missing_key_reads_as_empty_data_and_etag_not_an_error(api: Target, dapr: DaprClient):
    state = dapr.get_state(STORE_NAME, api.key("missing"))
    assert (state.data, state.etag) == (b"", "")


def test_saving_again_changes_the_etag_and_the_old_one_no_longer_deletes(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, "one")
    first = dapr.get_state(STORE_NAME, key).etag
    dapr.save_state(STORE_NAME, key, "two")
    current = dapr.get_state(STORE_NAME, key).etag
    assert current != first

    err = refused(dapr.delete_state, STORE_NAME, key, etag=first)
    assert (err.code(), err.error_code()) == (Code.ABORTED, "ERR_STATE_DELETE")
    assert err.details().startswith(f"failed deleting state with key {key}: possible etag mismatch")
    assert dapr.get_state(STORE_NAME, key).data == b"two"

    dapr.delete_state(STORE_NAME, key, etag=current)
    assert dapr.get_state(STORE_NAME, key).data == b""


def test_first_write_state_options_guard_creation_and_updates(api: Target, dapr: DaprClient):
    key = api.key("ticket")
    dapr.save_state(STORE_NAME, key, "open", options=FIRST_WRITE)
    etag = dapr.get_state(STORE_NAME, key).etag
    dapr.save_state(STORE_NAME, key, "assigned", etag=etag, options=FIRST_WRITE)

    assert refused(dapr.save_state, STORE_NAME, key, "closed", etag=etag, options=FIRST_WRITE).code() == Code.ABORTED
    # Without an ETag, first-write on an existing key: a conflict on SQLite and in-memory; Redis refuses the
    # key it marked as first-write with a plain store error (its 500 over HTTP), so INTERNAL here (§12).
    expected = Code.INTERNAL if api.store == "redis" else Code.ABORTED
    assert refused(dapr.save_state, STORE_NAME, key, "reopened", options=FIRST_WRITE).code() == expected
    assert dapr.get_state(STORE_NAME, key).data == b"assigned"


def test_delete_bulk_state_deletes_every_key_and_refuses_a_stale_etag(api: Target, dapr: DaprClient, stub):
    keys = [api.key("bulk") for _ in range(3)]
    dapr.save_bulk_state(STORE_NAME, [StateItem(key=k, value=k) for k in keys])
    stub.DeleteBulkState(api_v1.DeleteBulkStateRequest(store_name=STORE_NAME, states=[common_v1.StateItem(key=k) for k in keys[:2]]))
    found = {i.key: i.data for i in dapr.get_bulk_state(STORE_NAME, keys).items}  # SQLite answers in its own order
    assert found == {keys[0]: b"", keys[1]: b"", keys[2]: keys[2].encode()}

    stale = common_v1.StateItem(key=keys[2], etag=common_v1.Etag(value="12345"))
    code, message, details = raw_refused(stub.DeleteBulkState, api_v1.DeleteBulkStateRequest(store_name=STORE_NAME, states=[stale]))
    assert code == Code.ABORTED
    assert message.startswith(f"failed deleting state in state store {STORE_NAME}: possible etag mismatch")
    assert details[0].reason == "ERR_STATE_BULK_DELETE"
    assert dapr.get_state(STORE_NAME, keys[2]).data == keys[2].encode()


# --- the status-code table (§13) --------------------------------------------------------------------------


def test_unknown_store_is_invalid_argument(dapr: DaprClient):
    for call in (lambda: dapr.save_state("nope", "k", "v"), lambda: dapr.get_state("nope", "k"),
                 lambda: dapr.delete_state("nope", "k"), lambda: dapr.get_bulk_state("nope", ["k"]),
                 lambda: dapr.execute_state_transaction("nope", [TransactionalStateOperation(key="k", data="v")])):
        err = refused(call)
        assert (err.code(), err.details(), err.error_code()) == (
            Code.INVALID_ARGUMENT, "state store nope is not found", "DAPR_STATE_NOT_FOUND"
        )


def test_empty_key_on_save_is_invalid_argument(dapr: DaprClient):
    err = refused(dapr.save_state, STORE_NAME, "", "v")
    assert (err.code(), err.details(), err.error_code()) == (
        Code.INVALID_ARGUMENT, "state key cannot be empty", "ERR_STATE_SAVE"
    )


def test_a_key_with_two_pipes_is_invalid_argument_with_rich_details(stub):
    bad = "a||b"
    requests = [
        (stub.SaveState, api_v1.SaveStateRequest(store_name=STORE_NAME, states=[common_v1.StateItem(key=bad, value=b"v")])),
        (stub.GetState, api_v1.GetStateRequest(store_name=STORE_NAME, key=bad)),
        (stub.DeleteState, api_v1.DeleteStateRequest(store_name=STORE_NAME, key=bad)),
        (stub.GetBulkState, api_v1.GetBulkStateRequest(store_name=STORE_NAME, keys=["ok", bad])),
        (stub.ExecuteStateTransaction, api_v1.ExecuteStateTransactionRequest(
            storeName=STORE_NAME,
            operations=[api_v1.TransactionalStateOperation(operationType="upsert", request=common_v1.StateItem(key=bad))],
        )),
    ]
    for call, request in requests:
        code, message, details = raw_refused(call, request)
        assert code == Code.INVALID_ARGUMENT
        assert message == "input key/keyPrefix 'a||b' can't contain '||'"
        bad_request, resource, info = details
        assert [(v.field, v.description) for v in bad_request.field_violations] == [(bad, message)]
        assert (resource.resource_type, resource.resource_name) == ("state", STORE_NAME)
        assert (info.reason, info.domain) == ("DAPR_STATE_ILLEGAL_KEY", "dapr.io")


def test_an_etag_the_store_cannot_parse_is_invalid_argument_on_redis_and_a_conflict_elsewhere(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, "v")
    err = refused(dapr.save_state, STORE_NAME, key, "w", etag="not-a-number")
    if api.store == "redis":
        assert err.code() == Code.INVALID_ARGUMENT
        assert "invalid etag value" in err.details()
    else:
        assert err.code() == Code.ABORTED
    assert err.error_code() == "ERR_STATE_SAVE"


def test_any_other_store_failure_on_save_is_internal(api: Target, dapr: DaprClient):
    err = refused(dapr.save_state, STORE_NAME, api.key(), "v", state_metadata={"ttlInSeconds": "soon"})
    assert (err.code(), err.error_code()) == (Code.INTERNAL, "ERR_STATE_SAVE")
    assert err.details().startswith(f"failed saving state in state store {STORE_NAME}: ")


def test_an_etag_conflict_inside_a_transaction_is_internal_not_aborted(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, "v")
    ops = [TransactionalStateOperation(key=key, data="w", etag="12345")]
    err = refused(dapr.execute_state_transaction, STORE_NAME, ops)
    assert (err.code(), err.error_code()) == (Code.INTERNAL, "ERR_STATE_TRANSACTION")
    assert err.details().startswith("error while executing state transaction: ")
    assert dapr.get_state(STORE_NAME, key).data == b"v"


def test_an_unknown_transaction_operation_is_unimplemented(api: Target, stub):
    request = api_v1.ExecuteStateTransactionRequest(
        storeName=STORE_NAME,
        operations=[api_v1.TransactionalStateOperation(operationType="patch", request=common_v1.StateItem(key=api.key()))],
    )
    code, message, details = raw_refused(stub.ExecuteStateTransaction, request)
    assert (code, message) == (Code.UNIMPLEMENTED, "operation type patch not supported")
    assert details[0].reason == "ERR_NOT_SUPPORTED_STATE_OPERATION"


def test_json_content_type_that_is_not_json_is_refused_like_go_unmarshal(api: Target, dapr: DaprClient):
    err = refused(dapr.save_state, STORE_NAME, api.key(), "{not json", state_metadata={"contentType": "application/json"})
    assert err.code() == Code.UNKNOWN


def test_calls_outside_the_state_api_are_refused(api: Target, dapr: DaprClient):
    # A deliberate difference (docs/fidelity.md): daprd with no pubsub component says the pubsub is not found;
    # statelab serves the state API only and says so.
    error = refused(dapr.publish_event, "pubsub", "topic", "x")
    if api.runtime == "daprd":
        assert (error.code(), error.details()) == (Code.INVALID_ARGUMENT, "pubsub pubsub is not found")
    else:
        assert error.code() == Code.UNIMPLEMENTED and "state API only" in error.details()


# --- one store, two protocols (§10) -------------------------------------------------------------------------


def test_a_json_string_saved_over_http_reads_over_grpc_with_its_quotes(api: Target, dapr: DaprClient):
    key = api.key()
    assert api.save({"key": key, "value": "v"}).status_code == 204
    state = dapr.get_state(STORE_NAME, key)
    assert state.data == b'"v"'
    assert state.etag == api.get(key).headers["ETag"]


def test_raw_bytes_saved_over_grpc_read_over_http_as_they_are(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, b"\x00raw bytes\xff")
    resp = api.get(key)
    assert resp.status_code == 200
    assert resp.content == b"\x00raw bytes\xff"
    assert resp.headers["Content-Type"] == "application/json"
    # Bulk get embeds data as raw JSON; Go refuses to encode these bytes and daprd sends an empty 200 (§5).
    bulk = api.http.post(api.state_url() + "/bulk", json={"keys": [key]})
    assert (bulk.status_code, bulk.content) == (200, b"")


def test_where_each_store_keeps_raw_bytes(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, b"v\xff")
    if api.store == "sqlite":
        with sqlite3.connect(Path(api.stack.run_dir) / "state.db") as db:
            value, is_binary = db.execute("SELECT value, is_binary FROM state WHERE key = ?", (f"{APP_ID}||{key}",)).fetchone()
        assert (base64.b64decode(value), is_binary) == (b"v\xff", 1)
    elif api.store == "redis":
        assert api.redis().hget(f"{APP_ID}||{key}", "data") == b"v\xff"
    assert dapr.get_state(STORE_NAME, key).data == b"v\xff"


def test_json_content_type_stores_json_as_the_store_encodes_it(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, '{"b": 1, "a": 2.50}', state_metadata={"contentType": "application/json"})
    # in-memory and SQLite re-encode with Go's encoding/json (sorted keys), Redis with json-iterator, whose
    # member order is a Go map's: random on daprd, as sent on statelab (docs/fidelity.md). Compact either way.
    expected = [b'{"b":1,"a":2.5}', b'{"a":2.5,"b":1}'] if api.store == "redis" else [b'{"a":2.5,"b":1}']
    assert api.get(key).content in expected
    assert dapr.get_state(STORE_NAME, key).data in expected


def test_transaction_upserts_are_stored_as_raw_bytes(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.execute_state_transaction(STORE_NAME, [TransactionalStateOperation(key=key, data='{"n": 1}')])
    assert api.get(key).content == b'{"n": 1}'


def test_etags_and_deletes_cross_protocols(api: Target, dapr: DaprClient):
    key = api.key()
    dapr.save_state(STORE_NAME, key, "v")
    etag = api.get(key).headers["ETag"]
    assert dapr.get_state(STORE_NAME, key).etag == etag
    assert api.delete(key, headers={"If-Match": etag}).status_code == 204
    assert dapr.get_state(STORE_NAME, key).data == b""


def test_metadata_is_shared_between_protocols(api: Target, dapr: DaprClient):
    name = api.key("attr")
    dapr.set_metadata(name, "from-grpc")
    assert api.http.get(f"{api.url}/v1.0/metadata").json()["extended"][name] == "from-grpc"
    assert api.http.put(f"{api.url}/v1.0/metadata/{name}", data="from-http").status_code == 204
    meta = dapr.get_metadata()
    assert meta.extended_metadata[name] == "from-http"
    assert meta.application_id == APP_ID
    (component,) = meta.registered_components
    assert (component.name, component.type) == (STORE_NAME, f"state.{api.store}")
    assert "ETAG" in component.capabilities and "ACTOR" in component.capabilities


# --- a sidecar with no store and an API token ------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A sidecar with DAPR_API_TOKEN set and no component at all: (HTTP port, gRPC port)."""
    folder = tmp_path_factory.mktemp("no-components")
    http_port = free_port_base(2)
    grpc_port = http_port + 1
    env = {**os.environ, "DAPR_API_TOKEN": "s3cret", "PYTHONPATH": str(local.paths.REPO)}
    cmd = [sys.executable, "-m", "statelab", "sidecar", "--app-id", APP_ID, "--dapr-http-port", str(http_port),
           "--dapr-grpc-port", str(grpc_port), "--resources-path", str(folder)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: local.healthz(http_port), timeout=20)
        yield http_port, grpc_port
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_missing_or_wrong_token_is_unauthenticated(guarded: tuple[int, int]):
    with grpc.insecure_channel(f"127.0.0.1:{guarded[1]}") as channel:
        stub = api_service_v1.DaprStub(channel)
        for metadata, detail in ((None, "missing api token in request metadata"),
                                 ((("dapr-api-token", "wrong"),), "authentication error: api token mismatch")):
            code, message, (info,) = raw_refused(stub.GetMetadata, api_v1.GetMetadataRequest(), metadata=metadata)
            assert (code, message, info.reason) == (Code.UNAUTHENTICATED, "Unauthorized", "Unauthorized")
            assert dict(info.metadata) == {"http.code": "401", "http.error_message": detail}
        meta = stub.GetMetadata(api_v1.GetMetadataRequest(), metadata=(("dapr-api-token", "s3cret"),))
        assert meta.id == APP_ID


def test_the_sdk_sends_the_token_from_dapr_api_token(guarded: tuple[int, int], monkeypatch: pytest.MonkeyPatch):
    sidecar = type("Sidecar", (), {"endpoint": f"http://127.0.0.1:{guarded[0]}", "grpc_endpoint": f"127.0.0.1:{guarded[1]}"})
    monkeypatch.setenv("DAPR_API_TOKEN", "s3cret")
    with sdk.connect(sidecar) as client:
        assert client.get_metadata().registered_components == []


def test_with_no_store_configured_state_calls_fail_the_precondition(guarded: tuple[int, int]):
    with grpc.insecure_channel(f"127.0.0.1:{guarded[1]}") as channel:
        stub = api_service_v1.DaprStub(channel)
        code, message, (info,) = raw_refused(
            stub.GetState, api_v1.GetStateRequest(store_name=STORE_NAME, key="k"), metadata=(("dapr-api-token", "s3cret"),)
        )
    assert (code, message, info.reason) == (
        Code.FAILED_PRECONDITION, f"state store {STORE_NAME} is not configured", "DAPR_STATE_NOT_CONFIGURED"
    )


def test_without_dapr_grpc_port_the_sidecar_serves_no_grpc(tmp_path: Path):
    http_port = free_port_base(1)
    cmd = [sys.executable, "-m", "statelab", "sidecar", "--app-id", APP_ID, "--dapr-http-port", str(http_port),
           "--resources-path", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(local.paths.REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: local.healthz(http_port), timeout=20)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    ready = next(line for line in output.splitlines() if "sidecar ready" in line)
    assert "gRPC" not in ready
