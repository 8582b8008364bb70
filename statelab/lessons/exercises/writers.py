"""Lessons 04 and 05: one attempt and a backoff, run by the writers harness."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from statelab.client import LAST_WRITE, StateClient
from statelab.display import key_table
from statelab.errors import DaprError, SidecarTimeout, SidecarUnavailable, is_save_conflict
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN
from statelab.lessons.exercises.retry_loop import RecordingClient
from statelab.lessons.exercises.verdict import STUCK, Verdict, checked, raised, short, verdicts
from statelab.writers import AbortRun, AttemptOutcome, Comparison, WritersConfig, WriterTask, run_writers

if TYPE_CHECKING:
    from statelab.metrics import Metrics
    from statelab.session import Session


# --- lesson 04: one attempt, run by the writers harness ------------------------------------------------------

_FLAGS = {  # what an attempt did wrong -> the sentence (with the count) and what to change, most telling first
    "no-etag": ("{n} of your saves carried no ETag: the sidecar had nothing to compare, so saves based on old "
                "reads went through.",
                "Save with the ETag you read (`etag=state.etag`) under first-write."),
    "last-write": ("{n} of your saves said `last-write`, which tells the store to ignore the ETag (Redis does).",
                   "Save under first-write (`concurrency=\"first-write\"`)."),
    "other-etag": ("{n} of your saves carried an ETag other than the one read in the same attempt.",
                   "Send the ETag of this attempt's read."),
    "several-saves": ("{n} of your attempts saved more than once: they retried on their own.",
                      "Make one read and one save; the harness does the retrying (and the backing off)."),
    "swallowed": ("{n} times a save was refused and your attempt returned as if it had saved: the harness counted "
                  "those as acknowledged.",
                  "Let the refusal (`ETagMismatch`) escape: the harness counts the conflict and tries again."),
    "no-read": ("{n} of your attempts saved without reading first.", "Read the counter, then save it + 1."),
    "no-save": ("{n} of your attempts returned without saving.", "Save the counter + 1 after reading it."),
}


def check_attempt(attempt: Callable[..., Any], lab: Session, metrics: Metrics | None = None, *, writers: int = 8,
                  operations: int = 5, seed: int = 7) -> Verdict:
    """Run ``attempt(client, store, key)`` as the attempt of ``run_writers``: ``writers`` writers over the session's
    sidecars, ``operations`` increments each of one fresh counter. Every save is recorded (which ETag, which
    concurrency, after which read); then the lost-update checker reads the history and the counter."""
    return checked("attempt", "attempt", metrics,
                    lambda: _check_attempt(attempt, lab, writers=writers, operations=operations, seed=seed))


def _check_attempt(attempt: Callable[..., Any], lab: Session, *, writers: int, operations: int, seed: int) -> Verdict:
    v = verdicts("attempt", "attempt")
    flags: Counter[str] = Counter()
    lock = threading.Lock()
    crashed: list[BaseException] = []
    store = lab.store_name

    def one(client: StateClient, task: WriterTask) -> AttemptOutcome:
        own = cast(RecordingClient, client)
        own.begin()
        try:
            attempt(client, store, task.key)
        except NotImplementedError:
            raise AbortRun("not written") from None
        except DaprError as exc:
            sent = own.saves[-1].etag if own.saves else None
            read = own.reads[-1] if own.reads else None
            if isinstance(exc, SidecarUnavailable):
                return AttemptOutcome(UNKNOWN if isinstance(exc, SidecarTimeout) else ERROR, None, read, str(exc))
            if is_save_conflict(exc, had_etag=sent not in (None, "")):
                return AttemptOutcome(CONFLICT, exc.status or 409, read)
            return AttemptOutcome(UNKNOWN if exc.status >= 500 else ERROR, exc.status, read, str(exc))
        except Exception as exc:  # noqa: BLE001 - the learner's bug ends the run and becomes the verdict
            crashed.append(exc)
            raise AbortRun("crashed") from None
        found = _attempt_flags(own)
        if found:
            with lock:
                flags.update(found)
        return AttemptOutcome(OK, 204, own.reads[-1] if own.reads else None)

    config = WritersConfig(writers=writers, operations=operations, seed=seed, store=store, max_attempts=30,
                           base=0.001, cap=0.02, timeout=5.0)
    result = run_writers(lab.endpoints, config, attempt=one, client_factory=lambda ep: RecordingClient(ep),
                         together=True, deadline=30.0)
    if result.fatal == "not written":
        raise NotImplementedError
    if crashed:
        return v(False, [f"Your attempt raised {raised(crashed[0])}; the run stopped there."],
                 f"Fix the line the error points at. {STUCK}", result=result)
    sidecars = len(lab.endpoints)
    did = [f"{writers} writers × {operations} increments of one counter through {sidecars} "
           f"sidecar{'' if sidecars == 1 else 's'}: {result.acknowledged} acknowledged, {result.conflicts} refused "
           f"(409) and tried again by the harness" + (f", {result.gave_up} given up" if result.gave_up else "")
           + (", stopped at the deadline" if result.stopped_early else "") + "."]
    if result.findings:
        did.append("The checker: " + " ".join(result.sentences()[:2]))
    else:
        did.append(f"The checker: {result.sentences()[0]}")
    problems = [name for name in _FLAGS if flags[name]]
    if problems:
        did += [_FLAGS[name][0].format(n=flags[name]) for name in problems]
        return v(False, did, _FLAGS[problems[0]][1], result=result)
    if result.findings or result.lost_updates or not result.acknowledged:
        return v(False, did, "Read, then save the value read + 1 with that read's ETag under first-write.",
                 result=result)
    return v(True, did + ["Every save carried the ETag of its own read, under first-write."], result=result)


def _attempt_flags(client: RecordingClient) -> list[str]:
    """What one attempt that returned normally did wrong (see ``_FLAGS``)."""
    if not client.saves:
        return ["no-save"]
    found = []
    if not client.reads:
        found.append("no-read")
    if len(client.saves) > 1:
        found.append("several-saves")
    if client.saves[-1].status != 204:  # refused, and the attempt returned as if saved
        found.append("swallowed")
    last = client.saves[-1]
    if last.etag in (None, ""):
        found.append("no-etag")
    elif last.etag != last.read:
        found.append("other-etag")
    if last.concurrency == LAST_WRITE:
        found.append("last-write")
    return found


# --- lesson 05: a backoff, drawn from and run by real writers ---------------------------------------------------

DRAWS = 200  # seeds per retry number when the check draws from a backoff
RETRIES = 10  # retry numbers 1..RETRIES are drawn
SLOW_DRAWS = 2.0  # seconds: a backoff whose draws take longer in all (or one call half that) is sleeping itself


def check_backoff(backoff: Callable[..., Any], lab: Session, metrics: Metrics | None = None,
                  against: Comparison | WritersConfig | None = None) -> Verdict:
    """Draw from ``backoff(attempt, rng)`` (random? replayable from ``rng``? growing? capped? full jitter?), then
    run real writers with it: the configuration of ``against`` (a ``Comparison`` of built-in policies, shown beside
    the learner's run, or a ``WritersConfig``; default ``WritersConfig()``). Base and cap come from it too."""
    return checked("backoff", "backoff", metrics, lambda: _check_backoff(backoff, lab, against))


def _check_backoff(backoff: Callable[..., Any], lab: Session, against: Comparison | WritersConfig | None) -> Verdict:
    v = verdicts("backoff", "backoff")
    if isinstance(against, Comparison) and against.results:
        config = next(iter(against.results.values())).config
    else:
        config = against if isinstance(against, WritersConfig) else WritersConfig(store=lab.store_name)
    problem, seen = _backoff_problem(backoff, config.base, config.cap)
    if problem:
        return v(False, [problem[0]], problem[1])
    result = run_writers(lab.endpoints, replace(config, policy="yours"), backoff=backoff, deadline=120.0)
    run = (f"With it, {config.writers} writers × {config.operations} increments needed "
           f"{result.attempts_per_success:.2f} attempts per success, {result.lost_updates} lost"
           + (f", {result.gave_up} given up" if result.gave_up else "") + ".")
    table = ""
    if isinstance(against, Comparison):
        rows = [{"policy": p, **{k: x for k, x in r.summary().items() if k != "policy"}}
                for p, r in against.results.items()]
        rows.append({"policy": "your backoff", **{k: x for k, x in result.summary().items() if k != "policy"}})
        table = key_table(rows, ("policy", "attempts per success", "conflicts", "lost updates", "wall time s"),
                          caption="The same writers: the built-in policies above, and yours")
        run += " The table puts your run beside the built-in policies (one run each: read the numbers, not a rank)."
    if result.lost_updates or result.findings or result.stopped_early:
        return v(False, [*seen, run], "A backoff only says how long to wait; if writers lost updates or ran out of "
                 "time, look at how long your waits are.", table=table, result=result)
    return v(True, [*seen, run], table=table, result=result)


def _backoff_problem(backoff: Callable[..., Any], base: float, cap: float) -> tuple[tuple[str, str] | None, list[str]]:
    """Draw from the backoff and judge the draws: (what is wrong and what to change, or None), what was seen."""
    draws: dict[int, list[float]] = {}
    started = time.perf_counter()
    for attempt in [*range(1, RETRIES + 1), 20, 40]:
        values: list[float] = []
        for seed in range(DRAWS if attempt <= RETRIES else 20):
            t0 = time.perf_counter()
            value = backoff(attempt, random.Random(seed))
            now = time.perf_counter()
            if now - t0 > SLOW_DRAWS / 4 or now - started > SLOW_DRAWS:
                calls = sum(map(len, draws.values())) + len(values) + 1
                return ((f"Drawing {calls} waits from your backoff took {now - started:.1f} s: it sleeps itself.",
                         "Return the number of seconds; the loop does the sleeping."), [])
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                return ((f"For retry {attempt} your backoff returned `{short(repr(value), 40)}`.",
                         "Return the seconds to wait: a number, 0 or more."), [])
            values.append(float(value))
        draws[attempt] = values
    again = [backoff(3, random.Random(seed)) for seed in range(20)]
    if again != draws[3][:20]:
        i = next(i for i, (a, b) in enumerate(zip(again, draws[3][:20], strict=True)) if a != b)
        return ((f"Two writers with the same seed got different waits at retry 3 ({draws[3][i]:.4f} s and "
                 f"{again[i]:.4f} s): your randomness does not come from `rng` (the `random` module? the clock?).",
                 "Draw every random number from `rng`, the writer's own seeded generator, so a run can be replayed."),
                [])
    longest = {a: max(vals) for a, vals in draws.items()}
    over = [a for a, m in longest.items() if m > cap * (1 + 1e-9)]
    if over:
        return ((f"At retry {over[0]} your backoff waited up to {longest[over[0]]:.4g} s, beyond `cap` = {cap} s.",
                 "Never wait longer than `cap`, however many retries."), [])
    if all(len(set(vals)) == 1 for vals in draws.values()):
        if len({vals[0] for vals in draws.values()}) == 1:
            return ((f"Your backoff waits {draws[1][0]:.4g} s whatever the retry and the draw: a constant, with "
                     "no jitter and no growth.",
                     "Draw the wait at random from `rng`, between 0 and a bound that grows with each retry."), [])
        return ((f"Your backoff waits exactly {draws[1][0]:.4g}, {draws[2][0]:.4g}, {draws[3][0]:.4g} … s at "
                 "retries 1, 2, 3: it grows, but without jitter, so writers that collided retry in step.",
                 "Make the wait a random draw from `rng` between 0 and that growing bound."), [])
    if longest[1] < 0.4 * cap and longest[5] < 2.5 * longest[1]:
        return ((f"Your longest waits do not grow with the retry number: {longest[1]:.4g} s at retry 1, "
                 f"{longest[5]:.4g} s at retry 5.",
                 "Let the bound double with every retry, from `base`, until it reaches `cap`."), [])
    floor = {a: min(draws[a]) / longest[a] for a in range(1, RETRIES + 1) if longest[a] > 0}  # 200 draws each
    high = [a for a, ratio in floor.items() if ratio > 0.1]
    if high:
        return ((f"At retry {high[0]} your backoff never waits less than {floor[high[0]]:.0%} of its longest wait: "
                 "that is not full jitter, which draws the whole wait at random, from 0.",
                 "Draw the wait uniformly between 0 and the bound."), [])
    if not 0.45 * base <= longest[1] <= 2.2 * base:
        return ((f"At retry 1 your waits reach {longest[1]:.4g} s; with `base` = {base} s the bound should start at "
                 "about base (or twice base, with base · 2^attempt).", "Start the bound from `base`."), [])
    top = next((a for a in range(1, RETRIES + 1) if longest[a] >= 0.9 * cap), None)
    seen = ["Replayable: the same seed gives the same waits; different seeds give different ones.",
            f"The longest wait grows from {longest[1] * 1000:.1f} ms at retry 1"
            + (f" to the cap, {cap * 1000:g} ms, by retry {top}" if top else
               f" to {longest[RETRIES] * 1000:.1f} ms at retry {RETRIES}")
            + "; the draws spread from 0 up to that bound: full jitter."]
    return None, seen
