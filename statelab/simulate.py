"""A fast, seeded simulation of many clients racing to update one record with optimistic concurrency.

This is the model from the AWS Architecture Blog post "Exponential Backoff And Jitter" (Marc Brooker,
2015), so a notebook can draw its theory curves beside real runs:

- ``clients`` clients all start at time 0, and each wants to write the record exactly once.
- Every message crosses the network in one *hop*, a random time with mean ``delay`` and standard
  deviation ``delay_sd`` (default ``delay / 5``: the post's 10 ms ± 2 ms).
- An attempt is a read then a conditional write. The read reaches the server one hop after the client
  sends it and sees the record's version; the write reaches the server a round trip later (the read's
  answer going back, the write coming in). The write succeeds only if nobody committed in between,
  otherwise it is a conflict. Either way the answer takes one more hop back to the client.
- After a conflict the client waits what its retry policy says (``statelab.backoff``, a fresh copy per
  client) and sends its next read.
- ``calls`` counts write attempts, the work the server did; ``completion_time`` is when the last
  client heard that its write succeeded.

After every commit, the next write to arrive whose read came after that commit succeeds, and every
client still waiting reads again after it, so each run ends. Times are in the unit of ``base``, ``cap`` and ``delay`` (seconds by
default). The run is event-driven: one heap entry per attempt in flight, all randomness from one
``random.Random(seed)``, so the same arguments always give the same result. The post draws hops from a
normal distribution and notes that real networks are not normal either; here a hop is uniform with the
same mean and standard deviation, which is several times cheaper to draw and never negative.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from statelab.backoff import POLICY_NAMES, Policy, policy_from_name

# The blog's simulation in seconds: base 5 ms, cap 2 s, network hop 10 ms ± 2 ms.
BASE = 0.005
CAP = 2.0
DELAY = 0.010
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class SimResult:
    """One simulated run: total write attempts, when the last client finished, and attempts per client."""

    policy: str
    clients: int
    calls: int
    completion_time: float
    attempts_per_client: tuple[int, ...]


@dataclass(frozen=True)
class SweepRow:
    """Means over ``seeds`` runs for one policy and one number of clients."""

    policy: str
    clients: int
    calls: float
    completion_time: float
    calls_per_client: float
    seeds: int


def _resolve(policy: Policy | str, base: float, cap: float) -> Policy:
    return policy_from_name(policy, base, cap) if isinstance(policy, str) else policy


def simulate(clients: int, policy: Policy | str = "full-jitter", *, base: float = BASE, cap: float = CAP,
             delay: float = DELAY, delay_sd: float | None = None, seed: int = 0) -> SimResult:
    """Run the model once. ``policy`` is a ``Policy`` or one of ``POLICY_NAMES`` (then built from ``base``
    and ``cap``; a ``Policy`` object ignores them). ``delay_sd`` defaults to ``delay / 5``, as in the post.
    """
    if clients < 0:
        raise ValueError(f"clients must be >= 0, got {clients}")
    if delay <= 0:  # with no network time at all, retries that wait 0 would never move the clock
        raise ValueError(f"delay must be > 0, got {delay}")
    sd = delay / 5 if delay_sd is None else delay_sd
    if not 0 <= sd <= delay / math.sqrt(3):
        raise ValueError(f"delay_sd must be between 0 and delay / sqrt(3) (hops cannot be negative), got {sd}")
    chosen = _resolve(policy, base, cap)
    rng = random.Random(seed)
    draw = rng.random  # looked up once: this loop is the hot path
    # A hop is uniform on [low, low + width]: mean ``delay``, standard deviation ``sd``.
    width = 2 * math.sqrt(3) * sd
    low = delay - width / 2
    trip = 2 * low  # a round trip is two hops: trip + width * (draw() + draw())

    waits = [chosen.new().delay for _ in range(clients)]
    attempts = [0] * clients
    # (time the write reaches the server, client, time its read reached the server)
    queue: list[tuple[float, int, float]] = []
    for client in range(clients):
        read = low + width * draw()
        queue.append((read + trip + width * (draw() + draw()), client, read))
    heapq.heapify(queue)

    last_commit = -math.inf
    finished = 0.0
    calls = 0
    pop, push = heapq.heappop, heapq.heappush
    while queue:
        write, client, read = pop(queue)
        calls += 1
        attempts[client] += 1
        # Events leave the heap in time order, so every commit before ``write`` has been seen.
        if last_commit < read:
            last_commit = write
            answer = write + low + width * draw()
            if answer > finished:  # answers can overtake one another, so keep the latest
                finished = answer
            continue
        # The conflict answer goes back and the next read comes in (a round trip), after the wait.
        read = write + trip + width * (draw() + draw()) + waits[client](attempts[client], rng)
        push(queue, (read + trip + width * (draw() + draw()), client, read))

    return SimResult(chosen.name, clients, calls, finished, tuple(attempts))


def sweep(client_counts: Iterable[int], policies: Iterable[Policy | str] = POLICY_NAMES, *,
          base: float = BASE, cap: float = CAP, delay: float = DELAY, delay_sd: float | None = None,
          seeds: Iterable[int] = SEEDS) -> list[SweepRow]:
    """``simulate`` for every policy and number of clients, averaged over ``seeds``; one row per pair."""
    seed_list = list(seeds)
    if not seed_list:
        raise ValueError("sweep needs at least one seed")
    counts = list(client_counts)
    rows = []
    for policy in policies:
        chosen = _resolve(policy, base, cap)
        for clients in counts:
            runs = [simulate(clients, chosen, delay=delay, delay_sd=delay_sd, seed=seed) for seed in seed_list]
            calls = sum(run.calls for run in runs) / len(runs)
            rows.append(SweepRow(
                policy=chosen.name,
                clients=clients,
                calls=calls,
                completion_time=sum(run.completion_time for run in runs) / len(runs),
                calls_per_client=calls / clients if clients else 0.0,
                seeds=len(runs),
            ))
    return rows


def calls_at(rows: Iterable[SweepRow], clients: int) -> dict[str, float]:
    """Mean calls per policy at one number of clients, from ``sweep`` rows."""
    return {row.policy: row.calls for row in rows if row.clients == clients}
