"""Lesson 02 (strong vs eventual) runs headlessly on Redis and records what it measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from statelab.tools.runner import run_one

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_strong_vs_eventual.ipynb"
SAMPLES = 100
EXTRA = {"samples": SAMPLES}  # papermill parameters beyond the runner's common ones (also for test_notebooks_on_daprd)

pytestmark = pytest.mark.slow  # stops a Redis replica and restarts the sidecar


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    result = run_one(NOTEBOOK, tmp_path_factory.mktemp("nb02"), store="redis", cell_timeout=180, extra=EXTRA)
    assert result.ok, result.error
    return result.metrics


# What the lesson claims, one function each; test_notebooks_on_daprd holds daprd to the same ones.


def strong_saves_are_slower_at_the_median_with_a_replica(metrics):
    assert metrics["store_type"] == "state.redis"
    assert metrics["connected_replicas"] == 1
    assert metrics["strong_p50_ms"] > metrics["eventual_p50_ms"]
    assert metrics["strong_extra_p50_ms"] > 0


def every_strong_save_sent_exactly_one_wait(metrics):
    assert metrics["strong_saves"] == SAMPLES
    assert metrics["wait_calls"] == metrics["strong_saves"]


def no_replica_read_is_stale_after_a_strong_save(metrics):
    assert metrics["stale_after_strong"] == 0
    assert 0 <= metrics["stale_after_eventual"] <= SAMPLES  # reported, not predicted (daprd: from 0 to most)


def strong_save_with_the_replica_down_succeeds_late(metrics):
    assert metrics["replica_down_strong_ok"] is True
    assert metrics["replica_down_strong_s"] >= 0.9
    assert metrics["replica_down_eventual_s"] < metrics["replica_down_strong_s"]
    assert metrics["replica_down_wait_reply"] == 0
    assert metrics["replica_caught_up"] is True


def the_replica_count_is_read_once_at_sidecar_start(metrics):
    assert metrics["waits_started_without_replica"] == 0
    assert metrics["waits_started_with_replica"] == 1


def consistency_as_a_header_is_ignored(metrics):
    assert metrics["header_save_status"] == 204
    assert metrics["header_save_waits"] == 0
    assert metrics["body_save_waits"] == 1
    assert metrics["bogus_header_delete_status"] == 204
    assert metrics["bogus_query_delete_status"] == 500


CLAIMS = (strong_saves_are_slower_at_the_median_with_a_replica, every_strong_save_sent_exactly_one_wait,
          no_replica_read_is_stale_after_a_strong_save, strong_save_with_the_replica_down_succeeds_late,
          the_replica_count_is_read_once_at_sidecar_start, consistency_as_a_header_is_ignored)


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda claim: claim.__name__)
def test_lesson_02_measures_that(metrics, claim):
    claim(metrics)


def check_metrics(metrics: dict) -> None:
    """Every claim at once (for test_notebooks_on_daprd)."""
    for claim in CLAIMS:
        claim(metrics)
