"""Retry policies: how long a writer waits after a conflict before it tries again.

The six policies are the ones compared in the AWS Architecture Blog post "Exponential Backoff And
Jitter" (Marc Brooker, 2015). With ``attempt`` = 1 for the first retry, 2 for the second, ...:

- ``none``: retry at once (0).
- ``constant``: always ``base``.
- ``exponential``: ``min(cap, base * 2**attempt)``; writers that collided once collide again, in step.
- ``full-jitter``: a uniform draw in ``[0, min(cap, base * 2**attempt)]``.
- ``equal-jitter``: half of the exponential wait fixed, the other half drawn at random.
- ``decorrelated-jitter``: ``min(cap, uniform(base, previous * 3))``, starting from ``previous = base``.

A policy is a small object with ``delay(attempt, rng) -> seconds`` (also callable as
``policy(attempt, rng)``) and a readable ``name`` for legends and tables. All randomness comes from the
``random.Random`` passed in, so a seeded rng gives the same waits every time. Decorrelated jitter
remembers its previous wait, so each writer needs its own copy: call ``policy.new()`` once per writer
(stateless policies return themselves). Policies compose: ``a + b`` adds two waits and
``p.capped(m)`` never waits longer than ``m``; ``policy.bind(rng)`` gives a fresh per-writer
``attempt -> seconds`` function in the form ``statelab.lessons.etags`` retry loops take.

``full_jitter(attempt, rng, base, cap)`` is full jitter as a plain function, for code that wants one wait
without building a policy (``FullJitter`` draws through it). Anything of the form ``(attempt, rng) ->
seconds`` (a ``BackoffFn``: every policy, or a lab learner's ``backoff``) is what ``statelab.writers.run_writers``
takes as its ``backoff``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

BackoffFn = Callable[[int, random.Random], float]  # (retry number from 1, rng) -> seconds to wait

POLICY_NAMES = ("none", "constant", "exponential", "full-jitter", "equal-jitter", "decorrelated-jitter")

_MAX_EXPONENT = 1023  # 2.0**1024 overflows; past this every capped exponential is at its cap anyway


def _bad_attempt(attempt: int) -> ValueError:
    return ValueError(f"attempt counts from 1 (the first retry), got {attempt}")


def _check_base_cap(base: float, cap: float) -> None:
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must be >= 0, got base={base}, cap={cap}")


def _exponential(base: float, cap: float, attempt: int) -> float:
    return min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))


def full_jitter(attempt: int, rng: random.Random, base: float, cap: float) -> float:
    """Full jitter: a uniform draw in ``[0, min(cap, base * 2**attempt)]``, from ``rng``.

    The same draw as ``rng.uniform(0, min(cap, base * 2**attempt))``, one call cheaper, and no overflow
    at a huge ``attempt``.
    """
    if attempt < 1:
        raise _bad_attempt(attempt)
    _check_base_cap(base, cap)
    return _exponential(base, cap, attempt) * rng.random()


class Policy:
    """Base of all policies: ``delay`` is the one method a policy must define."""

    name: ClassVar[str] = "policy"

    def delay(self, attempt: int, rng: random.Random) -> float:
        raise NotImplementedError

    def __call__(self, attempt: int, rng: random.Random) -> float:
        return self.delay(attempt, rng)

    def new(self) -> Policy:
        """A copy for one writer with fresh state; stateless policies return themselves."""
        return self

    def bind(self, rng: random.Random) -> Callable[[int], float]:
        """A fresh per-writer ``attempt -> seconds`` function drawing from ``rng``."""
        own = self.new()
        return lambda attempt: own.delay(attempt, rng)

    def __add__(self, other: Policy) -> Policy:
        if not isinstance(other, Policy):
            return NotImplemented
        return Sum(self, other)

    def __radd__(self, other: object) -> Policy:
        if other == 0:  # so that sum([p, q, r]) works
            return self
        return NotImplemented

    def capped(self, maximum: float) -> Policy:
        """This policy, but never waiting longer than ``maximum``."""
        return Capped(self, maximum)


@dataclass(frozen=True)
class NoWait(Policy):
    """Retry at once."""

    name: ClassVar[str] = "none"

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt < 1:
            raise _bad_attempt(attempt)
        return 0.0


@dataclass(frozen=True)
class Constant(Policy):
    """Always wait ``seconds``."""

    seconds: float
    name: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"a wait cannot be negative, got {self.seconds}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt < 1:
            raise _bad_attempt(attempt)
        return self.seconds


@dataclass(frozen=True)
class Exponential(Policy):
    """Wait ``min(cap, base * 2**attempt)``, no randomness: writers that collided stay in step."""

    base: float
    cap: float
    name: ClassVar[str] = "exponential"

    def __post_init__(self) -> None:
        _check_base_cap(self.base, self.cap)

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt < 1:
            raise _bad_attempt(attempt)
        return _exponential(self.base, self.cap, attempt)


@dataclass(frozen=True)
class FullJitter(Policy):
    """Wait a uniform draw in ``[0, min(cap, base * 2**attempt)]``."""

    base: float
    cap: float
    name: ClassVar[str] = "full-jitter"

    def __post_init__(self) -> None:
        _check_base_cap(self.base, self.cap)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return full_jitter(attempt, rng, self.base, self.cap)


@dataclass(frozen=True)
class EqualJitter(Policy):
    """Wait half the exponential wait plus a uniform draw in the other half."""

    base: float
    cap: float
    name: ClassVar[str] = "equal-jitter"

    def __post_init__(self) -> None:
        _check_base_cap(self.base, self.cap)

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt < 1:
            raise _bad_attempt(attempt)
        half = _exponential(self.base, self.cap, attempt) / 2
        return half + half * rng.random()


@dataclass(eq=False)
class DecorrelatedJitter(Policy):
    """Wait ``min(cap, uniform(base, previous * 3))``; ``previous`` starts at ``base``.

    The only policy with state (its previous wait), so give each writer its own via ``new()``. A call
    with ``attempt == 1`` starts a new retry sequence (``previous`` back to ``base``), so one writer can
    reuse its copy across operations.
    """

    base: float
    cap: float
    previous: float = field(init=False, repr=False)
    name: ClassVar[str] = "decorrelated-jitter"

    def __post_init__(self) -> None:
        _check_base_cap(self.base, self.cap)
        self.previous = self.base

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt < 1:
            raise _bad_attempt(attempt)
        if attempt == 1:
            self.previous = self.base
        self.previous = min(self.cap, self.base + (self.previous * 3 - self.base) * rng.random())
        return self.previous

    def new(self) -> DecorrelatedJitter:
        return DecorrelatedJitter(self.base, self.cap)


@dataclass(frozen=True)
class Sum(Policy):
    """Wait ``first`` plus ``second`` (what ``first + second`` builds)."""

    first: Policy
    second: Policy

    @property
    def name(self) -> str:  # type: ignore[override]  # computed from its parts; the base class has a field
        return f"{self.first.name} + {self.second.name}"

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.first.delay(attempt, rng) + self.second.delay(attempt, rng)

    def new(self) -> Policy:
        first, second = self.first.new(), self.second.new()
        return self if (first is self.first and second is self.second) else Sum(first, second)


@dataclass(frozen=True)
class Capped(Policy):
    """Wait what ``policy`` says, but at most ``maximum`` (what ``policy.capped(maximum)`` builds)."""

    policy: Policy
    maximum: float

    def __post_init__(self) -> None:
        if self.maximum < 0:
            raise ValueError(f"a cap cannot be negative, got {self.maximum}")

    @property
    def name(self) -> str:  # type: ignore[override]  # computed from its parts; the base class has a field
        return f"{self.policy.name}, at most {self.maximum:g}"

    def delay(self, attempt: int, rng: random.Random) -> float:
        return min(self.maximum, self.policy.delay(attempt, rng))

    def new(self) -> Policy:
        inner = self.policy.new()
        return self if inner is self.policy else Capped(inner, self.maximum)


def policy_from_name(name: str, base: float, cap: float) -> Policy:
    """The policy called ``name`` (one of ``POLICY_NAMES``) with these ``base`` and ``cap`` seconds.

    ``constant`` waits ``min(base, cap)``; ``none`` ignores both.
    """
    _check_base_cap(base, cap)
    if name == "none":
        return NoWait()
    if name == "constant":
        return Constant(min(base, cap))
    if name == "exponential":
        return Exponential(base, cap)
    if name == "full-jitter":
        return FullJitter(base, cap)
    if name == "equal-jitter":
        return EqualJitter(base, cap)
    if name == "decorrelated-jitter":
        return DecorrelatedJitter(base, cap)
    raise ValueError(f"unknown retry policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
