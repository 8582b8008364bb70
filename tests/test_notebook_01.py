"""Notebook 01 runs headlessly on every store and records what the lesson claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from statelab import runner

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_save_get_delete.ipynb"


@pytest.mark.parametrize("store", ["redis", "sqlite", "in-memory"])
def test_notebook_01_round_trips_and_sees_204_for_a_deleted_key(tmp_path, store):
    result = runner.run_one(NOTEBOOK, tmp_path, store=store, cell_timeout=120, extra={"ttl_seconds": 2})
    assert result.ok, result.error
    m = result.metrics
    assert (m["save_status"], m["get_status"], m["delete_status"]) == (204, 200, 204)
    assert m["roundtrip_ok"] is True
    assert m["missing_key_status"] == 204
    assert m["deleted_key_status"] == 204
    assert m["etag_changed_on_write"] is True
    assert (m["stale_delete_status"], m["survived_stale_delete"]) == (409, True)
    assert m["bulk_keys_found"] == ["a", "b"]
    assert m["after_transaction"] == {"a": None, "b": {"n": 2}, "c": 3}
    assert 0.9 <= m["ttl_expired_after_s"] <= 6  # sqlite counts whole seconds
    assert m["stored_key"] == "myapp||order-2"
    assert (tmp_path / "01_save_get_delete.html").stat().st_size > 0
