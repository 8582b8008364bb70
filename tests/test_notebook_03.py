"""Notebook 03 (ETags and first-write-wins) runs headlessly and records what the lesson claims."""

from __future__ import annotations

from statelab.tools.runner import ROOT, run_one

NOTEBOOK = ROOT / "notebooks" / "03_etags_first_write_wins.ipynb"
EXTRA: dict = {}  # papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)


def test_notebook_03_runs_and_records_the_etag_lessons(tmp_path):
    result = run_one(NOTEBOOK, tmp_path, store="redis", cell_timeout=180, extra=EXTRA)
    assert result.ok, result.error
    check_metrics(result.metrics)


def check_metrics(m: dict) -> None:
    """What the lesson claims, as recorded on Redis (the same on statelab's sidecar and on daprd)."""

    # two writers in a forced order: exactly one 204 (A, first) and one 409 (B, stale)
    assert m["interleaving_write_statuses"] == [204, 409]
    assert m["interleaving_final_balance"] == 110

    # a delete with a stale If-Match is refused and the value survives
    assert m["stale_delete_status"] == 409
    assert m["stale_delete_value_survived"] is True

    # create-if-absent: exactly one of the racing creators wins
    assert m["create_race_winners"] == 1

    # retrying with the ETag read once never succeeds; the re-reading loop loses no increment
    assert set(m["stale_retry_statuses"]) == {409}
    assert m["retry_lost_increments"] == 0
    assert m["retry_final_counter"] == m["retry_successes"]
    assert m["retry_successes"] + m["retry_gave_up"] == 40  # writers x increments (defaults 4 x 10)
    assert 1 <= m["retry_max_attempts_seen"] <= 20

    # the live matrix agrees with the documented one
    assert m["matrix_matches_contract"] is True
    assert m["matrix_mismatches"] == []

    # conftest keeps DAPR_* out of the environment, so the notebook started a local Redis stack and the matrix
    # added the other two stores
    assert m["matrix_columns"] == ["redis", "sqlite", "in-memory"]
    assert m["matrix_observed"]["transaction_other_applied"] == {"redis": "yes", "sqlite": "no", "in-memory": "no"}

    # the Redis quirks: losers of the race get 500, and create-if-absent overwrites a plainly written key
    assert m["create_race_loser_statuses"] == [500]
    assert m["create_if_absent_statuses"] == [204, 500, 204]
