"""Lab 02: an increment with retry and backoff, checked under real contention."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statelab.client import LAST_WRITE
from statelab.errors import (
    DaprError,
    ETagMismatch,
    SidecarTimeout,
    SidecarUnavailable,
)
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN, Attempt, History, check_counter
from statelab.lab.learner_code import (
    call,
    client_for,
    fresh_key,
    is_placeholder,
    name_of,
    raised,
    short,
    token,
    your_line,
)
from statelab.lab.recording import Call, RecordingClient, recording_client
from statelab.lab.results import CheckResult, failed, passed
from statelab.writers import RunResult, WritersConfig, run_threads

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.session import Session

MIN_WRITERS = 8  # lab 02's increment check runs at least this many concurrent writers
MAX_WAIT = 1.0  # seconds: a learner's backoff longer than this is capped (and the check says so)

# --- lab 02: increment with retry and backoff -------------------------------------------------------------

ATTEMPT_TASK = ("Write `attempt(client, store, key)`: read the counter with `client.get` (a missing key counts as 0), "
                "then `client.save` it + 1 with the ETag you read and `concurrency=\"first-write\"`; let "
                "`ETagMismatch` reach the caller.")
BACKOFF_TASK = ("Write `backoff(attempt, rng)`: the seconds to wait before retry number `attempt`, e.g. full jitter "
                "`rng.uniform(0, min(cap, base * 2 ** attempt))` with base 0.002 and cap 0.1.")


def check_attempt(ck: Checker, attempt: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = fresh_key("lab02-counter")
    client.save(store, key, 5)
    rc = recording_client(ck.session)
    _, exc = call(attempt, rc, store, key)
    if exc is not None:
        if isinstance(exc, TypeError) and "NoneType" in str(exc):
            return failed("attempt", raised(attempt, exc, "A missing key reads as None: count it as 0."))
        return failed("attempt", raised(attempt, exc, ATTEMPT_TASK))
    value = client.get(store, key).value  # type: ignore[union-attr]
    saves = [c for c in rc.calls if c.kind in ("save", "transaction") and key in c.keys]
    reads = [c for c in rc.calls if c.kind == "get" and key in c.keys]
    if not saves:
        return failed("attempt", "`attempt()` returned without saving anything through the `client` it was given. "
                                  + ATTEMPT_TASK)
    if value != 6:
        return failed("attempt", f"The counter went from 5 to {value!r}: one attempt adds exactly 1 to the value it read.")
    if not reads:
        return failed("attempt", "`attempt()` saved without reading first. Each attempt must `client.get` the "
                                  "counter itself: the retry after a conflict needs the *new* value and ETag.")
    if saves[-1].etags.get(key) != reads[-1].etag_read:
        return failed("attempt", "The save did not carry the ETag you read (`etag=state.etag`): without it the "
                                  "sidecar cannot refuse a save based on an old value.")
    if saves[-1].concurrency.get(key) == LAST_WRITE:
        return failed("attempt", "The save says `last-write`, with which Redis ignores the ETag: use "
                                  "`concurrency=\"first-write\"`.")
    # Someone else adds 10 between this attempt's read and its save: the save must be refused, not overwrite.
    key2 = fresh_key("lab02-counter")
    client.save(store, key2, 10)
    rc = recording_client(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, 20))
    _, exc = call(attempt, rc, store, key2)
    value = client.get(store, key2).value  # type: ignore[union-attr]
    if value == 11:
        return failed("attempt", "Someone saved 20 between your read (10) and your save, and your save overwrote it "
                                  "with 11: a lost update. Save with the ETag you read and `first-write`, so the "
                                  "sidecar refuses it (409).")
    if exc is None:
        return failed("attempt", "When someone saves between your read and your save, the sidecar refuses yours (409), "
                                  "but `attempt()` returned normally, so a caller would think it worked. Let the "
                                  "`ETagMismatch` propagate (do not catch it here).")
    if not isinstance(exc, ETagMismatch):
        return failed("attempt", f"On a conflict `attempt()` raised {type(exc).__name__}{your_line(exc)}; let the "
                                  "client's `ETagMismatch` (409) reach the caller unchanged.")
    key3 = fresh_key("lab02-counter")
    _, exc = call(attempt, recording_client(ck.session), store, key3)
    state = client.get(store, key3)
    if exc is not None or state is None or state.value != 1:
        what = f"raised {type(exc).__name__}{your_line(exc)}" if exc else f"left {state.value if state else None!r}"
        return failed("attempt", f"On a key that does not exist yet `attempt()` {what}; it should create it with 1 "
                                  "(a missing key reads as None: count it as 0, save without an ETag).")
    return passed("attempt", "One attempt reads the counter and its ETag, saves +1 with that ETag and first-write, "
                              "and starts a missing counter at 1; when someone saves in between, the sidecar answers "
                              "409 and `ETagMismatch` reaches the caller.")


def check_backoff(ck: Checker, backoff: Any) -> CheckResult:
    waits: dict[int, list[float]] = {}
    for attempt in range(1, 11):
        waits[attempt] = []
        for seed in range(40):
            value, exc = call(backoff, attempt, random.Random(seed))
            if exc is not None:
                return failed("backoff", raised(backoff, exc, BACKOFF_TASK))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                return failed("backoff", f"`backoff({attempt}, rng)` returned {value!r}; return a number of seconds.")
            waits[attempt].append(float(value))
    flat = [w for ws in waits.values() for w in ws]
    if min(flat) < 0:
        return failed("backoff", f"`backoff()` returned a negative wait ({min(flat):g} s); waits are >= 0.")
    if max(flat) == 0:
        return failed("backoff", "`backoff()` always returns 0: writers that collided retry at once and collide "
                                  "again. Wait a little, more after each conflict.")
    if max(flat) > MAX_WAIT:
        return failed("backoff", f"`backoff()` waits up to {max(flat):.2f} s; cap it (e.g. `min(0.1, ...)`): a writer "
                                  "waiting that long holds its caller up far longer than the conflict cost.")
    again = [backoff(a, random.Random(3)) for a in range(1, 11)]
    first = [backoff(a, random.Random(3)) for a in range(1, 11)]
    if again != first:
        return failed("backoff", "Two runs with the same seeded `rng` gave different waits: draw from the `rng` "
                                  "passed in (`rng.uniform(...)`), not from the `random` module, so runs can be replayed.")
    jittered = sum(len(set(ws)) > 1 for ws in waits.values())
    if jittered < 5:
        return failed("backoff", "Every writer waits exactly the same time after the same attempt: writers that "
                                  "collided together retry together and collide again. Add jitter "
                                  "(`rng.uniform(0, ...)`).")
    mean = {a: sum(ws) / len(ws) for a, ws in waits.items()}
    if mean[6] < 1.5 * mean[1]:
        return failed("backoff", f"The waits do not grow: about {mean[1] * 1000:.1f} ms after the first conflict and "
                                  f"{mean[6] * 1000:.1f} ms after the sixth. Back off more after each conflict "
                                  "(e.g. `base * 2 ** attempt`, capped).")
    return passed("backoff", f"Jittered, growing and capped: on average {mean[1] * 1000:.1f} ms after the first "
                              f"conflict, {mean[6] * 1000:.1f} ms after the sixth, never more than "
                              f"{max(flat) * 1000:.0f} ms; the same seeded `rng` gives the same waits.")


@dataclass
class _Flags:
    """What the learner's attempts did, counted over a whole run."""

    no_read: int = 0  # saves with no read of the key earlier in the same attempt
    no_etag: int = 0
    last_write: int = 0
    swallowed: int = 0  # the attempt returned normally although its save was refused
    capped_waits: int = 0
    fatal: str = ""  # the hint when learner code raised something that is not a conflict


def _outcome(exc: Exception | None, saves: list[Call], key: str) -> tuple[str, int | None, str]:
    """(outcome, status, detail) of one attempt from what it raised and the saves it made."""
    status = saves[-1].status if saves else None
    if exc is None:
        if status == 204:
            return OK, status, ""
        if status == 409:
            return CONFLICT, status, "swallowed"
        return ERROR, status, "no save" if not saves else f"save answered {status}"
    if isinstance(exc, ETagMismatch):
        return CONFLICT, exc.status or 409, ""
    if isinstance(exc, SidecarTimeout):
        return UNKNOWN, None, str(exc)
    if isinstance(exc, SidecarUnavailable):
        return ERROR, None, str(exc)
    if isinstance(exc, DaprError):
        had_etag = bool(saves and saves[-1].etags.get(key))
        if exc.status == 500 and exc.error_code == "ERR_STATE_SAVE" and not had_etag:
            return CONFLICT, 500, "Redis refuses a first-write create of an existing key with 500"
        return (UNKNOWN if exc.status >= 500 else ERROR), exc.status, str(exc)
    return "fatal", None, ""


def run_increments(session: Session, endpoints: Sequence[str], key: str, attempt: Any, backoff: Any,
                     max_attempts: int, *, writers: int, operations: int, seed: int, progress: bool,
                     reset: bool = True, deadline: float = 120.0, start: threading.Barrier | None = None,
                     stop: threading.Event | None = None) -> tuple[RunResult, _Flags]:
    """Lab 02's harness: ``writers`` threads over ``endpoints``, each ``operations`` increments of ``key``.

    The retry loop is the one lesson 03 shows (bounded, re-running the learner's ``attempt`` and sleeping
    ``backoff(n, rng)`` after a conflict); every attempt goes into a ``statelab.history.History`` and the
    result is a ``statelab.writers.RunResult``, so its checker, summary and plots apply unchanged.
    """
    from tqdm.auto import tqdm

    store = session.store_name
    if reset:
        with client_for(session) as c:
            c.save(store, key, 0)
    flags = _Flags()
    lock = threading.Lock()
    stop = stop or threading.Event()
    attempts: list[Attempt] = []
    gave_up = [0]
    t0 = time.perf_counter()
    bar = tqdm(total=writers * operations, desc="increments", disable=not progress)

    def fatal(hint: str) -> None:
        with lock:
            flags.fatal = flags.fatal or hint
        stop.set()

    def writer(index: int) -> None:
        sidecar = index % len(endpoints)
        rng = random.Random(seed * 1_000_003 + index)
        mine: list[Attempt] = []
        with RecordingClient(endpoints[sidecar], api_token=token(session), timeout=session.client.timeout) as rc:
            for op in range(operations):
                for number in range(1, max_attempts + 1):
                    if stop.is_set() or time.perf_counter() - t0 > deadline:
                        stop.set()
                        break
                    mark, began = len(rc.calls), time.perf_counter() - t0
                    _, exc = call(attempt, rc, store, key)
                    ended = time.perf_counter() - t0
                    calls = rc.since(mark)
                    saves = [c for c in calls if c.kind in ("save", "transaction") and key in c.keys]
                    outcome, status, detail = _outcome(exc, saves, key)
                    if outcome == "fatal":
                        fatal(raised(attempt, exc, ATTEMPT_TASK))  # type: ignore[arg-type]
                        break
                    etag = saves[-1].etags.get(key) if saves else None
                    with lock:
                        if saves:
                            last = calls.index(saves[-1])
                            if not any(c.kind == "get" and key in c.keys for c in calls[:last]):
                                flags.no_read += 1
                            if not etag:
                                flags.no_etag += 1
                            if saves[-1].concurrency.get(key) == LAST_WRITE:
                                flags.last_write += 1
                        if detail == "swallowed":
                            flags.swallowed += 1
                    mine.append(Attempt(index, op, number, sidecar, key, began, ended, etag, status, outcome, detail))
                    if not saves and outcome == ERROR:
                        fatal("`attempt()` returned without saving through the `client` it was given. " + ATTEMPT_TASK)
                        break
                    if outcome == OK:
                        break
                    wait, exc = call(backoff, number, rng)
                    if exc is not None or not isinstance(wait, (int, float)):
                        fatal(raised(backoff, exc, BACKOFF_TASK) if exc else
                              f"`backoff()` returned {wait!r}, not a number of seconds.")
                        break
                    if not 0 <= wait <= MAX_WAIT:
                        with lock:
                            flags.capped_waits += 1
                        wait = min(max(0.0, float(wait)), MAX_WAIT)
                    stop.wait(wait)
                else:
                    with lock:
                        gave_up[0] += 1
                with lock:
                    bar.update(1)
                if stop.is_set():
                    break
        with lock:
            attempts.extend(mine)

    def guarded(index: int) -> None:
        try:
            writer(index)
        except Exception as exc:  # noqa: BLE001 - never a thread traceback on stderr
            fatal(f"The writers could not run: {type(exc).__name__}: {short(str(exc), 160)}")

    if start is not None:
        start.wait()  # all attendees of a simulation start together
    threads = [threading.Thread(target=guarded, args=(i,), name=f"lab-writer-{i}", daemon=True) for i in range(writers)]
    try:
        run_threads(threads, stop)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    with client_for(session) as c:
        state = c.get(store, key)
    finals = {("all", key): state.value if state else None}
    history = History(sorted(attempts, key=lambda a: a.start))
    groups = dict.fromkeys(range(len(endpoints)), "all")
    config = WritersConfig(writers=writers, operations=operations, max_attempts=max_attempts, seed=seed,
                           policy=f"your {name_of(backoff)}()", store=store)
    result = RunResult(config, list(endpoints), history, finals, groups, check_counter(history, finals, groups),
                       wall, stopped_early=stop.is_set(), gave_up=gave_up[0], store_type=session.store_type)
    return result, flags


def lab_endpoints(session: Session) -> list[str]:
    """The sidecars sharing one store: all of them, except on state.in-memory (data lives in each sidecar)."""
    return session.endpoints[:1] if session.store_type == "state.in-memory" else session.endpoints


def check_max_attempts(max_attempts: Any) -> str:
    if is_placeholder(max_attempts):
        return "`max_attempts` is still the placeholder: choose how many attempts one increment may make (e.g. 20)."
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        return f"`max_attempts` is {max_attempts!r}; it must be a whole number of attempts (e.g. 20)."
    if max_attempts < 2:
        return f"`max_attempts = {max_attempts}` never retries: with {MIN_WRITERS} writers on one key, conflicts are certain."
    if max_attempts > 100:
        return (f"`max_attempts = {max_attempts}` is hardly a bound: a writer stuck that long should give up and say "
                "so. Something between 10 and 50 is plenty here.")
    return ""


def check_increment(ck: Checker, attempt: Any, backoff: Any, max_attempts: Any, writers: int,
                     operations: int) -> CheckResult:
    if problem := check_max_attempts(max_attempts):
        return failed("increment", problem)
    for fn, task in ((attempt, ATTEMPT_TASK), (backoff, BACKOFF_TASK)):
        if not callable(fn):
            return failed("increment", f"Expected a function, got {type(fn).__name__}. {task}")
    writers = max(MIN_WRITERS, int(writers))
    endpoints = lab_endpoints(ck.session)
    run, flags = run_increments(ck.session, endpoints, fresh_key("lab02-hot"), attempt, backoff, max_attempts,
                                 writers=writers, operations=operations, seed=ck.seed, progress=ck.progress)
    ck._last_increment = run
    details = [", ".join(f"{k} {v}" for k, v in run.summary().items()
                         if k in ("acknowledged", "surviving", "lost updates", "conflicts", "gave up"))]
    if flags.fatal:
        return failed("increment", flags.fatal, details, run)
    where = f"{writers} writers over {len(endpoints)} sidecar{'s' if len(endpoints) > 1 else ''}"
    if run.lost_updates or run.findings:
        why = []
        if flags.no_etag:
            why.append(f"{flags.no_etag} saves carried no ETag")
        if flags.last_write:
            why.append(f"{flags.last_write} saves said last-write (Redis then ignores the ETag)")
        if flags.no_read:
            why.append(f"{flags.no_read} attempts saved without reading first")
        cause = ("; ".join(why) + ".") if why else "Save with the ETag read in the same attempt, with first-write."
        return failed("increment", f"{run.lost_updates} acknowledged increments are not in the counter ({where}): "
                                    f"{run.sentences()[0]} {cause}", details + run.sentences()[1:3], run)
    if flags.swallowed:
        return failed("increment", f"{flags.swallowed} attempts returned normally although the sidecar refused their "
                                    "save (409): your caller would count them as done. Let `ETagMismatch` propagate.",
                       details, run)
    if flags.no_etag or flags.no_read or flags.last_write:
        return failed("increment", "Nothing was lost this time, but only by luck: "
                                    f"{flags.no_etag} saves without an ETag, {flags.no_read} without a fresh read, "
                                    f"{flags.last_write} with last-write. With more contention those lose updates.",
                       details, run)
    if run.gave_up:
        return failed("increment", f"{run.gave_up} increments gave up after {max_attempts} attempts ({where}). "
                                    "Back off longer after each conflict, or allow more attempts.", details, run)
    if run.stopped_early:
        return failed("increment", "The run was stopped before all writers finished (too slow): are the waits "
                                    "reasonable (milliseconds, not seconds)?", details, run)
    worst = max(run.history.attempts_per_success(), default=0)
    capped = f" ({flags.capped_waits} waits were capped at {MAX_WAIT:g} s.)" if flags.capped_waits else ""
    return passed("increment", f"{where}, {operations} increments each: all {run.acknowledged} acknowledged "
                                f"increments are in the counter ({run.surviving}), none lost. {run.conflicts} conflicts "
                                f"were retried: {run.attempts_per_success:.2f} attempts per increment, the worst "
                                f"{worst} of the {max_attempts} allowed.{capped}", details, run)
