"""Notebook 06 (the Dapr Python SDK over gRPC) runs headlessly and records what the lesson claims."""

from __future__ import annotations

from statelab.tools.runner import ROOT, run_one

NOTEBOOK = ROOT / "notebooks" / "06_python_sdk.ipynb"
EXTRA = {"bulk_keys": 2}  # papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)


def test_notebook_06_runs_the_sdk_flow_and_records_grpc_answers(tmp_path):
    result = run_one(NOTEBOOK, tmp_path, store="redis", cell_timeout=180, extra=EXTRA)
    assert result.ok, result.error
    check_metrics(result.metrics)
    assert (tmp_path / "06_python_sdk.html").stat().st_size > 0


def check_metrics(m: dict) -> None:
    """What the lesson claims, as recorded on Redis (the same on statelab's sidecar and on daprd)."""

    # conftest keeps DAPR_* out of the environment: the notebook started a local stack with gRPC beside HTTP
    assert m["grpc_endpoint"].startswith("127.0.0.1:")

    # save/get: bytes in, bytes out; a missing key is empty data and ETag, not an error
    assert m["roundtrip_ok"] is True
    assert m["missing_key"] == ["", ""]

    # ETag conflicts raise DaprGrpcError with ABORTED on save and delete; nothing is written or deleted
    assert m["etag_changed_on_write"] is True
    assert m["conflict_code"] == ["ABORTED", "ERR_STATE_SAVE"]
    assert m["survived_conflict"] is True
    assert m["stale_delete_code"] == "ABORTED"
    assert m["deleted_data"] == ""

    # first-write: a stale ETag is ABORTED; no ETag on a first-write key is Redis's plain store error
    assert m["first_write_codes"] == ["ABORTED", "INTERNAL"]
    assert m["ticket_value"] == "assigned"

    # transaction in order, and its ETag conflict is INTERNAL
    assert m["after_transaction"] == {"a": None, "b": '{"n": 2}', "c": "3"}
    assert m["transaction_conflict_code"] == ["INTERNAL", "ERR_STATE_TRANSACTION"]
    assert m["bulk_found"] == ["b", "c", "order-100", "order-101"]

    # one store, two protocols (docs/dapr-behaviour.md §10)
    assert m["http_saved_read_by_sdk"] == '"hello"'
    assert m["sdk_saved_read_over_http"] == "hello"
    assert m["sdk_saved_http_content_type"] == "application/json"
    assert m["json_metadata_read_over_http"] == '{"b":1,"a":2}'  # Redis keeps the document's key order
