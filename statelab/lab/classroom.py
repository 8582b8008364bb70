"""Class contention mode: every attendee's lab-02 writers on one shared key (``labs/README.md``)."""

from __future__ import annotations

import getpass
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statelab.backoff import full_jitter
from statelab.client import FIRST_WRITE, State, StateClient
from statelab.display import html_table
from statelab.errors import DaprError, is_save_conflict
from statelab.history import ERROR, OUTCOME_CODES, UNKNOWN
from statelab.lab.lab02_increment import MIN_WRITERS, lab_endpoints, run_increments
from statelab.lab.learner_code import token
from statelab.lab.results import Note, md
from statelab.writers import run_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from statelab.session import Session

CLASS_PREFIX = "statelab-class"

# --- class contention mode ---------------------------------------------------------------------------------------


def _slug(text: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text or "").strip("-.")[:40]
    return cleaned or fallback


def default_attendee() -> str:
    """``user@host``, made safe for a key: what an attendee is called when the lab does not say."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "attendee"
    return _slug(f"{user}@{socket.gethostname().split('.')[0]}", "attendee")


@dataclass(frozen=True)
class ClassKeys:
    """Where a class keeps its state, under one prefix: the shared counter, the roster, one run per attendee."""

    class_id: str

    @property
    def prefix(self) -> str:
        return f"{CLASS_PREFIX}-{_slug(self.class_id, 'class')}"

    @property
    def counter(self) -> str:
        return f"{self.prefix}-counter"

    @property
    def roster(self) -> str:
        return f"{self.prefix}-roster"

    def run(self, attendee: str) -> str:
        return f"{self.prefix}-run-{attendee}"


def _join_roster(client: StateClient, store: str, keys: ClassKeys, attendee: str, tries: int = 50) -> None:
    """Add ``attendee`` to the roster list: read, append, save with the ETag; retry on conflict."""
    rng = random.Random()
    for number in range(1, tries + 1):
        state = client.get(store, keys.roster)
        roster = list(state.value) if state and isinstance(state.value, list) else []
        if attendee in roster:
            return
        etag = state.etag if state else None
        try:
            client.save(store, keys.roster, [*roster, attendee], etag=etag, concurrency=FIRST_WRITE)
            return
        except DaprError as exc:  # a 409, or Redis's 500 when a concurrent first-write created the roster
            if not is_save_conflict(exc, had_etag=etag is not None):
                raise
        time.sleep(full_jitter(number, rng, base=0.005, cap=0.2))
    raise DaprError(f"could not join the roster {keys.roster} after {tries} tries")


@dataclass
class Room:
    """An open class: its id, and how attendees join it."""

    class_id: str
    endpoint: str
    token: bool  # the sidecar wants a dapr-api-token

    @property
    def keys(self) -> ClassKeys:
        return ClassKeys(self.class_id)

    def text(self) -> str:
        token = " DAPR_API_TOKEN=<the token>" if self.token else ""
        return (f"Class `{self.class_id}` is open on {self.endpoint} (keys `{self.keys.prefix}-*`). Attendees run: "
                f"`export DAPR_HTTP_ENDPOINT=http://<this machine's address>:<port>{token} "
                f"STATELAB_CLASS={self.class_id}`, start Jupyter, and run lab 02 to its last cell.")

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<p>{md(self.text())}</p>"


def open_class(session: Session, class_id: str | None = None) -> Room:
    """Make sure the class's counter and roster exist (never resets them). No id: a fresh one, for a dry run."""
    class_id = class_id or f"dry-run-{uuid.uuid4().hex[:6]}"
    keys = ClassKeys(class_id)
    client, store = session.client, session.store_name
    for key, initial in ((keys.counter, 0), (keys.roster, [])):
        if client.get(store, key) is None:
            try:
                client.save(store, key, initial, concurrency=FIRST_WRITE)
            except DaprError:  # someone created it meanwhile
                pass
    return Room(class_id, session.endpoint, bool(token(session)))


@dataclass
class ClassRun:
    """One attendee's run on the class counter, as published for the instructor."""

    class_id: str
    attendee: str
    key: str
    summary: dict[str, Any]
    counter_after: Any

    def sentence(self) -> str:
        s = self.summary
        return (f"Joined class {self.class_id} as {self.attendee}: {s['acknowledged']} increments on the class counter "
                f"(now {self.counter_after}), {s['conflicts']} conflicts with everyone's writers, "
                f"{s['gave_up']} gave up. Your history is saved for the instructor under {self.key}.")

    def __repr__(self) -> str:
        return self.sentence()

    def _repr_html_(self) -> str:
        return f"<p>{md(self.sentence())}</p>"


MAX_PUBLISHED_ATTEMPTS = 4000  # keeps one attendee's summary small (≈ 100 KB at most)


def class_run(session: Session, attempt: Any, backoff: Any, max_attempts: int, *, class_id: str,
              attendee: str | None = None, writers: int = MIN_WRITERS, operations: int = 10, seed: int = 7,
              progress: bool = False, start: threading.Barrier | None = None,
              stop: threading.Event | None = None) -> ClassRun:
    """Run ``writers`` writers on the class counter, then publish the run's history summary over the Dapr API."""
    keys = ClassKeys(class_id)
    attendee = _slug(attendee or "", "") or default_attendee()
    client, store = session.client, session.store_name
    open_class(session, class_id)
    _join_roster(client, store, keys, attendee)
    started_at = time.time()
    run, flags = run_increments(session, lab_endpoints(session), keys.counter, attempt, backoff, max_attempts,
                                 writers=writers, operations=operations, seed=seed, progress=progress, reset=False,
                                 start=start, stop=stop)
    if flags.fatal:
        raise DaprError(flags.fatal)
    rows = [[a.writer, a.op, a.attempt, round(a.start, 4), round(a.end, 4), OUTCOME_CODES.get(a.outcome, "e")]
            for a in run.history.attempts[:MAX_PUBLISHED_ATTEMPTS]]
    summary = {
        "attendee": attendee, "class_id": class_id, "started_at": round(started_at, 3),
        "wall_time": round(run.wall_time, 3), "writers": writers, "operations": operations,
        "max_attempts": max_attempts, "sidecars": len(run.endpoints), "acknowledged": run.acknowledged,
        "conflicts": run.conflicts, "errors": run.history.count(ERROR), "unknown": run.history.count(UNKNOWN),
        "gave_up": run.gave_up, "attempts": rows, "truncated": len(run.history.attempts) > len(rows),
    }
    client.save(store, keys.run(attendee), summary)
    state = client.get(store, keys.counter)
    return ClassRun(class_id, attendee, keys.run(attendee), summary, state.value if state else None)


def reference_attempt(client: StateClient, store: str, key: str) -> None:
    """A correct lab-02 attempt, for simulated attendees: read, then save +1 with the ETag and first-write."""
    state = client.get(store, key) or State(key, 0, None)
    client.save(store, key, state.value + 1, etag=state.etag, concurrency=FIRST_WRITE)


def reference_backoff(attempt: int, rng: random.Random) -> float:
    """Full jitter, base 2 ms, cap 100 ms."""
    return full_jitter(attempt, rng, base=0.002, cap=0.1)


@dataclass
class Simulation:
    runs: list[ClassRun]
    errors: list[str]

    def __repr__(self) -> str:
        return "\n".join([r.sentence() for r in self.runs] + self.errors) or "No simulated attendees."

    def _repr_html_(self) -> str:
        if not self.runs and not self.errors:
            return "<p><i>No simulated attendees.</i></p>"
        rows = [(r.attendee, r.summary["acknowledged"], r.summary["conflicts"], r.summary["gave_up"],
                 r.summary["wall_time"]) for r in self.runs]
        errors = "".join(f"<p>{md(e)}</p>" for e in self.errors)
        return html_table(("simulated attendee", "acknowledged", "conflicts", "gave up", "wall time s"), rows) + errors


def simulate_attendees(session: Session, class_id: str, count: int, *, writers: int = MIN_WRITERS,
                       operations: int = 10, seed: int = 7, prefix: str = "sim") -> Simulation:
    """``count`` attendees with the reference solution, started together on the class counter (a dry run)."""
    if count <= 0:
        return Simulation([], [])
    gate = threading.Barrier(count)
    stop = threading.Event()
    runs: list[ClassRun] = []
    errors: list[str] = []
    lock = threading.Lock()

    def attendee(i: int) -> None:
        try:
            run = class_run(session, reference_attempt, reference_backoff, 50, class_id=class_id,
                            attendee=f"{prefix}-{i + 1}", writers=writers, operations=operations, seed=seed + i,
                            start=gate, stop=stop)
            with lock:
                runs.append(run)
        except Exception as exc:  # noqa: BLE001 - reported in the result, never a thread traceback
            with lock:
                errors.append(f"{prefix}-{i + 1}: {type(exc).__name__}: {exc}")
            gate.abort()

    run_threads([threading.Thread(target=attendee, args=(i,), daemon=True) for i in range(count)], stop, gate=gate)
    return Simulation(sorted(runs, key=lambda r: r.attendee), errors)


@dataclass
class AttendeeRun:
    attendee: str
    started_at: float
    wall_time: float
    writers: int
    operations: int
    acknowledged: int
    conflicts: int
    gave_up: int
    attempts: list[list[Any]]  # [writer, op, attempt, start, end, outcome code]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttendeeRun:
        return cls(str(data.get("attendee", "?")), float(data.get("started_at", 0)), float(data.get("wall_time", 0)),
                   int(data.get("writers", 0)), int(data.get("operations", 0)), int(data.get("acknowledged", 0)),
                   int(data.get("conflicts", 0)), int(data.get("gave_up", 0)), list(data.get("attempts", [])))

    def attempts_per_success(self) -> list[int]:
        return [row[2] for row in self.attempts if row[5] == "o"]


@dataclass
class ClassView:
    """Everyone's published runs on one class counter, read back with bulk get."""

    class_id: str
    roster: list[str]
    runs: list[AttendeeRun]
    counter: Any

    @property
    def missing(self) -> list[str]:
        """Attendees on the roster without a published run (still running, or their run failed)."""
        done = {r.attendee for r in self.runs}
        return [a for a in self.roster if a not in done]

    @property
    def acknowledged(self) -> int:
        return sum(r.acknowledged for r in self.runs)

    @property
    def conflicts(self) -> int:
        return sum(r.conflicts for r in self.runs)

    @property
    def writers(self) -> int:
        return sum(r.writers for r in self.runs)

    @property
    def lost_updates(self) -> int:
        counter = self.counter if isinstance(self.counter, (int, float)) else 0
        return max(0, self.acknowledged - int(counter))

    def verdict(self) -> str:
        if not self.runs:
            return f"Class {self.class_id}: nobody has published a run yet (roster: {len(self.roster)})."
        head = (f"Class {self.class_id}: {len(self.runs)} attendees, {self.writers} writers on one key, "
                f"{self.acknowledged} acknowledged increments, {self.conflicts} conflicts. The counter reads "
                f"{self.counter}")
        if self.lost_updates:
            return head + f": {self.lost_updates} acknowledged increments are missing (lost updates)."
        extra = (self.counter or 0) - self.acknowledged
        tail = (f", {extra} more than the published runs acknowledged (runs still going or not published)"
                if extra > 0 else ", exactly what everyone was told: no update lost")
        waiting = f" Waiting for: {', '.join(self.missing)}." if self.missing else ""
        return head + tail + "." + waiting

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.runs:
            per = r.attempts_per_success()
            rows.append({"attendee": r.attendee, "writers": r.writers, "acknowledged": r.acknowledged,
                         "conflicts": r.conflicts, "gave up": r.gave_up,
                         "attempts per success": round(sum(per) / len(per), 2) if per else None,
                         "worst": max(per, default=None), "wall time s": round(r.wall_time, 2)})
        return rows

    def metrics(self) -> list[tuple[str, Any, str]]:
        return [
            ("class_attendees", len(self.runs), "attendees with a published run"),
            ("class_writers", self.writers, "writers on the shared key, all attendees together"),
            ("class_acknowledged", self.acknowledged, "increments acknowledged across the class"),
            ("class_counter", self.counter, "the shared counter at the end"),
            ("class_lost_updates", self.lost_updates, "acknowledged but missing from the counter: 0"),
            ("class_conflicts", self.conflicts, "409s across the class"),
        ]

    def __repr__(self) -> str:
        return "\n".join([self.verdict()] + [", ".join(f"{k}={v}" for k, v in r.items()) for r in self.rows()])

    def _repr_html_(self) -> str:
        rows = self.rows()
        table = html_table(rows[0].keys(), [r.values() for r in rows]) if rows else ""
        return f"<p>{md(self.verdict())}</p>" + table

    def plot(self) -> Figure:
        from statelab.plots import class_attempts

        return class_attempts(self)


def class_view(session: Session, class_id: str) -> ClassView:
    """Read the roster, every attendee's published run (one bulk get) and the shared counter."""
    keys = ClassKeys(class_id)
    client, store = session.client, session.store_name
    roster_state = client.get(store, keys.roster)
    roster = [str(a) for a in roster_state.value] if roster_state and isinstance(roster_state.value, list) else []
    states = client.get_bulk(store, [keys.run(a) for a in roster]) if roster else []
    runs = [AttendeeRun.from_json(s.value) for s in states if s is not None and isinstance(s.value, dict)]
    counter = client.get(store, keys.counter)
    return ClassView(class_id, roster, sorted(runs, key=lambda r: r.started_at), counter.value if counter else None)


def reset_class(session: Session, class_id: str) -> Note:
    """Delete the class's counter, roster and every published run (between two workshop sessions)."""
    keys = ClassKeys(class_id)
    view = class_view(session, class_id)
    for key in [keys.run(a) for a in view.roster] + [keys.roster, keys.counter]:
        session.client.delete(session.store_name, key)
    return Note(f"Class `{class_id}` reset: {len(view.roster)} runs, the roster and the counter deleted.")
