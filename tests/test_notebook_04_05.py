"""Notebooks 04 and 05 run headlessly and record what the lessons claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from statelab.tools import runner

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)
EXTRA_04 = {"writers": 8, "operations": 10, "scaling_writers": [1, 4, 8]}
EXTRA_05 = {"writers": 8, "operations": 5, "real_writers": [2, 8]}


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_notebook_04_first_write_loses_nothing_and_last_write_loses_updates(tmp_path, store):
    result = runner.run_one(NOTEBOOKS / "04_concurrent_writers.ipynb", tmp_path, store=store, cell_timeout=180,
                            extra=EXTRA_04)
    assert result.ok, result.error
    check_04(result.metrics)


def test_notebook_05_jitter_beats_plain_exponential_in_the_model_and_nothing_is_lost(tmp_path):
    result = runner.run_one(NOTEBOOKS / "05_backoff_and_jitter.ipynb", tmp_path, store="redis", cell_timeout=180,
                            extra=EXTRA_05)
    assert result.ok, result.error
    check_05(result.metrics)


def check_04(m: dict) -> None:
    """What lesson 04 claims, with EXTRA_04's writers (on any store that all sidecars share, either sidecar)."""
    assert m["first_write_lost_updates"] == 0 and m["first_write_findings"] == {}
    assert m["first_write_acknowledged"] == m["first_write_surviving"] == 80
    assert m["first_write_conflicts"] > 0
    assert m["last_write_acknowledged"] == 80 and m["last_write_conflicts"] == 0
    assert m["last_write_lost_updates"] > 0
    assert m["last_write_findings"]["missing-increments"] == 1
    assert m["append_last_write_findings"]["missing-ids"] == 1
    assert m["scaling_lost_updates"] == [0, 0, 0]
    assert m["scaling_attempts_per_success"][0] == 1.0  # one writer never conflicts


def check_05(m: dict) -> None:
    """What lesson 05 claims, with EXTRA_05's writers (either sidecar)."""
    for n in (50, 100):
        calls = m[f"sim_calls_at_{n}"]
        assert calls["full-jitter"] < calls["exponential"] < calls["none"]
    for policy in ("none", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"):
        assert m[f"{policy}_lost_updates"] == 0
        assert m[f"{policy}_attempts_per_success"] >= 1
    # the summary: retrying without back-off costs the most attempts (about twice the others, on either sidecar)
    backing_off = ("exponential", "full_jitter", "equal_jitter", "decorrelated_jitter")
    assert m["none_attempts_per_success"] > max(m[f"{policy}_attempts_per_success"] for policy in backing_off)
    assert m["real_lost_updates"] == 0
    assert set(m["real_calls_per_client"]) == {"exponential@2", "exponential@8", "full-jitter@2", "full-jitter@8"}
