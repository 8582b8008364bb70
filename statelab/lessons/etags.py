"""ETags and first-write-wins, shown against a live sidecar (lesson 03).

Every function here talks to a sidecar through ``StateClient`` and returns data: a ``Trace`` of steps
(who did what, which status came back, which ETag was read or sent), a race or retry summary, or the
``Matrix`` of how each state store answers the same ETag situations. Expected refusals (409, 400, the
Redis 500) are caught and recorded with a fixed sentence; only an unreachable sidecar raises.

The per-store expectations in ``DOCUMENTED`` come from the behaviour contract
(``docs/dapr-behaviour.md`` §12, components-contrib ``state/redis``, ``state/sqlite``, ``state/in-memory``).
"""

from __future__ import annotations

import html
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from statelab.backoff import FullJitter
from statelab.client import FIRST_WRITE, LAST_WRITE, StateClient, upsert
from statelab.display import html_table
from statelab.errors import DaprError, SidecarUnavailable, StackError, StatelabError, is_save_conflict
from statelab.history import CONFLICT, OK
from statelab.writers import AttemptOutcome, WritersConfig, WriterTask, progress_bar, run_threads, run_writers

if TYPE_CHECKING:

    from statelab.local import Stack
    from statelab.session import Session

log = logging.getLogger(__name__)

STORE_TYPES = ("redis", "sqlite", "in-memory")  # the stores the contract documents, as statelab.local names them
MATRIX_FIRST_PORT = 3600  # extra local stacks for the matrix: first free block from here (the lab stack uses 3500)

# Fixed sentences for the answers a lesson meets; keyed by (action, status).
EXPLAIN: dict[tuple[str, int], str] = {
    ("read", 200): "read the value and its ETag",
    ("read", 204): "the key does not exist (204, no ETag)",
    ("save", 204): "saved",
    ("save", 409): "409 Conflict: the ETag is stale, nothing was written",
    ("save", 400): "400: the store rejected the ETag as invalid (Redis ETags are numbers)",
    ("create", 204): "created",
    ("create", 409): "409 Conflict: the key already exists, nothing was written",
    ("create", 500): "500: Redis refuses a write without ETag to a key once written with first-write (not a 409)",
    ("delete", 204): "deleted",
    ("delete", 409): "409 Conflict: the ETag is stale, nothing was deleted",
}


def explain(action: str, status: int) -> str:
    return EXPLAIN.get((action, status), f"answered {status}")


def fresh_key(prefix: str) -> str:
    """A key no earlier run used, so a re-run never meets leftovers (on Redis, first-write marks are sticky)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _status(action: Callable[[], object], ok: int = 204) -> tuple[int, str]:
    """Run one save/delete; return (status, error message). Refusals are data, an unreachable sidecar is not."""
    try:
        action()
    except SidecarUnavailable:
        raise
    except DaprError as exc:
        return exc.status, exc.message
    return ok, ""


def _clone(client: StateClient) -> StateClient:
    """A client of its own for another thread, as each of the racing writers would have."""
    return StateClient(client.endpoint, api_token=client.headers.get("dapr-api-token", ""), timeout=client.timeout)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], caption: str = "") -> str:
    return html_table(headers, rows, caption, escape=False)  # cells arrive as HTML already


def _short(value: Any) -> str:
    """A value as a learner would write it: JSON, or nothing for None."""
    return "" if value is None else json.dumps(value, ensure_ascii=False)


# --- traces: a few steps in a fixed order ----------------------------------------------------------


@dataclass
class Step:
    who: str  # "A", "B", "setup", "check", ...
    action: str  # "read", "save" or "delete"
    what: str  # what was done, in words
    status: int
    etag: str | None = None  # the ETag read (read) or sent (save/delete)
    value: Any = None  # the value read, or the value a save tried to write
    note: str = ""


@dataclass
class Trace:
    """Steps run one after another against one key; shows as a table."""

    title: str
    key: str
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        if not step.note:
            step.note = explain(step.action, step.status)
        self.steps.append(step)
        return step

    def statuses(self, action: str, who: str | None = None) -> list[int]:
        """Statuses of the steps doing ``action`` (optionally only by ``who``), in order."""
        return [s.status for s in self.steps if s.action == action and (who is None or s.who == who)]

    @property
    def final(self) -> Any:
        """The value the last read saw (None if the key was gone)."""
        reads = [s for s in self.steps if s.action == "read"]
        return reads[-1].value if reads else None

    def rows(self) -> list[dict[str, Any]]:
        return [{"who": s.who, "what": s.what, "status": s.status, "etag": s.etag, "value": s.value, "note": s.note}
                for s in self.steps]

    def __repr__(self) -> str:
        lines = [f"{self.title} (key {self.key})"]
        lines += [f"  {i}. {s.who:<6} {s.what:<40} {s.status}  etag={s.etag or '':<8} {_short(s.value):<18} {s.note}"
                  for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [
            (i, html.escape(s.who), html.escape(s.what), f"<b>{s.status}</b>", f"<code>{html.escape(s.etag or '')}</code>",
             f"<code>{html.escape(_short(s.value))}</code>", html.escape(s.note))
            for i, s in enumerate(self.steps, 1)
        ]
        headers = ("#", "who", "what", "status", "ETag read / sent", "value", "meaning")
        return _table(headers, rows, f"{self.title} — key {self.key}")


def _read(trace: Trace, client: StateClient, store: str, key: str, who: str, what: str = "read") -> Any:
    state = client.get(store, key)
    if state is None:
        trace.add(Step(who, "read", what, 204))
        return None
    trace.add(Step(who, "read", what, 200, state.etag, state.value))
    return state


def forced_interleaving(client: StateClient, store: str, key: str | None = None, *, balance: int = 100,
                        deposit: int = 10, withdrawal: int = 30) -> Trace:
    """Two writers, one forced order: A reads, B reads, A writes (204), B writes with its stale ETag (409).

    Both saves carry the ETag their writer read (in the item's ``etag`` field; a save has no ``If-Match``
    header), with ``first-write`` concurrency. Without ETags the
    second write would silently overwrite the first one (a lost update); with them it is refused.
    """
    key = key or fresh_key("account")
    trace = Trace("Two writers, one account", key)
    client.save(store, key, {"balance": balance})
    trace.add(Step("setup", "save", f"open the account with balance {balance}", 204, value={"balance": balance}))
    a = _read(trace, client, store, key, "A", "A reads the account")
    b = _read(trace, client, store, key, "B", "B reads the same version")
    plans = (("A", a, deposit, f"deposit {deposit}"), ("B", b, -withdrawal, f"withdraw {withdrawal}"))
    for who, state, delta, words in plans:
        new = {"balance": state.value["balance"] + delta}
        status, _ = _status(partial(client.save, store, key, new, etag=state.etag, concurrency=FIRST_WRITE))
        trace.add(Step(who, "save", f"{who} saves ({words}) with the ETag it read", status, state.etag, new))
    _read(trace, client, store, key, "check", "read back")
    return trace


def stale_delete(client: StateClient, store: str, key: str | None = None) -> Trace:
    """A reads, B updates, A deletes with the ETag it read: 409, and B's value survives."""
    key = key or fresh_key("cart")
    trace = Trace("A delete with a stale ETag", key)
    client.save(store, key, {"items": 1})
    trace.add(Step("setup", "save", "create the cart", 204, value={"items": 1}))
    a = _read(trace, client, store, key, "A", "A reads the cart")
    client.save(store, key, {"items": 2})
    trace.add(Step("B", "save", "B adds an item (plain save)", 204, value={"items": 2}))
    status, _ = _status(lambda: client.delete(store, key, etag=a.etag))
    trace.add(Step("A", "delete", "A deletes, If-Match the ETag it read", status, a.etag))
    _read(trace, client, store, key, "check", "read back")
    return trace


# --- create-if-absent -------------------------------------------------------------------------------


@dataclass
class Creation:
    who: str
    status: int
    note: str

    @property
    def created(self) -> bool:
        return self.status == 204


def create_if_absent(client: StateClient, store: str, key: str, value: Any, who: str = "") -> Creation:
    """Save with ``first-write`` and no ETag: only succeeds when the key does not exist (see the Redis quirk)."""
    status, _ = _status(lambda: client.save(store, key, value, concurrency=FIRST_WRITE))
    return Creation(who, status, explain("create", status))


@dataclass
class Race:
    """Several creators tried to create the same key at the same moment."""

    key: str
    attempts: list[Creation]
    owner: Any  # the value stored at the end

    @property
    def winners(self) -> list[str]:
        return [c.who for c in self.attempts if c.created]

    @property
    def loser_statuses(self) -> list[int]:
        return sorted({c.status for c in self.attempts if not c.created})

    def __repr__(self) -> str:
        lines = [f"{len(self.attempts)} creators raced for {self.key}; winners: {self.winners}; stored: {self.owner}"]
        lines += [f"  {c.who}: {c.status} {c.note}" for c in self.attempts]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [(html.escape(c.who), f"<b>{c.status}</b>", "yes" if c.created else "no", html.escape(c.note))
                for c in self.attempts]
        caption = f"{len(self.attempts)} creators raced for {self.key}; the store holds {self.owner}"
        return _table(("creator", "status", "created?", "meaning"), rows, caption)


def race_to_create(client: StateClient, store: str, creators: int = 5, key: str | None = None) -> Race:
    """``creators`` threads, each with its own connection, released together to create one key."""
    key = key or fresh_key("lock")
    gate = threading.Barrier(creators)

    attempts: list[Creation | None] = [None] * creators
    failures: list[BaseException] = []

    def creator(i: int) -> None:
        try:
            with _clone(client) as own:
                gate.wait()
                attempts[i] = create_if_absent(own, store, key, {"owner": f"creator-{i}"}, who=f"creator-{i}")
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            failures.append(exc)
            gate.abort()

    run_threads([threading.Thread(target=creator, args=(i,), daemon=True) for i in range(creators)], gate=gate)
    if failures:
        raise failures[0]
    state = client.get(store, key)
    return Race(key, [a for a in attempts if a is not None], state.value if state else None)


def create_if_absent_cases(client: StateClient, store: str) -> Trace:
    """Create-if-absent on a missing key, on a key created the same way, and on a key from a plain save.

    On SQLite and in-memory the last two are 409. Redis differs: a key created with first-write refuses
    with a 500, and a key written by a plain save is *overwritten* (204) — first-write only protects keys
    that every writer creates with first-write.
    """
    trace = Trace("Create-if-absent (first-write, no ETag) in three situations", fresh_key("case"))
    cases = [("on a missing key", None), ("on a key created with first-write", FIRST_WRITE),
             ("on a key written by a plain save", "plain")]
    for i, (words, before) in enumerate(cases, 1):
        key = f"{trace.key}-{i}"
        if before is not None:
            client.save(store, key, {"by": "earlier"}, concurrency=FIRST_WRITE if before == FIRST_WRITE else None)
        result = create_if_absent(client, store, key, {"by": "create-if-absent"})
        state = client.get(store, key)
        note = result.note
        if result.created and before is not None:
            note = "204, and the earlier value is gone: overwritten (Redis: first-write guards only first-write keys)"
        trace.add(Step(f"case {i}", "save", f"create-if-absent {words}", result.status,
                       value=state.value if state else None, note=note))
    return trace


# --- retries ----------------------------------------------------------------------------------------

Backoff = Callable[[int], float]  # failed attempt number (1, 2, ...) -> seconds to wait before the next one


def no_backoff(attempt: int) -> float:
    return 0.0


def exponential_backoff(base: float = 0.002, cap: float = 0.05, *, rng: random.Random | None = None) -> Backoff:
    """Full jitter: a random wait in [0, min(cap, base * 2**attempt)] (spreads writers that collided).

    ``statelab.backoff.FullJitter`` bound to ``rng`` (a fresh one if not given), in the ``attempt -> seconds``
    form ``increment_with_retry`` takes.
    """
    return FullJitter(base, cap).bind(rng or random.Random())


class RetriesExhausted(StatelabError):
    """A bounded retry loop met a conflict on every one of its attempts."""

    def __init__(self, key: str, attempts: int, last: DaprError | None) -> None:
        super().__init__(f"gave up on {key!r} after {attempts} attempts; last answer: {last}")
        self.key = key
        self.attempts = attempts
        self.last = last


def increment_with_retry(client: StateClient, store: str, key: str, max_attempts: int = 10,
                         backoff: Backoff = no_backoff, *, by: int = 1,
                         sleep: Callable[[float], None] = time.sleep) -> int:
    """Add ``by`` to the number at ``key`` safely; return the attempts it took (1 = no conflict).

    Each attempt re-reads the value and its ETag, then saves with that ETag and ``first-write``; a
    conflict waits ``backoff(attempt)`` and tries again, at most ``max_attempts`` times in all, then
    raises ``RetriesExhausted``. A missing key counts as 0 and is created with first-write (on Redis that
    create is only safe if every writer of the key uses first-write, see ``create_if_absent_cases``).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    last: DaprError | None = None
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)  # re-read every time: a retry with the old ETag can never succeed
        current = state.value if state is not None else 0
        etag = state.etag if state is not None else None
        try:
            client.save(store, key, current + by, etag=etag, concurrency=FIRST_WRITE)
            return attempt
        except DaprError as exc:
            if isinstance(exc, SidecarUnavailable) or not is_save_conflict(exc, had_etag=etag is not None):
                raise
            last = exc
            log.debug("conflict on %s (attempt %d of %d): %s", key, attempt, max_attempts, exc)
        if attempt < max_attempts:
            sleep(backoff(attempt))
    raise RetriesExhausted(key, max_attempts, last)


def retry_without_reread(client: StateClient, store: str, attempts: int = 4, key: str | None = None) -> Trace:
    """The broken retry: read once, then keep re-sending the same (now stale) ETag. Every attempt is a 409."""
    key = key or fresh_key("counter")
    trace = Trace("Retrying with the ETag read once", key)
    client.save(store, key, 0)
    trace.add(Step("setup", "save", "counter = 0", 204, value=0))
    state = _read(trace, client, store, key, "A", "A reads the counter")
    client.save(store, key, 1)
    trace.add(Step("B", "save", "B increments first (plain save)", 204, value=1))
    for i in range(1, attempts + 1):
        status, _ = _status(lambda: client.save(store, key, state.value + 1, etag=state.etag, concurrency=FIRST_WRITE))
        trace.add(Step("A", "save", f"A, attempt {i}: counter + 1 with the ETag it read", status, state.etag,
                       state.value + 1))
    _read(trace, client, store, key, "check", "read back")
    return trace


@dataclass
class RetryDemo:
    """Writers incrementing one counter, each increment an ``increment_with_retry`` attempt, retried."""

    key: str
    writers: int
    increments: int  # per writer
    max_attempts: int
    attempts: list[int]  # one entry per successful increment: how many attempts it took
    gave_up: int  # increments abandoned after max_attempts conflicts
    final: int  # the counter read back at the end
    seconds: float

    @property
    def successes(self) -> int:
        return len(self.attempts)

    @property
    def lost(self) -> int:
        """Increments that succeeded but are missing from the counter (0 when ETags do their job)."""
        return self.successes - self.final

    @property
    def histogram(self) -> dict[int, int]:
        """Attempts per success -> how many increments needed that many."""
        return dict(sorted(Counter(self.attempts).items()))

    def metrics(self) -> list[tuple[str, Any, str]]:
        """What the lesson records about this demo, as ``(name, value, note)`` for ``Metrics.record_all``."""
        return [
            ("retry_successes", self.successes, "increments that returned"),
            ("retry_gave_up", self.gave_up, "increments abandoned after max_attempts conflicts"),
            ("retry_final_counter", self.final, ""),
            ("retry_lost_increments", self.lost, "successes missing from the counter: 0"),
            ("retry_max_attempts_seen", max(self.attempts, default=0), "the worst increment, at most max_attempts"),
        ]

    def summary(self) -> str:
        return (f"{self.writers} writers x {self.increments} increments: {self.successes} succeeded, "
                f"{self.gave_up} gave up, counter = {self.final}, lost = {self.lost}, "
                f"{self.successes and sum(self.attempts) / self.successes:.2f} attempts per success "
                f"(max {max(self.attempts, default=0)}) in {self.seconds:.2f} s")

    def __repr__(self) -> str:
        return self.summary() + "\n" + "\n".join(f"  {k} attempt(s): {n}" for k, n in self.histogram.items())

    def _repr_html_(self) -> str:
        rows = [(k, n) for k, n in self.histogram.items()]
        return f"<p>{html.escape(self.summary())}</p>" + _table(("attempts per success", "increments"), rows)


def retry_demo(client: StateClient, store: str, *, writers: int = 4, increments: int = 10, max_attempts: int = 20,
               seed: int = 7, progress: bool = True) -> RetryDemo:
    """``writers`` threads, each with its own connection and seeded jittered backoff, all incrementing one key.

    ``statelab.writers.run_writers`` runs them, with the loop ``increment_with_retry`` has: each attempt is one
    attempt of it (a fresh read, a save with the ETag read and first-write, a conflict by the same rule), at
    most ``max_attempts`` per increment, with full jitter (2 ms base, 50 ms cap) after each conflict; the
    writers start together. Any other error stops them all and is raised here.
    """
    from tqdm.auto import tqdm

    key = fresh_key("counter")
    client.save(store, key, 0)

    def one_attempt(own: StateClient, task: WriterTask) -> AttemptOutcome:
        try:  # with max_attempts=1 it reads, saves once, and raises RetriesExhausted on a conflict
            increment_with_retry(own, store, task.key, max_attempts=1)
        except RetriesExhausted as exc:
            return AttemptOutcome(CONFLICT, exc.last.status if exc.last else None)
        return AttemptOutcome(OK, 204)

    config = WritersConfig(writers=writers, operations=increments, max_attempts=max_attempts, seed=seed,
                           store=store, policy="full-jitter", base=0.002, cap=0.05)  # exponential_backoff()'s
    with tqdm(total=writers * increments, desc="increments", disable=not progress) as bar:
        result = run_writers(client.endpoint, config, progress=progress_bar(bar), attempt=one_attempt,
                             client_factory=lambda _: _clone(client), keys=[key], together=True)
    state = client.get(store, key)
    return RetryDemo(key, writers, increments, max_attempts, result.history.attempts_per_success(), result.gave_up,
                     state.value if state else 0, result.wall_time)


# --- the store-semantics matrix ---------------------------------------------------------------------

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _etag_of(client: StateClient, store: str, key: str) -> str:
    state = client.get(store, key)
    assert state is not None and state.etag, f"{key} was just saved; it must read back with an ETag"
    return state.etag


def _code(action: Callable[[], object]) -> str:
    return str(_status(action)[0])


def _probe_etag_format(c: StateClient, s: str) -> str:
    key = fresh_key("m-format")
    c.save(s, key, 1)
    etag = _etag_of(c, s, key)
    return "number" if etag.isdigit() else "uuid" if _UUID.match(etag) else "other"


def _stale_etag(c: StateClient, s: str, prefix: str) -> tuple[str, str]:
    """A key and an ETag it had before a later plain save replaced it."""
    key = fresh_key(prefix)
    c.save(s, key, 1)
    etag = _etag_of(c, s, key)
    c.save(s, key, 2)
    return key, etag


def _probe_stale_etag(c: StateClient, s: str) -> str:
    key, stale = _stale_etag(c, s, "m-stale")
    return _code(lambda: c.save(s, key, 3, etag=stale))


def _probe_etag_on_missing_key(c: StateClient, s: str) -> str:
    key = fresh_key("m-missing")
    c.save(s, key, 1)
    etag = _etag_of(c, s, key)  # a real ETag of this store, of a key then deleted
    c.delete(s, key)
    return _code(lambda: c.save(s, key, 2, etag=etag))


def _probe_stale_etag_last_write(c: StateClient, s: str) -> str:
    key, stale = _stale_etag(c, s, "m-lastwrite")
    return _code(lambda: c.save(s, key, 3, etag=stale, concurrency=LAST_WRITE))


def _probe_non_numeric_etag(c: StateClient, s: str) -> str:
    key = fresh_key("m-nonnum")
    c.save(s, key, 1)
    return _code(lambda: c.save(s, key, 2, etag="not-a-number"))


def _probe_first_write_over_plain_key(c: StateClient, s: str) -> str:
    key = fresh_key("m-fw-plain")
    c.save(s, key, 1)
    return _code(lambda: c.save(s, key, 2, concurrency=FIRST_WRITE))


def _probe_first_write_over_first_write_key(c: StateClient, s: str) -> str:
    key = fresh_key("m-fw-fw")
    c.save(s, key, 1, concurrency=FIRST_WRITE)
    return _code(lambda: c.save(s, key, 2, concurrency=FIRST_WRITE))


def _probe_plain_save_over_first_write_key(c: StateClient, s: str) -> str:
    key = fresh_key("m-plain-fw")
    c.save(s, key, 1, concurrency=FIRST_WRITE)
    return _code(lambda: c.save(s, key, 2))


def _probe_delete_etag_on_missing_key(c: StateClient, s: str) -> str:
    key = fresh_key("m-del-missing")
    c.save(s, key, 1)
    etag = _etag_of(c, s, key)
    c.delete(s, key)
    return _code(lambda: c.delete(s, key, etag=etag))


def _probe_delete_first_write_no_etag(c: StateClient, s: str) -> str:
    key = fresh_key("m-del-fw")
    c.save(s, key, 1)
    return _code(lambda: c.delete(s, key, concurrency=FIRST_WRITE))


def _stale_transaction(c: StateClient, s: str) -> tuple[int, bool]:
    """Upsert ``other`` (fine) and ``stale`` (with an old ETag) in one transaction: status, and whether
    ``other`` was changed anyway."""
    stale_key, stale = _stale_etag(c, s, "m-tx-stale")
    other = fresh_key("m-tx-other")
    c.save(s, other, "before")
    status, _ = _status(lambda: c.transaction(s, [upsert(other, "after"), upsert(stale_key, 3, etag=stale)]))
    state = c.get(s, other)
    return status, state is not None and state.value == "after"


def _probe_transaction_status(c: StateClient, s: str) -> str:
    return str(_stale_transaction(c, s)[0])


def _probe_transaction_other_applied(c: StateClient, s: str) -> str:
    return "yes" if _stale_transaction(c, s)[1] else "no"


@dataclass(frozen=True)
class Situation:
    name: str
    label: str
    probe: Callable[[StateClient, str], str]


SITUATIONS: tuple[Situation, ...] = (
    Situation("etag_format", "ETag format", _probe_etag_format),
    Situation("save_stale_etag", "save with a stale ETag", _probe_stale_etag),
    Situation("save_etag_missing_key", "save with an ETag on a missing key", _probe_etag_on_missing_key),
    Situation("save_stale_etag_last_write", "save with a stale ETag and last-write", _probe_stale_etag_last_write),
    Situation("save_non_numeric_etag", "save with a non-numeric ETag (existing key)", _probe_non_numeric_etag),
    Situation("first_write_over_plain_key", "first-write, no ETag, key exists (plain save)",
              _probe_first_write_over_plain_key),
    Situation("first_write_over_first_write_key", "first-write, no ETag, key exists (created with first-write)",
              _probe_first_write_over_first_write_key),
    Situation("plain_save_over_first_write_key", "plain save, no ETag, key created with first-write",
              _probe_plain_save_over_first_write_key),
    Situation("delete_etag_missing_key", "delete with an ETag on a missing key", _probe_delete_etag_on_missing_key),
    Situation("delete_first_write_no_etag", "delete with first-write, no ETag, key exists",
              _probe_delete_first_write_no_etag),
    Situation("transaction_stale_status", "transaction with one stale op: status", _probe_transaction_status),
    Situation("transaction_other_applied", "transaction with one stale op: other op applied?",
              _probe_transaction_other_applied),
)

# What the contract documents for each situation and store (docs/dapr-behaviour.md §12 and the evidence behind it).
DOCUMENTED: dict[str, dict[str, str]] = {
    "etag_format": {"redis": "number", "sqlite": "uuid", "in-memory": "uuid"},
    "save_stale_etag": {"redis": "409", "sqlite": "409", "in-memory": "409"},
    "save_etag_missing_key": {"redis": "204", "sqlite": "409", "in-memory": "409"},
    "save_stale_etag_last_write": {"redis": "204", "sqlite": "409", "in-memory": "409"},
    "save_non_numeric_etag": {"redis": "400", "sqlite": "409", "in-memory": "409"},
    "first_write_over_plain_key": {"redis": "204", "sqlite": "409", "in-memory": "409"},
    "first_write_over_first_write_key": {"redis": "500", "sqlite": "409", "in-memory": "409"},
    "plain_save_over_first_write_key": {"redis": "500", "sqlite": "204", "in-memory": "204"},
    "delete_etag_missing_key": {"redis": "204", "sqlite": "409", "in-memory": "409"},
    "delete_first_write_no_etag": {"redis": "204", "sqlite": "204", "in-memory": "409"},
    "transaction_stale_status": {"redis": "500", "sqlite": "500", "in-memory": "500"},
    "transaction_other_applied": {"redis": "yes", "sqlite": "no", "in-memory": "no"},
}


@dataclass(frozen=True)
class Column:
    """One state store the matrix ran against."""

    name: str  # column header: "redis", or "statestore (state.redis)" on a real sidecar
    store_type: str  # "redis", "sqlite", "in-memory" (documented), or another Dapr type without expectations
    endpoint: str
    store_name: str


@dataclass
class Matrix:
    """Observed answers per situation (rows) and store (columns), next to what the contract documents."""

    columns: list[Column]
    observed: dict[str, dict[str, str]]  # situation name -> column name -> cell
    source: str  # one sentence: which stores, and how we reached them
    situations: tuple[Situation, ...] = SITUATIONS

    def documented(self, situation: str, column: Column) -> str | None:
        return DOCUMENTED.get(situation, {}).get(column.store_type)

    @property
    def mismatches(self) -> list[str]:
        out = []
        for sit in self.situations:
            for col in self.columns:
                want, got = self.documented(sit.name, col), self.observed[sit.name][col.name]
                if want is not None and got != want:
                    out.append(f"{col.name} · {sit.label}: observed {got}, documented {want}")
        return out

    @property
    def checked_cells(self) -> int:
        return sum(self.documented(s.name, c) is not None for s in self.situations for c in self.columns)

    @property
    def matches_contract(self) -> bool:
        """True when every cell with a documented answer matched it (and there was at least one)."""
        return self.checked_cells > 0 and not self.mismatches

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {s.name: dict(self.observed[s.name]) for s in self.situations}

    def metrics(self) -> list[tuple[str, Any, str]]:
        """What the lesson records about the matrix, as ``(name, value, note)`` for ``Metrics.record_all``."""
        return [
            ("matrix_columns", [c.name for c in self.columns], ""),
            ("matrix_observed", self.as_dict(), "situation -> store -> observed answer"),
            ("matrix_mismatches", self.mismatches, "cells that differ from the documented answer"),
            ("matrix_matches_contract", self.matches_contract, "every documented cell matched"),
        ]

    def __repr__(self) -> str:
        width = max(len(s.label) for s in self.situations)
        lines = [self.source, " " * width + "  " + "  ".join(f"{c.name:>12}" for c in self.columns)]
        for s in self.situations:
            cells = "  ".join(f"{self.observed[s.name][c.name]:>12}" for c in self.columns)
            lines.append(f"{s.label:<{width}}  {cells}")
        lines.append("matches the contract" if self.matches_contract else "mismatches: " + "; ".join(self.mismatches))
        return "\n".join(lines)

    def _cell_html(self, situation: str, column: Column) -> str:
        got = self.observed[situation][column.name]
        want = self.documented(situation, column)
        if want is None:
            return f"<code>{html.escape(got)}</code> <small>(not documented)</small>"
        if got == want:
            return f"<code>{html.escape(got)}</code> ✓"
        return (f"<span style='background:#fdd'><code>{html.escape(got)}</code> ✗ "
                f"<small>documented {html.escape(want)}</small></span>")

    def _repr_html_(self) -> str:
        rows = [[html.escape(s.label)] + [self._cell_html(s.name, c) for c in self.columns] for s in self.situations]
        verdict = (f"All {self.checked_cells} documented cells match the contract." if self.matches_contract
                   else "Differences from the contract: " + html.escape("; ".join(self.mismatches) or "nothing documented"))
        headers = ["situation"] + [c.name for c in self.columns]
        return f"<p>{html.escape(self.source)}</p>" + _table(headers, rows) + f"<p>{verdict}</p>"


def observe(columns: list[Column], situations: tuple[Situation, ...] = SITUATIONS, *, source: str = "",
            progress: bool = True, bar: Any = None) -> Matrix:
    """Run every situation against every column's sidecar and collect the cells.

    ``bar``: a tqdm bar to advance once per cell (else one is made here when ``progress``).
    """
    from tqdm.auto import tqdm

    observed: dict[str, dict[str, str]] = {s.name: {} for s in situations}
    with ExitStack() as cleanup:
        if bar is None:
            bar = cleanup.enter_context(tqdm(total=len(columns) * len(situations), desc="store matrix",
                                             disable=not progress))
        for col in columns:
            with StateClient(col.endpoint) as client:
                for sit in situations:
                    try:
                        observed[sit.name][col.name] = sit.probe(client, col.store_name)
                    except DaprError as exc:  # a read or setup step failed: show it in the cell, go on
                        log.warning("%s on %s failed: %s", sit.name, col.name, exc)
                        observed[sit.name][col.name] = f"error {exc.status}"
                    bar.update(1)
    return Matrix(columns, observed, source or "stores: " + ", ".join(c.name for c in columns), situations)


def start_stack_on_free_ports(store: str, *, first_port: int = MATRIX_FIRST_PORT, step: int = 10,
                              tries: int = 40, runtime: str = "statelab") -> Stack:
    """Start a one-sidecar stack of ``store`` (no replicas) on the first free block of ports from ``first_port``,
    with ``runtime``'s sidecar ("statelab" or "daprd": the lesson's own stack's, so every column is the same kind).

    A block is ``step`` ports: the sidecar on the first, Redis (when needed) in the middle. A block taken
    between the check and the start is skipped.
    """
    from statelab.local import Runtime, Stack, Store, on_free_ports

    for _ in range(tries):
        stack = on_free_ports(Stack(store=cast(Store, store), replicas=0, sidecars=1, http_port=first_port,
                                    grpc_port=first_port + 1, redis_port=first_port + step // 2,
                                    runtime=cast(Runtime, runtime)), step=step)  # Stack checks both names
        try:
            return stack.start()
        except StackError as exc:  # a port taken between the check and the start: look again
            log.info("ports from %d taken while starting %s (%s); trying again", stack.http_port, store, exc)
    raise StackError(f"no free ports for a {store} stack from {first_port}")


def sidecar_columns(lab: Session) -> list[Column]:
    """The state stores ``GET /v1.0/metadata`` lists for the connected sidecar, one column each."""
    columns = []
    for comp in lab.client.metadata().get("components", []):
        kind = str(comp.get("type", ""))
        if kind.startswith("state."):
            name = str(comp.get("name"))
            columns.append(Column(f"{name} ({kind})", kind.removeprefix("state."), lab.endpoint, name))
    return columns


def store_matrix(lab: Session, *, first_port: int = MATRIX_FIRST_PORT, progress: bool = True) -> Matrix:
    """The matrix, observed live.

    Local stack: this stack's store, plus a stack for each other store started on free ports from
    ``first_port`` and stopped again before returning. A sidecar we did not start: only the state
    stores its ``/v1.0/metadata`` lists.
    """
    from tqdm.auto import tqdm

    if not lab.local:
        columns = sidecar_columns(lab)
        names = ", ".join(c.name for c in columns) or "none"
        source = (f"Connected to a sidecar we did not start: only the state stores it lists in /v1.0/metadata "
                  f"are compared ({names}).")
        return observe(columns, source=source, progress=progress)
    own: str = lab.local_stack().store
    others = [s for s in STORE_TYPES if s != own]
    total = len(others) + len(STORE_TYPES) * len(SITUATIONS)
    with ExitStack() as cleanup:
        bar = cleanup.enter_context(tqdm(total=total, desc="store matrix", disable=not progress))
        endpoints = {own: lab.endpoint}
        for other in others:
            bar.set_postfix_str(f"starting a {other} sidecar")
            stack = start_stack_on_free_ports(other, first_port=first_port, runtime=lab.runtime)
            cleanup.callback(stack.stop)  # stopped on the way out, also when a probe raises
            endpoints[other] = stack.endpoint
            bar.update(1)
        bar.set_postfix_str("")
        columns = [Column(s, s, endpoints[s], lab.store_name) for s in STORE_TYPES]
        where = ", ".join(f"{s} at {endpoints[s]}" for s in others)
        source = (f"Local stack: {own} at {lab.endpoint} (this lesson's stack), plus {where}, "
                  f"started for the matrix ({lab.runtime} sidecars, like this lesson's) and stopped again.")
        return observe(columns, source=source, bar=bar)
