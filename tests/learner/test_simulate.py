"""statelab.simulate: the blog post's optimistic-concurrency model, seeded, and what it must show."""

from __future__ import annotations

import math
from statistics import mean

import pytest

from statelab.backoff import Constant, DecorrelatedJitter, Exponential
from statelab.simulate import DELAY, SimResult, SweepRow, simulate, sweep

SEEDS = range(5)
CURVE_POLICIES = ("none", "exponential", "full-jitter", "equal-jitter", "decorrelated-jitter")


def mean_calls(clients: int, policy: str) -> float:
    return mean(simulate(clients, policy, seed=seed).calls for seed in SEEDS)


def mean_time(clients: int, policy: str) -> float:
    return mean(simulate(clients, policy, seed=seed).completion_time for seed in SEEDS)


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    for policy in CURVE_POLICIES:
        assert simulate(30, policy, seed=11) == simulate(30, policy, seed=11)
    assert simulate(30, "full-jitter", seed=11) != simulate(30, "full-jitter", seed=12)


@pytest.mark.parametrize("policy", CURVE_POLICIES)
def test_one_client_makes_one_call_in_four_hops(policy: str) -> None:
    result = simulate(1, policy, seed=3)
    assert result.calls == 1
    assert result.attempts_per_client == (1,)
    hop_spread = math.sqrt(3) * DELAY / 5  # uniform hop: delay ± sqrt(3) * sd
    assert 4 * (DELAY - hop_spread) <= result.completion_time <= 4 * (DELAY + hop_spread)


def test_no_clients_make_no_calls() -> None:
    assert simulate(0, "full-jitter") == SimResult("full-jitter", 0, 0, 0.0, ())


@pytest.mark.parametrize("policy", CURVE_POLICIES)
def test_every_client_succeeds_and_the_calls_add_up(policy: str) -> None:
    result = simulate(40, policy, seed=1)
    assert len(result.attempts_per_client) == 40
    assert min(result.attempts_per_client) >= 1
    assert sum(result.attempts_per_client) == result.calls
    assert result.policy == policy and result.clients == 40


@pytest.mark.parametrize("policy", ["none", "exponential"])
def test_in_lockstep_each_round_has_one_winner_so_calls_are_n_times_n_plus_1_over_2(policy: str) -> None:
    # Without any randomness, not even in the network, exponential backoff keeps everyone in step.
    for clients in (1, 2, 7, 20):
        result = simulate(clients, policy, delay_sd=0.0)
        assert result.calls == clients * (clients + 1) // 2
    assert simulate(20, "none", delay_sd=0.0).completion_time == pytest.approx(4 * 20 * DELAY)


@pytest.mark.parametrize("policy", ["none", "exponential"])
def test_calls_grow_with_clients_without_jitter(policy: str) -> None:
    calls = [mean_calls(clients, policy) for clients in (5, 10, 25, 50, 100)]
    assert calls == sorted(calls) and len(set(calls)) == len(calls)
    assert calls[-1] > 10 * 100  # far more than one call per client: roughly quadratic


@pytest.mark.parametrize("clients", [50, 100])
def test_full_jitter_makes_fewer_calls_than_exponential_at_many_clients(clients: int) -> None:
    full, exponential = mean_calls(clients, "full-jitter"), mean_calls(clients, "exponential")
    assert full < 0.75 * exponential


@pytest.mark.parametrize("clients", [50, 100])
def test_full_jitter_finishes_long_before_exponential_at_many_clients(clients: int) -> None:
    assert mean_time(clients, "full-jitter") < 0.5 * mean_time(clients, "exponential")


@pytest.mark.parametrize("clients", [50, 100])
def test_equal_jitter_sits_between_full_jitter_and_exponential(clients: int) -> None:
    assert mean_calls(clients, "full-jitter") < mean_calls(clients, "equal-jitter") < mean_calls(clients, "exponential")
    assert mean_time(clients, "full-jitter") < mean_time(clients, "equal-jitter") < mean_time(clients, "exponential")


def test_a_policy_object_is_used_as_given() -> None:
    assert simulate(10, Constant(0.01), seed=2).policy == "constant"
    assert simulate(10, Exponential(0.001, 0.1) + Constant(0.01), seed=2).policy == "exponential + constant"
    assert simulate(10, DecorrelatedJitter(0.005, 2.0), seed=2) == simulate(10, "decorrelated-jitter", seed=2)


def test_sweep_gives_one_row_per_policy_and_count_with_means_over_seeds() -> None:
    rows = sweep([1, 20], ["none", "full-jitter"], seeds=[4, 5])
    assert [(row.policy, row.clients) for row in rows] == [
        ("none", 1), ("none", 20), ("full-jitter", 1), ("full-jitter", 20)]
    runs = [simulate(20, "full-jitter", seed=seed) for seed in (4, 5)]
    assert rows[-1] == SweepRow("full-jitter", 20, calls=mean(run.calls for run in runs),
                                completion_time=mean(run.completion_time for run in runs),
                                calls_per_client=mean(run.calls for run in runs) / 20, seeds=2)


def test_sweep_passes_the_timing_parameters_on() -> None:
    slow, fast = sweep([10], ["full-jitter"], delay=0.1, seeds=[0]), sweep([10], ["full-jitter"], delay=0.01, seeds=[0])
    assert slow[0].completion_time > fast[0].completion_time
    lockstep = sweep([10], ["exponential"], base=0.05, cap=0.05, delay_sd=0.0, seeds=[0, 1])
    assert lockstep[0].calls == 55


@pytest.mark.parametrize("kwargs", [{"delay": 0.0}, {"delay": 0.01, "delay_sd": 0.01}, {"delay_sd": -1.0}])
def test_impossible_timings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        simulate(5, "none", **kwargs)


def test_bad_clients_policies_and_seeds_are_refused() -> None:
    with pytest.raises(ValueError):
        simulate(-1, "none")
    with pytest.raises(ValueError, match="unknown retry policy"):
        simulate(5, "sometimes")
    with pytest.raises(ValueError):
        sweep([5], ["none"], seeds=[])
