"""Concurrent writers against one hot key: the one harness behind every concurrent retry loop of statelab.

``run_writers(endpoints, WritersConfig(...))`` starts N writer threads, spread over the K sidecars
(app instances) given, each doing M read-modify-write operations: read the key (GET, keeping the ETag),
compute the new value (counter + 1, or the list with this operation's id appended), save it — with the
ETag under first-write, without under last-write — and on a 409 back off and start again from the read.
Every attempt goes into a ``History``; the result carries it, the final values read back, and the
checker's findings. It never prints; a ``progress`` callback and a ``stop`` event let a widget follow
and interrupt a run, which then returns what happened so far.

Lessons 04 and 05 and the widgets panel use it as it is. Lesson 03's retry demo, labs 02 and 04 and class
mode swap its parts and keep its loop: an ``attempt`` strategy does one attempt of an operation on a client
and says what happened (an ``AttemptOutcome``), or ends the whole run with a hint (``raise AbortRun(hint)``);
``backoff(n, rng)`` is the wait after failed attempt ``n``; ``client_factory(endpoint)`` makes the clients
(e.g. a lab's recording client with the API token). The retry loop, each writer's seeded rng, the history,
gave-up counting, progress and interrupt handling (``run_threads``) live only here.

It speaks the Dapr HTTP API only (``statelab.client``), so it runs the same against real daprd.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from statelab.backoff import BackoffFn, Policy, policy_from_name
from statelab.client import FIRST_WRITE, LAST_WRITE, StateClient
from statelab.errors import (
    DaprError,
    ETagMismatch,
    SidecarTimeout,
    SidecarUnavailable,
    StatelabError,
    is_save_conflict,
    store_unreachable,
)
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN, Attempt, Finding, History, check_append, check_counter

INCREMENT, APPEND = "increment", "append"
# What a reader of a run needs first (tables show these, the rest one click further): fits a laptop's notebook.
KEY_COLUMNS = ("concurrency", "writers", "acknowledged", "lost updates", "attempts per success", "conflicts",
               "wall time s")


@dataclass
class WritersConfig:
    writers: int = 8
    operations: int = 20  # per writer
    mode: str = INCREMENT  # "increment" a counter, or "append" a unique id to a list
    keys: int = 1  # hot keys; each operation picks one at random
    concurrency: str = FIRST_WRITE  # first-write: save with the ETag read; last-write: save blindly
    consistency: str = "eventual"
    policy: str = "full-jitter"  # one of statelab.backoff.POLICY_NAMES
    base: float = 0.002  # seconds
    cap: float = 0.1
    max_attempts: int = 100
    timeout: float = 5.0  # client timeout per request; no answer in time = outcome unknown
    seed: int = 7
    store: str = "statestore"

    def __post_init__(self) -> None:
        if self.mode not in (INCREMENT, APPEND):
            raise ValueError(f"mode must be {INCREMENT!r} or {APPEND!r}")
        if self.concurrency not in (FIRST_WRITE, LAST_WRITE):
            raise ValueError(f"concurrency must be {FIRST_WRITE!r} or {LAST_WRITE!r}")
        if self.writers < 1 or self.operations < 0 or self.keys < 1 or self.max_attempts < 1:
            raise ValueError("writers, keys and max_attempts must be at least 1, operations at least 0")

    def backoff(self) -> Policy:
        return policy_from_name(self.policy, base=self.base, cap=self.cap)


@dataclass
class Progress:
    """A snapshot for live displays: operations done per writer, conflicts so far."""

    done: list[int]
    total_per_writer: int
    conflicts: int
    errors: int
    elapsed: float


@dataclass
class RunResult:
    config: WritersConfig
    endpoints: list[str]
    history: History
    finals: dict[tuple[str, str], Any]  # (group, key) -> value read at the end
    groups: dict[int, str]  # sidecar index -> store group ("all" when they share one store)
    findings: list[Finding]
    wall_time: float
    stopped_early: bool = False
    gave_up: int = 0  # operations abandoned: max_attempts failed, or an attempt said not to retry
    store_type: str = ""
    notes: list[str] = field(default_factory=list)
    fatal: str = ""  # the hint of an attempt strategy that ended the run (``AbortRun``); "" if none did

    # --- what the lessons and tests read ---------------------------------------------------------

    @property
    def acknowledged(self) -> int:
        return self.history.count(OK)

    @property
    def conflicts(self) -> int:
        return self.history.count(CONFLICT)

    @property
    def attempts(self) -> int:
        return len(self.history.attempts)

    @property
    def surviving(self) -> int:
        """Acknowledged updates still visible at the end (counter value, or ids present in the list)."""
        if self.config.mode == INCREMENT:
            return int(sum(v for v in self.finals.values() if isinstance(v, (int, float))))
        return sum(len(v) for v in self.finals.values() if isinstance(v, list))

    @property
    def lost_updates(self) -> int:
        """Acknowledged updates that are not in the store at the end."""
        if self.config.mode == INCREMENT:
            return max(0, self.acknowledged - self.surviving)
        return sum(len(f.ops) for f in self.findings if f.kind == "missing-ids")

    @property
    def attempts_per_success(self) -> float:
        return self.attempts / self.acknowledged if self.acknowledged else float("nan")

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "writers": c.writers,
            "sidecars": len(self.endpoints),
            "operations": c.writers * c.operations,
            "concurrency": c.concurrency,
            "policy": c.policy,
            "acknowledged": self.acknowledged,
            "surviving": self.surviving,
            "lost updates": self.lost_updates,
            "attempts": self.attempts,
            "conflicts": self.conflicts,
            "errors": self.history.count(ERROR),
            "unknown": self.history.count(UNKNOWN),
            "gave up": self.gave_up,
            "attempts per success": round(self.attempts_per_success, 2) if self.acknowledged else None,
            "wall time s": round(self.wall_time, 2),
        }

    def sentences(self) -> list[str]:
        """The checker's findings, one plain sentence each (or one saying nothing was lost)."""
        if not self.findings:
            return [f"No lost updates: all {self.acknowledged} acknowledged writes are in the store."]
        return [f.sentence for f in self.findings]

    def __repr__(self) -> str:
        s = self.summary()
        head = ", ".join(f"{k}={v}" for k, v in s.items())
        return "\n".join([head, *self.notes, *self.sentences()[:5]])

    def _repr_html_(self) -> str:
        from statelab.display import key_table

        notes = "".join(f"<p>{n}</p>" for n in self.notes)
        found = "".join(f"<li>{f}</li>" for f in self.sentences()[:8])
        more = f"<p>… and {len(self.findings) - 8} more findings.</p>" if len(self.findings) > 8 else ""
        return key_table([self.summary()], KEY_COLUMNS) + notes + f"<ul>{found}</ul>" + more

    def metrics(self, prefix: str) -> list[tuple[str, Any, str]]:
        """The numbers a lesson records about this run, as ``(name, value, note)`` for ``Metrics.record_all``."""
        return [
            (f"{prefix}_acknowledged", self.acknowledged, "saves answered 204"),
            (f"{prefix}_surviving", self.surviving, "updates still in the store at the end"),
            (f"{prefix}_lost_updates", self.lost_updates, "acknowledged but not in the store"),
            (f"{prefix}_conflicts", self.conflicts, "409 answers (stale ETag)"),
            (f"{prefix}_attempts_per_success",
             round(self.attempts_per_success, 3) if self.acknowledged else None, ""),
            (f"{prefix}_findings", dict(Counter(f.kind for f in self.findings)), "what the checker found, by kind"),
            (f"{prefix}_wall_time_s", round(self.wall_time, 3), ""),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "summary": self.summary(), "findings": [f.sentence for f in self.findings]}


def _groups(client: StateClient, store: str, sidecars: int) -> tuple[dict[int, str], str]:
    """Which sidecars share a store: all of them, except on state.in-memory (data lives in each sidecar)."""
    store_type = ""
    for comp in client.metadata().get("components", []):
        if comp.get("name") == store:
            store_type = str(comp.get("type", ""))
    if store_type == "state.in-memory" and sidecars > 1:
        return {i: f"sidecar {i}" for i in range(sidecars)}, store_type
    return {i: "all" for i in range(sidecars)}, store_type


STOP_GRACE_SECONDS = 5.0  # how long an interrupted run waits for its threads to finish the request in flight


def run_threads(threads: Sequence[threading.Thread], stop: threading.Event | None = None, *,
                gate: threading.Barrier | None = None) -> None:
    """Start ``threads`` and wait for them all: the one place where statelab's concurrent runs wait.

    If the wait is interrupted (Jupyter's stop button, Ctrl-C) or fails, ``stop`` is set and ``gate``
    aborted, so no thread starts another request or waits at the gate for ever; the threads get
    ``STOP_GRACE_SECONDS`` to finish the request in flight, then the interrupt goes on to the caller. So
    the cell returns promptly and nothing keeps writing to the sidecar behind the learner's back.

    The wait is on a semaphore each thread releases as it ends, never an interruptible ``Thread.join``: on
    Python 3.10 to 3.12 a join that Ctrl-C interrupts marks the thread as ended while it still runs, and every
    later join of it returns at once (``tests/learner/test_interrupts.py``).
    """
    ended = threading.Semaphore(0)
    started: list[threading.Thread] = []
    waited = 0
    try:
        for thread in threads:
            thread.run = _releasing(thread.run, ended)  # type: ignore[method-assign]  # our own threads only
            thread.start()
            started.append(thread)
        for _ in started:
            ended.acquire()
            waited += 1
    except BaseException:
        if stop is not None:
            stop.set()
        if gate is not None:
            gate.abort()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _ in range(len(started) - waited):
            if not ended.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        for thread in started:  # ended, or out of time: a join that nothing interrupts
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    for thread in started:  # each has released; what is left of it is the thread's own exit
        thread.join()


def _releasing(run: Callable[[], None], ended: threading.Semaphore) -> Callable[[], None]:
    def run_then_release() -> None:
        try:
            run()
        finally:
            ended.release()

    return run_then_release


# --- the parts a caller may swap ---------------------------------------------------------------------


@dataclass(frozen=True)
class WriterTask:
    """What one attempt is about: which writer, which of its operations, which attempt of it, which key."""

    writer: int
    op: int  # the writer's operation number, from 0
    attempt: int  # 1 for the first try of the operation
    sidecar: int  # index of the endpoint the writer's client talks to
    key: str  # picked at random from the run's keys, once per operation

    @property
    def op_id(self) -> str:
        return f"w{self.writer}-op{self.op}"


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt did, as an attempt strategy reports it (it becomes one ``statelab.history.Attempt``)."""

    outcome: str  # OK, CONFLICT, ERROR or UNKNOWN (statelab.history)
    status: int | None = None  # HTTP status of the write; None if there was no answer
    etag: str | None = None  # the version the write was based on
    detail: str = ""
    retry: bool = True  # when not OK: try the operation again (at most max_attempts in all); False gives it up now


class AbortRun(StatelabError):
    """Raised by an attempt strategy or a backoff to end the whole run: every writer stops after the request
    in flight, and the result's ``fatal`` is ``hint`` (e.g. a lab's hint about the learner's code)."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


AttemptStrategy = Callable[[StateClient, WriterTask], AttemptOutcome]  # one attempt of an operation
ClientFactory = Callable[[str], StateClient]  # endpoint -> a client of its own
HistoryCheck = Callable[[History, dict[tuple[str, str], Any], dict[int, str]], list[Finding]]


def read_modify_write(config: WritersConfig) -> AttemptStrategy:
    """The default attempt: read the key, add 1 to the counter (or append the operation's id to the list) and
    save it, with the ETag read under first-write, without under last-write."""

    def attempt(client: StateClient, task: WriterTask) -> AttemptOutcome:
        try:
            state = client.get(config.store, task.key)
        except DaprError as exc:
            return AttemptOutcome(ERROR, None, None, f"read failed: {exc}")
        etag = state.etag if state else None
        current = state.value if state else None
        if config.mode == INCREMENT:
            new: Any = (current if isinstance(current, (int, float)) else 0) + 1
        else:
            new = [*(current if isinstance(current, list) else []), task.op_id]
        sent = etag if config.concurrency == FIRST_WRITE else None
        try:
            client.save(config.store, task.key, new, etag=sent, concurrency=config.concurrency,
                        consistency=config.consistency)
        except SidecarTimeout as exc:
            return AttemptOutcome(UNKNOWN, None, etag, str(exc))
        except SidecarUnavailable as exc:
            return AttemptOutcome(ERROR, None, etag, str(exc))
        except DaprError as exc:
            if is_save_conflict(exc, had_etag=sent is not None):
                return AttemptOutcome(CONFLICT, exc.status or 409, etag, "" if isinstance(exc, ETagMismatch) else str(exc))
            # A 5xx may have written (e.g. Redis wrote, then WAIT failed), and so may a 409 that says Redis was
            # unreachable (its reply lost, then the retries refused): the outcome is unknown.
            maybe = exc.status >= 500 or store_unreachable(str(exc))
            return AttemptOutcome(UNKNOWN if maybe else ERROR, exc.status, etag, str(exc))
        return AttemptOutcome(OK, 204, etag)

    return attempt


def progress_bar(bar: Any) -> Callable[[Progress], None]:
    """A ``progress`` callback that moves a tqdm ``bar`` (total: all operations) to the operations done."""
    lock = threading.Lock()

    def show(progress: Progress) -> None:
        with lock:  # snapshots may arrive out of order from several writers: the bar only moves forward
            done = sum(progress.done)
            if done > bar.n:
                bar.update(done - bar.n)

    return show


# --- the harness -------------------------------------------------------------------------------------


class _Writer(threading.Thread):
    def __init__(self, index: int, run: _Run) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.index = index
        self.run_ = run
        self.sidecar = index % len(run.endpoints)
        self.rng = random.Random(run.config.seed * 1_000_003 + index)
        self.backoff = run.backoff.new() if isinstance(run.backoff, Policy) else run.backoff
        self.attempts: list[Attempt] = []
        self.done = 0
        self.gave_up = 0

    def run(self) -> None:
        run = self.run_
        try:
            with run.client_factory(run.endpoints[self.sidecar]) as client:
                if run.gate is not None:
                    try:
                        run.gate.wait()
                    except threading.BrokenBarrierError:  # the run stopped before it began
                        return
                for op in range(run.config.operations):
                    if run.stopping():
                        return
                    key = run.keys[self.rng.randrange(len(run.keys))]
                    done = self._operation(client, op, key)
                    if done is None:
                        return
                    self.gave_up += not done
                    self.done += 1
                    run.report()
        except AbortRun as abort:
            run.abort(abort.hint)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread, never a thread traceback
            run.crashed(exc)

    def _operation(self, client: StateClient, op: int, key: str) -> bool | None:
        """True once an attempt is OK, False when the operation gives up, None if the run stopped first."""
        run = self.run_
        max_attempts = run.config.max_attempts
        for number in range(1, max_attempts + 1):
            if run.stopping():
                return None
            start = run.now()
            did = run.attempt(client, WriterTask(self.index, op, number, self.sidecar, key))
            self.attempts.append(Attempt(self.index, op, number, self.sidecar, key, start, run.now(), did.etag,
                                         did.status, did.outcome, did.detail))
            if did.outcome == OK:
                return True
            run.failed(did.outcome)
            if not did.retry or number == max_attempts:
                return False
            run.stop.wait(self.backoff(number, self.rng))
        return False


class _Run:
    def __init__(self, endpoints: list[str], config: WritersConfig, stop: threading.Event, *,
                 progress: Callable[[Progress], None] | None, progress_every: float, attempt: AttemptStrategy,
                 backoff: BackoffFn, client_factory: ClientFactory, keys: Sequence[str] | None,
                 together: bool) -> None:
        self.endpoints = endpoints
        self.config = config
        self.stop = stop
        self.attempt = attempt
        self.backoff = backoff
        self.client_factory = client_factory
        self.keys = list(keys) if keys is not None else [f"hot-{uuid.uuid4().hex[:8]}-{k}" for k in range(config.keys)]
        self.gate = threading.Barrier(config.writers) if together else None
        self.progress = progress
        self.progress_every = progress_every
        self.fatal = ""
        self.crash: BaseException | None = None
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._conflicts = 0
        self._errors = 0
        self._last_report = 0.0
        self._t0 = time.perf_counter()
        self.writers: list[_Writer] = []

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def begin(self, deadline: float | None) -> None:
        self._deadline = None if deadline is None else time.perf_counter() + deadline

    def stopping(self) -> bool:
        """Whether to start no more requests: stopped, or past the deadline (which then stops the run)."""
        if not self.stop.is_set() and self._deadline is not None and time.perf_counter() > self._deadline:
            self.stop.set()
        return self.stop.is_set()

    def failed(self, outcome: str) -> None:
        with self._lock:
            if outcome == CONFLICT:
                self._conflicts += 1
            else:
                self._errors += 1

    def abort(self, hint: str) -> None:
        with self._lock:
            self.fatal = self.fatal or hint
        self._halt()

    def crashed(self, exc: BaseException) -> None:
        with self._lock:
            self.crash = self.crash or exc
        self._halt()

    def _halt(self) -> None:
        self.stop.set()
        if self.gate is not None:
            self.gate.abort()  # no writer waits for one that will never come

    def report(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = self.now()
        with self._lock:
            if not force and now - self._last_report < self.progress_every:
                return
            self._last_report = now
            snapshot = Progress([w.done for w in self.writers], self.config.operations, self._conflicts,
                                self._errors, now)
        try:
            self.progress(snapshot)
        except Exception:  # noqa: BLE001 - a broken display must not kill a writer
            self.progress = None


def run_writers(
    endpoints: Sequence[str] | str,
    config: WritersConfig | None = None,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: float = 0.1,
    attempt: AttemptStrategy | None = None,
    backoff: BackoffFn | None = None,
    client_factory: ClientFactory | None = None,
    keys: Sequence[str] | None = None,
    check: HistoryCheck | None = None,
    start: threading.Barrier | None = None,
    together: bool = False,
    deadline: float | None = None,
) -> RunResult:
    """Run the writers to the end (or until ``stop`` is set) and return everything that happened.

    Every operation is tried at most ``config.max_attempts`` times; after a failed attempt ``n`` that may be
    retried, the writer waits ``backoff(n, rng)`` (its own rng, seeded from ``config.seed``), or less if the
    run stops meanwhile. Without the keyword arguments it is lessons 04/05's run; each replaces one part:

    - ``attempt(client, task) -> AttemptOutcome``: one attempt (default ``read_modify_write(config)``); it may
      ``raise AbortRun(hint)`` to stop every writer, and the result's ``fatal`` is that hint;
    - ``backoff(n, rng) -> seconds`` (default ``config.backoff()``; a ``Policy`` is copied per writer);
    - ``client_factory(endpoint) -> StateClient`` for every client of the run (default: a plain
      ``StateClient`` with ``config.timeout``);
    - ``keys``: the keys to write, used as they are (default: ``config.keys`` fresh keys, set to 0 or [] first);
    - ``check(history, finals, groups) -> findings`` (default by ``config.mode``);
    - ``start``: a barrier the calling thread waits at before the writers start (several runs together);
      ``together``: the writers, once their clients are open, wait for each other and begin at once;
    - ``deadline``: seconds after which the run stops as if ``stop`` had been set.

    Anything else a writer raises stops the run and is raised here, in the caller's thread. An interrupt
    (Jupyter's stop button) stops the writers too (``run_threads``) and goes on to the caller.
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not endpoints:
        raise ValueError("at least one sidecar endpoint is needed")
    if keys is not None and not keys:
        raise ValueError("keys, when given, must name at least one key")
    config = config or WritersConfig()
    stop = stop or threading.Event()
    timeout = config.timeout
    factory = client_factory or (lambda endpoint: StateClient(endpoint, timeout=timeout))
    run = _Run(endpoints, config, stop, progress=progress, progress_every=progress_every,
               attempt=attempt or read_modify_write(config), backoff=backoff or config.backoff(),
               client_factory=factory, keys=keys, together=together)
    with factory(endpoints[0]) as setup:
        groups, store_type = _groups(setup, config.store, len(endpoints))
    if keys is None:
        initial: Any = 0 if config.mode == INCREMENT else []
        for sidecar in sorted({_first_sidecar(groups, g) for g in set(groups.values())}):
            with factory(endpoints[sidecar]) as c:
                for key in run.keys:
                    c.save(config.store, key, initial)
    run.writers = [_Writer(i, run) for i in range(config.writers)]
    started = time.perf_counter()
    if start is not None:
        start.wait()
    run.begin(deadline)
    run_threads(run.writers, stop, gate=run.gate)
    wall = time.perf_counter() - started
    if run.crash is not None:
        raise run.crash
    run.report(force=True)
    history = History(sorted((a for w in run.writers for a in w.attempts), key=lambda a: a.start))
    finals: dict[tuple[str, str], Any] = {}
    for group in sorted(set(groups.values())):
        with factory(endpoints[_first_sidecar(groups, group)]) as c:
            for key in run.keys:
                state = c.get(config.store, key)
                finals[(group, key)] = state.value if state else None
    check = check or (check_counter if config.mode == INCREMENT else check_append)
    notes = []
    if store_type == "state.in-memory" and len(endpoints) > 1:
        notes.append(f"state.in-memory keeps data inside each sidecar: the {len(endpoints)} app instances "
                     "each have their own copy of the key, so each is checked on its own.")
    return RunResult(
        config=config,
        endpoints=endpoints,
        history=history,
        finals=finals,
        groups=groups,
        findings=check(history, finals, groups),
        wall_time=wall,
        stopped_early=stop.is_set(),
        gave_up=sum(w.gave_up for w in run.writers),
        store_type=store_type,
        notes=notes,
        fatal=run.fatal,
    )


def sweep(
    endpoints: Sequence[str] | str,
    writer_counts: Sequence[int],
    base_config: WritersConfig | None = None,
    *,
    policies: Sequence[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One run per (policy, writer count); rows of writers, policy, attempts per success, wall time, lost."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    base_config = base_config or WritersConfig()
    policies = list(policies or [base_config.policy])
    rows = []
    runs = [(p, n) for p in policies for n in writer_counts]
    for policy, n in tqdm(runs, desc="runs", disable=not progress):
        result = run_writers(endpoints, replace(base_config, writers=n, policy=policy))
        rows.append({
            "writers": n,
            "clients": n,
            "policy": policy,
            "attempts_per_success": result.attempts_per_success,
            "calls_per_client": result.attempts / n,
            "conflicts": result.conflicts,
            "wall_time": result.wall_time,
            "lost_updates": result.lost_updates,
        })
    return rows


@dataclass
class Comparison:
    """The same run under several retry policies (lesson 05)."""

    results: dict[str, RunResult]

    def rows(self) -> list[dict[str, Any]]:
        return [{"policy": p, **{k: v for k, v in r.summary().items() if k != "policy"}} for p, r in self.results.items()]

    def metrics(self) -> list[tuple[str, Any, str]]:
        out: list[tuple[str, Any, str]] = []
        for policy, r in self.results.items():
            name = policy.replace("-", "_")
            out += [
                (f"{name}_attempts_per_success", round(r.attempts_per_success, 3) if r.acknowledged else None, ""),
                (f"{name}_wall_time_s", round(r.wall_time, 3), ""),
                (f"{name}_lost_updates", r.lost_updates, "must be 0 under first-write"),
            ]
        return out

    def _repr_html_(self) -> str:
        from statelab.display import key_table

        return key_table(self.rows(), ("policy", *KEY_COLUMNS[2:]))

    def __repr__(self) -> str:
        return "\n".join(str(r) for r in self.rows())


def compare_policies(endpoints: Sequence[str] | str, policies: Sequence[str], config: WritersConfig | None = None,
                     *, progress: bool = True) -> Comparison:
    """``run_writers`` once per retry policy, everything else equal (same seed, writers, operations)."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    config = config or WritersConfig()
    return Comparison({p: run_writers(endpoints, replace(config, policy=p))
                       for p in tqdm(policies, desc="policies", disable=not progress)})


def _first_sidecar(groups: dict[int, str], group: str) -> int:
    return min(i for i, g in groups.items() if g == group)
