"""Notebook 00 runs the Dapr how-to's snippets headlessly and records what goes wrong and what the fixes do."""

from __future__ import annotations

from pathlib import Path

from statelab.tools import runner

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "00_howto_as_written.ipynb"
EXTRA: dict = {}  # papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)


def test_notebook_00_shows_each_docs_bug_and_every_fix_working(tmp_path):
    result = runner.run_one(NOTEBOOK, tmp_path, store="redis", cell_timeout=180, extra=EXTRA)
    assert result.ok, result.error
    check_metrics(result.metrics)
    assert (tmp_path / "00_howto_as_written.html").stat().st_size > 0


def check_metrics(m: dict) -> None:
    """What the lesson claims, as recorded on Redis (the same on statelab's sidecar and on daprd)."""
    # as written: the store name, then the double-encoded body
    assert m["as_written_save"] == [400, "ERR_STATE_STORE_NOT_FOUND"]
    assert m["double_encoded_save"] == [400, "ERR_MALFORMED_REQUEST"]
    # str.format on the JSON template
    assert m["format_exception"].startswith("KeyError")
    # k1 saved, key1 read: 204 and no ETag header
    assert m["get_key1_status"] == 204
    assert m["get_key1_exception"].startswith("KeyError")
    assert m["delete_key1"] == [204, "Some Data"]
    # consistency as a header is ignored: not in the query, never validated, no Redis WAIT
    assert m["header_consistency_in_query"] is False
    assert m["probe_header_delete_status"] == 204
    assert m["probe_query_delete"] == [500, "ERR_STATE_DELETE"]
    assert m["probe_redis_waits"] == [1, 0]
    # ETag example: unchecked 400, then the stale-ETag delete refused
    assert m["etag_unchecked_statuses"] == ["GET 200", "POST 400", "DELETE 204"]
    assert m["etag_stale_statuses"] == ["GET 200", "POST 204", "DELETE 409"]
    # the retry loop: still retrying at the timeout, every save a 204; the fixed loop needs one attempt
    stopped, attempts = m["retry_stopped_at_timeout"]
    assert stopped is True and attempts > 1
    assert m["retry_saves_all_204"] is True
    assert m["retry_rejected_attempts"] > 1
    assert m["fixed_retry"] == [1, "New Data"]
    # every fixed snippet
    assert m["fixed_save_status"] == 204
    assert m["strong_save_redis_waits"] == 1
    assert m["fixed_get"] == [200, "Some Data", True]
    assert m["fixed_delete"] == [204, None]
    assert m["fixed_etag_statuses"] == ["GET 200", "POST 204", "POST 409", "GET 200", "DELETE 204"]
    assert m["all_fixed_ok"] is True
