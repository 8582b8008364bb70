"""``statelab.lessons.consistency``: the measurements behind lesson 02, against real sidecars.

Redis tests that stop the replica or restart the sidecar get a stack of their own; the others use the
shared stacks of conftest. A ``Session`` without a stack stands in for a real daprd (the lesson must then
skip the parts that open the store, with a sentence).
"""

from __future__ import annotations

import pytest
from helpers import make_stack

from statelab import plots
from statelab.lessons import consistency
from statelab.session import Session

SAMPLES = 100


@pytest.fixture(scope="module")
def redis_session(tmp_path_factory):
    with make_stack(tmp_path_factory.mktemp("consistency"), store="redis", replicas=1) as stack:
        session = Session(stack.endpoint, stack=stack)
        yield session
        session.client.close()


@pytest.fixture
def shared_session(request, stacks):
    session = Session(stacks[request.param].endpoint, stack=stacks[request.param])
    yield session
    session.client.close()


@pytest.fixture
def remote_session(stacks):
    """The shared Redis sidecar seen as a real daprd would be: by its endpoint only."""
    session = Session(stacks["redis"].endpoint)
    yield session
    session.client.close()


def test_what_strong_means_quotes_the_docs_and_names_this_store(redis_session):
    meaning = consistency.what_strong_means(redis_session)
    assert meaning.store_type == "state.redis"
    assert meaning.connected_replicas == 1
    assert meaning.this_store is not None and "WAIT" in meaning.this_store["save"]
    assert any("all replicas" in claim["text"] for claim in meaning.claims)


def test_strong_saves_are_slower_at_the_median_and_each_sends_one_wait(redis_session):
    timings = consistency.measure_saves(redis_session, SAMPLES, seed=7, progress=False)
    assert len(timings.latency_ms["strong"]) == len(timings.latency_ms["eventual"]) == SAMPLES
    assert timings.p50("strong") > timings.p50("eventual")
    assert timings.wait_calls == timings.strong_saves == SAMPLES
    assert timings.skipped == ""


def test_the_replica_is_never_stale_right_after_a_strong_save(redis_session):
    timings = consistency.measure_saves(redis_session, SAMPLES, seed=8, progress=False)
    assert timings.stale["strong"] == 0
    # Eventual may or may not lag on one machine: it is counted, not predicted.
    assert isinstance(timings.stale["eventual"], int) and 0 <= timings.stale["eventual"] <= SAMPLES


@pytest.mark.parametrize("shared_session", ["sqlite", "in-memory"], indirect=True)
def test_without_redis_strong_is_accepted_and_the_replica_parts_skip(shared_session):
    timings = consistency.measure_saves(shared_session, 10, progress=False)
    assert timings.strong_saves == 10
    assert timings.stale == {"strong": None, "eventual": None}
    assert timings.wait_calls is None
    assert consistency.NOT_REDIS in timings.skipped
    assert consistency.save_with_replica_down(shared_session, progress=False).skipped == f"Skipped: {consistency.NOT_REDIS}"
    assert consistency.replica_count_is_read_once(shared_session, progress=False).skipped


@pytest.mark.slow
def test_strong_save_with_the_replica_down_succeeds_after_the_wait_timeout(redis_session):
    down = consistency.save_with_replica_down(redis_session, progress=False)
    assert down.strong_ok is True and down.value_read_back is True
    assert down.strong_seconds >= 0.9  # WAIT's 1000 ms timeout, whose answer Dapr ignores
    assert down.eventual_ok is True and down.eventual_seconds < down.strong_seconds
    assert down.wait_calls == 1
    assert down.wait_reply == 0
    assert down.replica_caught_up is True
    assert "redis-1" in redis_session.stack.pids


@pytest.mark.slow
def test_the_replica_count_is_read_when_the_sidecar_starts(redis_session):
    once = consistency.replica_count_is_read_once(redis_session, progress=False)
    assert once.connected_replicas == 1
    assert once.waits_started_without_replica == 0
    assert once.waits_started_with_replica == 1
    assert {"redis-1", "sidecar-0"} <= set(redis_session.stack.pids)
    assert redis_session.client.healthy()


def test_a_consistency_header_sends_no_wait_and_the_body_option_one(redis_session):
    header = consistency.check_header(redis_session)
    assert header["header save"].status == 204 and header["header save"].waits == 0
    assert header["body save"].status == 204 and header["body save"].waits == 1
    assert header["header get"].status == 200 and header["header get"].waits == 0


@pytest.mark.parametrize("shared_session", ["in-memory", "sqlite", "redis"], indirect=True)
def test_a_bogus_consistency_passes_in_a_header_and_is_refused_in_the_query(shared_session):
    header = consistency.check_header(shared_session)
    assert header["bogus header delete"].status == 204
    assert header["bogus query delete"].status == 500
    assert header["bogus query delete"].error_code == "ERR_STATE_DELETE"


def test_against_a_sidecar_we_did_not_start_the_store_is_left_alone(remote_session):
    timings = consistency.measure_saves(remote_session, 5, progress=False)
    assert timings.strong_saves == 5 and timings.wait_calls is None
    assert consistency.NOT_LOCAL in timings.skipped
    assert consistency.save_with_replica_down(remote_session, progress=False).skipped == f"Skipped: {consistency.NOT_LOCAL}"
    assert consistency.replica_count_is_read_once(remote_session, progress=False).skipped
    header = consistency.check_header(remote_session)
    assert header["header save"].status == 204 and header["header save"].waits is None
    assert consistency.what_strong_means(remote_session).connected_replicas is None


def test_plot_latencies_draws_one_curve_per_mode_on_a_log_axis(redis_session):
    import matplotlib

    matplotlib.use("Agg")
    timings = consistency.measure_saves(redis_session, 5, progress=False)
    fig = plots.save_latencies(timings)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [label.split()[0] for label in labels] == ["strong", "eventual"]
