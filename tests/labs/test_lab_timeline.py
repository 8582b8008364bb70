"""Lab 02's timeline shows what a wrong solution lost: the acknowledged writes that vanished are marked on it."""

from __future__ import annotations

import pytest
from helpers import STORES, good_attempt

from statelab.client import State
from statelab.lab import Checker
from statelab.metrics import Metrics
from statelab.session import Session

LOST = "acknowledged, then lost"


def blind_attempt(client, store, key):
    state = client.get(store, key) or State(key, 0, None)
    client.save(store, key, state.value + 1)


def good_backoff(attempt, rng):
    return rng.uniform(0, min(0.1, 0.002 * 2**attempt))


def _bars(fig) -> dict[str, int]:
    """How many bars each legend label has on the figure's timeline."""
    (ax,) = fig.axes
    return {c.get_label(): len(c.patches) for c in ax.containers}


@pytest.mark.parametrize("store", STORES)
def test_the_lost_writes_of_a_blind_increment_are_marked_and_counted(stacks, store, tmp_path):
    check = Checker("02_increment_lab", Session(stacks[store].endpoint, stack=stacks[store]),
                    Metrics("02_increment_lab", tmp_path), progress=False)
    result = check.increment(blind_attempt, good_backoff, 30, operations=5)
    assert not result.passed
    run = result.data
    assert run.lost_updates > 0
    fig = check.timeline()
    bars = _bars(fig)
    # every lost write the history pins down is drawn apart; together with the ok ones they are all acknowledged
    assert 0 < bars[LOST] <= run.lost_updates
    assert bars[LOST] + bars["ok"] == run.acknowledged
    title = fig.axes[0].get_title()
    assert f"{run.lost_updates} acknowledged writes lost" in title
    if bars[LOST] < run.lost_updates:
        assert f"{run.lost_updates - bars[LOST]} not pinned on a write" in title


def test_a_right_solution_loses_nothing_and_its_timeline_says_so(stacks, tmp_path):
    check = Checker("02_increment_lab", Session(stacks["sqlite"].endpoint, stack=stacks["sqlite"]),
                    Metrics("02_increment_lab", tmp_path), progress=False)
    assert check.increment(good_attempt, good_backoff, 30, operations=5).passed
    bars = _bars(check.timeline())
    assert LOST not in bars and bars["conflict"] > 0 and bars["ok"] == 40
    assert "lost" not in check.timeline().axes[0].get_title()
