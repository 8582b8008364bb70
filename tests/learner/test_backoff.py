"""statelab.backoff: each policy's bounds, caps, seeded determinism, per-writer state and composition."""

from __future__ import annotations

import random
from statistics import mean

import pytest

from statelab.backoff import (
    POLICY_NAMES,
    Capped,
    Constant,
    DecorrelatedJitter,
    EqualJitter,
    Exponential,
    FullJitter,
    NoWait,
    Policy,
    Sum,
    full_jitter,
    policy_from_name,
)

BASE, CAP = 0.005, 2.0
SEEDS = range(20)
ATTEMPTS = range(1, 41)  # well past the cap: 0.005 * 2**9 > 2


def expo(attempt: int, base: float = BASE, cap: float = CAP) -> float:
    return min(cap, base * 2**attempt)


def waits(policy: Policy, seed: int, attempts: range = ATTEMPTS) -> list[float]:
    """One writer's waits for a run of consecutive retries."""
    rng = random.Random(seed)
    own = policy.new()
    return [own.delay(attempt, rng) for attempt in attempts]


def test_none_never_waits() -> None:
    assert all(wait == 0.0 for seed in SEEDS for wait in waits(NoWait(), seed))


def test_constant_always_waits_its_seconds() -> None:
    assert set(waits(Constant(0.25), 0)) == {0.25}


def test_exponential_doubles_from_twice_base_then_holds_at_cap() -> None:
    assert waits(Exponential(BASE, CAP), 0, range(1, 12)) == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0, 2.0])


def test_exponential_at_a_huge_attempt_is_the_cap_not_an_overflow() -> None:
    rng = random.Random(0)
    for policy in (Exponential(BASE, CAP), FullJitter(BASE, CAP), EqualJitter(BASE, CAP)):
        assert 0 <= policy.delay(100_000, rng) <= CAP


def test_full_jitter_stays_between_zero_and_the_exponential_wait() -> None:
    for seed in SEEDS:
        for attempt, wait in zip(ATTEMPTS, waits(FullJitter(BASE, CAP), seed), strict=True):
            assert 0 <= wait <= expo(attempt)


def test_equal_jitter_stays_between_half_and_all_of_the_exponential_wait() -> None:
    for seed in SEEDS:
        for attempt, wait in zip(ATTEMPTS, waits(EqualJitter(BASE, CAP), seed), strict=True):
            assert expo(attempt) / 2 <= wait <= expo(attempt)


def test_decorrelated_jitter_stays_within_base_and_cap_and_at_most_triples() -> None:
    for seed in SEEDS:
        previous = BASE
        for wait in waits(DecorrelatedJitter(BASE, CAP), seed, range(1, 201)):
            assert BASE <= wait <= CAP
            assert wait <= previous * 3
            previous = wait


def test_decorrelated_jitter_reaches_the_cap_on_a_long_run() -> None:
    assert max(waits(DecorrelatedJitter(BASE, CAP), 0, range(1, 201))) == CAP


def test_every_named_policy_waits_between_zero_and_its_cap_for_any_base_and_cap() -> None:
    draw = random.Random(2015)
    for _ in range(300):
        base = draw.choice([0.0, draw.uniform(0, 10)])
        cap = base + draw.choice([0.0, draw.uniform(0, 100)])
        attempts = draw.randint(1, 5000)
        for name in POLICY_NAMES:
            policy, rng = policy_from_name(name, base, cap).new(), random.Random(draw.getrandbits(32))
            for attempt in range(1, attempts + 1, max(1, attempts // 20)):  # decorrelated needs its history
                assert 0 <= policy.delay(attempt, rng) <= cap, (name, base, cap, attempt)


def test_the_same_seed_gives_the_same_waits_and_another_seed_other_waits() -> None:
    for name in ("full-jitter", "equal-jitter", "decorrelated-jitter"):
        policy = policy_from_name(name, BASE, CAP)
        assert waits(policy, 7) == waits(policy, 7)
        assert waits(policy, 7) != waits(policy, 8)


def test_full_jitter_mean_is_about_half_the_exponential_wait() -> None:
    rng = random.Random(1)
    policy = FullJitter(BASE, CAP)
    for attempt in (1, 4, 12):
        assert mean(policy.delay(attempt, rng) for _ in range(20_000)) == pytest.approx(expo(attempt) / 2, rel=0.02)


def test_equal_jitter_mean_is_about_three_quarters_of_the_exponential_wait() -> None:
    rng = random.Random(1)
    policy = EqualJitter(BASE, CAP)
    for attempt in (1, 4, 12):
        assert mean(policy.delay(attempt, rng) for _ in range(20_000)) == pytest.approx(expo(attempt) * 0.75, rel=0.02)


def test_new_gives_each_writer_its_own_decorrelated_state() -> None:
    policy = DecorrelatedJitter(BASE, CAP)
    alone = waits(policy, 3, range(1, 10))

    def interleaved(first: Policy, second: Policy) -> list[float]:
        """Two writers retrying in turn; what the second one waits."""
        rng_first, rng_second = random.Random(4), random.Random(3)
        seen = []
        for attempt in range(1, 10):
            first.delay(attempt, rng_first)
            seen.append(second.delay(attempt, rng_second))
        return seen

    assert policy.new() is not policy
    assert interleaved(policy.new(), policy.new()) == alone
    assert interleaved(policy, policy) != alone  # one shared copy: each writer grows from the other's waits


def test_decorrelated_jitter_starts_over_at_attempt_one() -> None:
    policy = DecorrelatedJitter(BASE, CAP)
    rng = random.Random(5)
    for attempt in range(1, 30):
        policy.delay(attempt, rng)
    state = rng.getstate()
    again = policy.delay(1, rng)
    rng.setstate(state)
    assert again == DecorrelatedJitter(BASE, CAP).delay(1, rng)
    assert BASE <= again <= 3 * BASE


def test_stateless_policies_are_their_own_per_writer_copy() -> None:
    for name in POLICY_NAMES:
        policy = policy_from_name(name, BASE, CAP)
        assert (policy.new() is policy) == (name != "decorrelated-jitter")


def test_plus_adds_the_two_waits() -> None:
    policy = Exponential(BASE, CAP) + Constant(0.1)
    assert isinstance(policy, Sum)
    assert policy.name == "exponential + constant"
    assert waits(policy, 0, range(1, 4)) == pytest.approx([0.11, 0.12, 0.14])
    assert sum([Constant(0.1), Constant(0.2), Constant(0.3)]).delay(1, random.Random()) == pytest.approx(0.6)


def test_capped_never_waits_longer_than_its_maximum() -> None:
    policy = (Exponential(BASE, CAP) + FullJitter(BASE, CAP)).capped(0.5)
    assert isinstance(policy, Capped)
    assert policy.name == "exponential + full-jitter, at most 0.5"
    for seed in SEEDS:
        assert all(0 <= wait <= 0.5 for wait in waits(policy, seed))
    assert max(waits(policy, 0)) == 0.5


def test_composed_policies_give_each_writer_fresh_state() -> None:
    stateless = Exponential(BASE, CAP) + Constant(0.1)
    assert stateless.new() is stateless
    stateful = (DecorrelatedJitter(BASE, CAP) + Constant(0.1)).capped(1.0)
    copy = stateful.new()
    assert copy is not stateful
    assert copy.policy.first is not stateful.policy.first  # type: ignore[attr-defined]
    assert waits(stateful, 4) == waits(stateful, 4)


def test_bind_gives_a_per_writer_attempt_to_seconds_function() -> None:
    wait = FullJitter(BASE, CAP).bind(random.Random(2))
    rng = random.Random(2)
    assert [wait(attempt) for attempt in range(1, 6)] == [FullJitter(BASE, CAP).delay(a, rng) for a in range(1, 6)]


def test_policy_from_name_builds_every_named_policy_with_a_readable_repr() -> None:
    for name in POLICY_NAMES:
        policy = policy_from_name(name, BASE, CAP)
        assert policy.name == name
        assert policy(1, random.Random(0)) == policy.delay(1, random.Random(0))
    assert repr(policy_from_name("full-jitter", BASE, CAP)) == "FullJitter(base=0.005, cap=2.0)"
    assert repr(policy_from_name("decorrelated-jitter", BASE, CAP)) == "DecorrelatedJitter(base=0.005, cap=2.0)"
    assert policy_from_name("constant", 3.0, 1.0) == Constant(1.0)  # a constant wait respects the cap too


def test_an_unknown_policy_name_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="full-jitter"):
        policy_from_name("fibonacci", BASE, CAP)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_attempt_zero_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        policy_from_name(name, BASE, CAP).delay(0, random.Random())


def test_negative_times_are_refused() -> None:
    for build in (lambda: Exponential(-1, 1), lambda: FullJitter(1, -1), lambda: Constant(-0.1),
                  lambda: NoWait().capped(-1), lambda: policy_from_name("none", -1, 1)):
        with pytest.raises(ValueError):
            build()


def test_full_jitter_the_function_is_the_policys_draw_and_rng_uniforms() -> None:
    for seed in SEEDS:
        rng, policy_rng, uniform_rng = random.Random(seed), random.Random(seed), random.Random(seed)
        for attempt in ATTEMPTS:
            wait = full_jitter(attempt, rng, BASE, CAP)
            assert wait == FullJitter(BASE, CAP).delay(attempt, policy_rng)
            assert wait == uniform_rng.uniform(0, expo(attempt))  # what the inline versions it replaced drew


def test_full_jitter_the_function_refuses_what_the_policy_refuses() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        full_jitter(0, random.Random(), BASE, CAP)
    with pytest.raises(ValueError):
        full_jitter(1, random.Random(), -1, CAP)
    assert 0 <= full_jitter(100_000, random.Random(0), BASE, CAP) <= CAP
