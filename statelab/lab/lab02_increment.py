"""Lab 02: an increment with retry and backoff, checked under real contention."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statelab.client import LAST_WRITE, StateClient
from statelab.errors import (
    DaprError,
    ETagMismatch,
    SidecarTimeout,
    SidecarUnavailable,
    is_save_conflict,
)
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN
from statelab.lab.learner_code import (
    call,
    client_for,
    described,
    fresh_key,
    is_placeholder,
    name_of,
    raised,
    token,
    value_of,
    your_line,
)
from statelab.lab.recording import Call, RecordingClient, recording_client
from statelab.lab.results import CheckResult, failed, passed
from statelab.writers import AbortRun, AttemptOutcome, RunResult, WritersConfig, WriterTask, progress_bar, run_writers

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.session import Session

MIN_WRITERS = 8  # lab 02's increment check runs at least this many concurrent writers
MAX_WAIT = 1.0  # seconds: a learner's backoff longer than this is capped (and the check says so)
CONTENTION_RUNS = 3  # the increment check runs again (fresh key) when its writers hardly collided, at most this often

# --- lab 02: increment with retry and backoff -------------------------------------------------------------

ATTEMPT_TASK = ("Write `attempt(client, store, key)`: one try of the increment. Read the counter with `client.get` (a "
                "missing key counts as 0), then `client.save` it + 1 so that the sidecar refuses the save if someone "
                "saved since your read (lesson 03: what must the save carry?); let that refusal (`ETagMismatch`) reach "
                "the caller.")
BACKOFF_TASK = ("Write `backoff(attempt, rng)`: how many seconds to wait before retry number `attempt`. Lesson 05: the "
                "wait is random (drawn from `rng`), its upper bound grows with each conflict, and it is capped.")


def _concurrency_said(call: Call, key: str) -> str:
    said = call.concurrency.get(key)
    if said is None:
        return "no concurrency option (enough: an ETag is checked unless the save says last-write)"
    return f"`{said}`"


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
    value = value_of(client, store, key)
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
    sent = saves[-1].etags.get(key)
    if sent != reads[-1].etag_read:
        what = "carried no ETag" if not sent else f"carried the ETag {sent!r}, not the one you read ({reads[-1].etag_read!r})"
        return failed("attempt", f"Your save {what}: without the ETag you read, the sidecar cannot refuse a save "
                                  "based on an old value, and concurrent increments overwrite each other. Pass the "
                                  "ETag of the state you read to `client.save`.")
    if saves[-1].concurrency.get(key) == LAST_WRITE:
        return failed("attempt", "Your save sends the ETag but says `concurrency=\"last-write\"`, which means "
                                  "\"overwrite whatever is there\": Redis then ignores the ETag and increments get lost "
                                  "(SQLite and in-memory check it anyway). Say `first-write`, or leave concurrency out.")
    said = _concurrency_said(saves[-1], key)
    # Someone else adds 10 between this attempt's read and its save: the save must be refused, not overwrite.
    key2 = fresh_key("lab02-counter")
    client.save(store, key2, 10)
    rc = recording_client(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, 20))
    _, exc = call(attempt, rc, store, key2)
    value = value_of(client, store, key2)
    saves = [c for c in rc.calls if c.kind in ("save", "transaction") and key2 in c.keys]
    refused = [c for c in saves if c.status not in (200, 204)]
    if value == 11:
        return failed("attempt", "Someone saved 20 between your read (10) and your save, and your save overwrote it "
                                  "with 11: a lost update. Save with the ETag of the very read that gave you the value, "
                                  "so the sidecar refuses it (409).")
    if refused and saves[-1].status in (200, 204):
        return failed("attempt", f"When someone saved between your read and your save, the sidecar refused your save "
                                  f"(409), and your `attempt()` read again and saved again by itself ({len(saves)} saves "
                                  f"in one call; the counter is now {value!r}). That increment landed, but retrying is "
                                  "the loop's job: it counts the attempts, stops at `max_attempts` and waits "
                                  "`backoff()` between them, so that writers who collided spread out. A retry inside "
                                  "`attempt` does none of that: under contention it hammers the store with no pause and "
                                  "no bound. Make one read and one save, and let `ETagMismatch` reach the caller.")
    if exc is None:
        how = ("`attempt()` returned normally" if refused else
               "`attempt()` returned normally without a refused save (did it save at all?)")
        return failed("attempt", f"When someone saves between your read and your save, the sidecar refuses yours (409); "
                                  f"{how}, so the loop would count an increment that never happened and would not "
                                  "retry it. Let the `ETagMismatch` propagate (do not catch it in `attempt`).")
    if not isinstance(exc, ETagMismatch):
        return failed("attempt", f"On a conflict `attempt()` raised {type(exc).__name__}{your_line(exc)}; the loop "
                                  "retries on `ETagMismatch` only, so it would give this increment up: let the client's "
                                  "`ETagMismatch` (409) reach the caller unchanged.")
    key3 = fresh_key("lab02-counter")
    _, exc = call(attempt, recording_client(ck.session), store, key3)
    state = client.get(store, key3)
    if exc is not None or state is None or state.value != 1:
        what = f"raised {type(exc).__name__}{your_line(exc)}" if exc else f"left {state.value if state else None!r}"
        return failed("attempt", f"On a key that does not exist yet `attempt()` {what}; it should create it with 1 "
                                  "(a missing key reads as None: count it as 0, save without an ETag).")
    return passed("attempt", f"One attempt reads the counter and its ETag and saves +1 with that ETag and {said}; "
                              "it starts a missing counter at 1; when someone saved in between, the sidecar answered "
                              "409 and `ETagMismatch` reached the caller.")


def check_backoff(ck: Checker, backoff: Any) -> CheckResult:
    waits: dict[int, list[float]] = {}
    for attempt in range(1, 11):
        waits[attempt] = []
        for seed in range(40):
            value, exc = call(backoff, attempt, random.Random(seed))
            if exc is not None:
                return failed("backoff", raised(backoff, exc, BACKOFF_TASK))
            if value is None:
                return failed("backoff", f"`backoff({attempt}, rng)` returned None: return the number of seconds to "
                                          "wait; the loop does the waiting (do not sleep in `backoff`).")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                return failed("backoff", f"`backoff({attempt}, rng)` returned {described(value)}; return a number of "
                                          "seconds (an int or a float).")
            waits[attempt].append(float(value))
    flat = [w for ws in waits.values() for w in ws]
    if min(flat) < 0:
        return failed("backoff", f"`backoff()` returned a negative wait ({min(flat):g} s); waits are >= 0.")
    if max(flat) == 0:
        return failed("backoff", "`backoff()` always returns 0: writers that collided retry at once and collide "
                                  "again. Wait a little, more after each conflict.")
    if max(flat) > MAX_WAIT:
        unit = " (are these milliseconds? the loop waits that many *seconds*)" if max(flat) >= 10 else ""
        return failed("backoff", f"`backoff()` waits up to {max(flat):.2f} s{unit}; this check allows {MAX_WAIT:g} s at "
                                  "most: a writer waiting that long holds its caller up far longer than the conflict "
                                  "cost. Cap the wait.")
    again = [backoff(a, random.Random(3)) for a in range(1, 11)]
    first = [backoff(a, random.Random(3)) for a in range(1, 11)]
    if again != first:
        return failed("backoff", "Two runs with the same seeded `rng` gave different waits: your randomness does not "
                                  "come from the `rng` passed in (the `random` module's functions share one global "
                                  "generator). Draw from `rng`, so a run can be replayed.")
    jittered = sum(len(set(ws)) > 1 for ws in waits.values())
    if jittered < 5:
        return failed("backoff", "Every writer waits exactly the same time after the same attempt: writers that "
                                  "collided together retry together and collide again. Add jitter: draw the wait at "
                                  "random from `rng`.")
    mean = {a: sum(ws) / len(ws) for a, ws in waits.items()}
    if mean[6] < 1.5 * mean[1]:
        return failed("backoff", f"The waits do not grow: about {mean[1] * 1000:.1f} ms after the first conflict and "
                                  f"{mean[6] * 1000:.1f} ms after the sixth. Let the upper bound of the wait grow with "
                                  "each conflict (doubling is the classic), up to your cap.")
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
    retried_inside: int = 0  # attempts that saved again by themselves after a refused save
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
    if is_save_conflict(exc, had_etag=bool(saves and saves[-1].etags.get(key))):
        if isinstance(exc, ETagMismatch):
            return CONFLICT, exc.status or 409, ""
        return CONFLICT, 500, "Redis refuses a first-write create of an existing key with 500"
    if isinstance(exc, SidecarTimeout):
        return UNKNOWN, None, str(exc)
    if isinstance(exc, SidecarUnavailable):
        return ERROR, None, str(exc)
    if isinstance(exc, DaprError):
        return (UNKNOWN if exc.status >= 500 else ERROR), exc.status, str(exc)
    return "fatal", None, ""


def run_increments(session: Session, endpoints: Sequence[str], key: str, attempt: Any, backoff: Any,
                     max_attempts: int, *, writers: int, operations: int, seed: int, progress: bool,
                     reset: bool = True, deadline: float = 120.0, start: threading.Barrier | None = None,
                     stop: threading.Event | None = None) -> tuple[RunResult, _Flags]:
    """Lab 02's harness: ``writers`` threads over ``endpoints``, each ``operations`` increments of ``key``.

    ``statelab.writers.run_writers`` runs them, released together (``together=True``: every writer waits for
    the others before its first read, so they contend from the start), with the learner's ``attempt`` (called
    through a ``RecordingClient``, to see what it sent) as its attempt strategy and the learner's
    ``backoff(n, rng)``, capped at ``MAX_WAIT``, as its backoff; its loop is the one lesson 03 shows (bounded,
    re-running ``attempt`` and backing off after a conflict). The result is a ``statelab.writers.RunResult``,
    so its checker, summary and plots apply unchanged: each attempt is recorded with the ETag of the read its
    save was based on (whether or not the save sent it), so the history's checker can name the acknowledged
    writes that were based on the same version, one of which overwrote the others. The ``_Flags`` say what
    the learner's attempts did wrong.
    """
    from tqdm.auto import tqdm

    store = session.store_name
    if reset:
        with client_for(session) as c:
            c.save(store, key, 0)
    flags = _Flags()
    lock = threading.Lock()

    def one_attempt(client: StateClient, task: WriterTask) -> AttemptOutcome:
        assert isinstance(client, RecordingClient)
        mark = len(client.calls)
        _, exc = call(attempt, client, store, key)
        calls = client.since(mark)
        saves = [c for c in calls if c.kind in ("save", "transaction") and key in c.keys]
        outcome, status, detail = _outcome(exc, saves, key)
        if outcome == "fatal":
            raise AbortRun(raised(attempt, exc, ATTEMPT_TASK) if exc is not None else ATTEMPT_TASK)
        based_on = None  # the ETag of the last read before the last save: the version that save was based on
        with lock:
            if saves:
                last = calls.index(saves[-1])
                reads = [c for c in calls[:last] if c.kind == "get" and key in c.keys]
                based_on = reads[-1].etag_read if reads else None
                if not reads:
                    flags.no_read += 1
                if not saves[-1].etags.get(key):
                    flags.no_etag += 1
                if saves[-1].concurrency.get(key) == LAST_WRITE:
                    flags.last_write += 1
                refused = [c for c in saves if c.status not in (200, 204)]
                if refused and len(saves) > 1 and saves[-1].status in (200, 204):
                    flags.retried_inside += 1
            if detail == "swallowed":
                flags.swallowed += 1
        if not saves and outcome == ERROR:
            raise AbortRun("`attempt()` returned without saving through the `client` it was given. " + ATTEMPT_TASK)
        return AttemptOutcome(outcome, status, based_on, detail)

    def wait(number: int, rng: random.Random) -> float:
        seconds, exc = call(backoff, number, rng)
        if exc is not None or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise AbortRun(raised(backoff, exc, BACKOFF_TASK) if exc else
                           f"`backoff()` returned {described(seconds)}, not a number of seconds.")
        if not 0 <= seconds <= MAX_WAIT:
            with lock:
                flags.capped_waits += 1
            seconds = min(max(0.0, float(seconds)), MAX_WAIT)
        return seconds

    def recording(endpoint: str) -> StateClient:
        return RecordingClient(endpoint, api_token=token(session), timeout=session.client.timeout)

    config = WritersConfig(writers=writers, operations=operations, max_attempts=max_attempts, seed=seed,
                           policy=f"your {name_of(backoff)}()", store=store)
    with tqdm(total=writers * operations, desc="increments", disable=not progress) as bar:
        run = run_writers(endpoints, config, stop=stop, progress=progress_bar(bar), attempt=one_attempt,
                          backoff=wait, client_factory=recording, keys=[key], start=start, deadline=deadline,
                          together=True)
    flags.fatal = run.fatal
    return run, flags


def lab_endpoints(session: Session) -> list[str]:
    """The sidecars sharing one store: all of them, except on state.in-memory (data lives in each sidecar)."""
    return session.endpoints[:1] if session.store_type == "state.in-memory" else session.endpoints


def check_max_attempts(max_attempts: Any) -> str:
    if is_placeholder(max_attempts):
        return ("`max_attempts` is still the placeholder `...`: choose how many attempts one increment may make before "
                "it gives up.")
    if max_attempts is None:
        return ("`max_attempts` is None, but the loop needs a bound: a whole number of attempts after which an "
                "increment gives up and says so.")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        hint = " (a number, without quotes)" if isinstance(max_attempts, str) else ""
        return (f"`max_attempts` is {described(max_attempts)}; the loop counts attempts with it, so it must be a whole "
                f"number{hint}.")
    if max_attempts < 1:
        return (f"`max_attempts = {max_attempts}` allows no attempt at all: not one increment could happen. Allow "
                f"retries too: with {MIN_WRITERS} writers on one key, conflicts are certain.")
    if max_attempts < 2:
        return (f"`max_attempts = {max_attempts}` never retries: with {MIN_WRITERS} writers on one key, conflicts are "
                "certain, and every increment that meets one would give up.")
    if max_attempts > 100:
        return (f"`max_attempts = {max_attempts}` is hardly a bound: a writer stuck that long should give up and say "
                "so long before. With 8 writers most increments need 1–3 attempts and the unlucky ones around ten: "
                "allow a margin above that, not hundreds.")
    return ""


def _increment_problem(run: RunResult, flags: _Flags, max_attempts: int, where: str,
                       details: list[str]) -> CheckResult | None:
    """The failure a run shows, if any (None: nothing wrong was seen in this run)."""
    if flags.fatal:
        return failed("increment", flags.fatal, details, run)
    if run.lost_updates or run.findings:
        why = []
        if flags.no_etag:
            why.append(f"{flags.no_etag} saves carried no ETag")
        if flags.last_write:
            why.append(f"{flags.last_write} saves said last-write (Redis then ignores the ETag)")
        if flags.no_read:
            why.append(f"{flags.no_read} attempts saved without reading first")
        cause = f" What your attempts sent: {'; '.join(why)}." if why else ""
        return failed("increment", f"Lost updates ({where}): {run.sentences()[0]}{cause} Each save must carry the ETag "
                                    "of the read in the same attempt, without last-write, so the sidecar refuses a save "
                                    "based on an old value. (`check.timeline()` marks the writes that were "
                                    "acknowledged, then lost.)", details + run.sentences()[1:3], run)
    if flags.swallowed:
        return failed("increment", f"{flags.swallowed} attempts returned normally although the sidecar refused their "
                                    "save (409). The loop around `attempt` stops as soon as it returns, so it would "
                                    "count each of them as done: increments that never happened. (The check retried "
                                    "them, to keep its count honest.) Let `ETagMismatch` propagate.", details, run)
    if flags.retried_inside:
        return failed("increment", f"{flags.retried_inside} calls of your `attempt()` saved again by themselves after "
                                    "a refused save: your `attempt` retries inside. Nothing was lost, but the loop never "
                                    "saw those conflicts, so it could not count them against `max_attempts` nor wait "
                                    "`backoff()` between tries: under contention such writers hammer the store with no "
                                    "pause and no bound. Make one read and one save per attempt, and let "
                                    "`ETagMismatch` reach the loop.", details, run)
    if flags.no_etag or flags.no_read or flags.last_write:
        sent = []
        if flags.no_etag:
            sent.append(f"{flags.no_etag} saves carried no ETag")
        if flags.no_read:
            sent.append(f"{flags.no_read} attempts saved without reading first")
        if flags.last_write:
            sent.append(f"{flags.last_write} saves said last-write (this store checked the ETag anyway; Redis ignores "
                        "it)")
        return failed("increment", "Nothing was lost this time, but not thanks to your code: " + ", ".join(sent) +
                                    ". With more contention, or on Redis, those lose updates.", details, run)
    if run.gave_up:
        return failed("increment", f"{run.gave_up} increments gave up after {max_attempts} attempts ({where}): under "
                                    "this contention that bound is too tight for your backoff. Back off longer after "
                                    "each conflict, or allow more attempts.", details, run)
    if run.stopped_early:
        return failed("increment", "The run was stopped before all writers finished (too slow): are the waits "
                                    "reasonable (milliseconds, not seconds)?", details, run)
    return None


def check_increment(ck: Checker, attempt: Any, backoff: Any, max_attempts: Any, writers: int,
                     operations: int) -> CheckResult:
    if problem := check_max_attempts(max_attempts):
        return failed("increment", problem)
    for fn, task in ((attempt, ATTEMPT_TASK), (backoff, BACKOFF_TASK)):
        if not callable(fn):
            return failed("increment", f"Expected a function, got {type(fn).__name__}. {task}")
    writers = max(MIN_WRITERS, int(writers))
    endpoints = lab_endpoints(ck.session)
    where = f"{writers} writers over {len(endpoints)} sidecar{'s' if len(endpoints) > 1 else ''}"
    wanted = writers // 2  # released together, the first round alone refuses all writers but one
    seen: list[int] = []
    for _ in range(CONTENTION_RUNS):
        run, flags = run_increments(ck.session, endpoints, fresh_key("lab02-hot"), attempt, backoff, max_attempts,
                                     writers=writers, operations=operations, seed=ck.seed, progress=ck.progress)
        ck._last_increment = run
        details = [", ".join(f"{k} {v}" for k, v in run.summary().items()
                             if k in ("acknowledged", "surviving", "lost updates", "conflicts", "gave up"))]
        if found := _increment_problem(run, flags, max_attempts, where, details):
            return found
        seen.append(run.conflicts)
        if run.conflicts >= wanted:
            break
    else:
        return failed("increment", f"Your writers hardly collided: {CONTENTION_RUNS} runs of {where}, released together, "
                                    f"had {', '.join(map(str, seen))} conflicts (refused saves), so nothing here showed "
                                    "that your code survives a conflict. Does your `attempt` make writers wait for each "
                                    "other (a lock, a sleep)? Other app instances would not share that lock. Make one "
                                    "read and one save per attempt, without waiting, and run the check again.",
                       details, run)
    worst = max(run.history.attempts_per_success(), default=0)
    capped = f" ({flags.capped_waits} waits were capped at {MAX_WAIT:g} s.)" if flags.capped_waits else ""
    tries = f" (after {len(seen)} runs: the earlier ones had too few conflicts to prove anything)" if len(seen) > 1 else ""
    return passed("increment", f"{where}, released together, {operations} increments each: all {run.acknowledged} "
                                f"acknowledged increments are in the counter ({run.surviving}), none lost. "
                                f"{run.conflicts} conflicts were retried{tries}: {run.attempts_per_success:.2f} attempts "
                                f"per increment, the worst {worst} of the {max_attempts} allowed.{capped}", details, run)
