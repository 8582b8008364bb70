"""Notebook 01 runs headlessly on every store and records what the lesson claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from statelab.tools import runner

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_save_get_delete.ipynb"
EXTRA = {"ttl_seconds": 2}  # papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)


@pytest.mark.parametrize("store", ["redis", "sqlite", "in-memory"])
def test_notebook_01_round_trips_and_sees_204_for_a_deleted_key(tmp_path, store):
    result = runner.run_one(NOTEBOOK, tmp_path, store=store, cell_timeout=120, extra=EXTRA)
    assert result.ok, result.error
    check_metrics(result.metrics)
    assert (tmp_path / "01_save_get_delete.html").stat().st_size > 0


def check_metrics(m: dict) -> None:
    """What the lesson claims, on any store and either sidecar."""
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
