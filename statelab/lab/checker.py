"""The ``Checker``: one method per check, each running a lab module's check and recording its verdict."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import requests

from statelab.display import html_table
from statelab.errors import (
    DaprError,
    SidecarUnavailable,
    StackError,
)
from statelab.lab.classroom import ClassRun, class_run
from statelab.lab.lab01_fix_the_docs import check_delete, check_etag_flow, check_get, check_save
from statelab.lab.lab02_increment import MIN_WRITERS, check_attempt, check_backoff, check_increment
from statelab.lab.lab03_safe_delete import check_create_if_absent, check_loser_status, check_safe_delete
from statelab.lab.lab04_transfer import (
    TransferRun,
    check_is_conflict,
    check_redis_transaction,
    check_total_conserved,
    check_transfer,
    run_transfers,
)
from statelab.lab.lab05_consistency import check_choice, check_measurement, check_replica_down
from statelab.lab.learner_code import short
from statelab.lab.recording import Exchange, exchange_of
from statelab.lab.results import CheckResult, Note, failed, md
from statelab.metrics import Metrics
from statelab.writers import RunResult

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from statelab.session import Session

LABS: dict[str, tuple[str, ...]] = {
    "01_fix_the_docs_lab": ("save", "get", "delete", "etag_flow"),
    "02_increment_lab": ("attempt", "backoff", "increment"),
    "03_safe_delete_lab": ("safe_delete", "create_if_absent", "loser_status"),
    "04_transfer_lab": ("transfer", "is_conflict", "total_conserved", "redis_transaction"),
    "05_consistency_lab": ("measurement", "replica_down", "choice"),
}

# --- the checker ------------------------------------------------------------------------------------


class Checker:
    """The checks of one lab notebook, with its session and metrics: ``check = Checker("01_fix_the_docs_lab", lab)``.

    Every check method takes the learner's functions or values, returns a ``CheckResult`` and records it.
    Displayed as the last line of a cell, the checker shows a scoreboard of the lab's checks.
    """

    def __init__(self, notebook: str, session: Session, metrics: Metrics | None = None, *, seed: int = 7,
                 progress: bool = True) -> None:
        self.notebook = notebook
        self.session = session
        self.metrics = metrics or Metrics(notebook)
        self.seed = seed
        self.progress = progress
        self.order: tuple[str, ...] = LABS.get(notebook, ())
        self.results: dict[str, CheckResult] = {}
        self._sessions: dict[str, Session | None] = {}
        self._last_increment: RunResult | None = None
        self._last_timings: Any = None
        self._last_race: list[int] = []
        self._wire: list[Exchange] | None = None

    # --- plumbing ---

    @property
    def store(self) -> str:
        return self.session.store_name

    @property
    def url(self) -> str:
        """The state URL the lab-01 functions receive: ``<endpoint>/v1.0/state/<store>``."""
        return f"{self.session.endpoint}/v1.0/state/{self.session.store_name}"

    def http(self) -> requests.Session:
        """A ``requests.Session`` carrying the sidecar's API token when it needs one (use it like ``requests``).

        While a check runs, every exchange made through it is recorded (``_watching_http``), so a hint can
        say what went over the wire. Only the sessions handed out here are recorded: nothing in ``requests``
        is patched, so other code and other threads are untouched.
        """
        http = requests.Session()
        http.headers.update(self.session.client.headers)
        http.hooks["response"].append(self._heard)
        return http

    def _heard(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        wire = self._wire
        if wire is not None:
            wire.append(exchange_of(resp.request, resp))

    @contextmanager
    def _watching_http(self) -> Iterator[list[Exchange]]:
        """The exchanges made through this checker's ``http()`` sessions inside the block."""
        seen: list[Exchange] = []
        self._wire = seen
        try:
            yield seen
        finally:
            self._wire = None

    def _run(self, name: str, check: Callable[..., CheckResult], *args: Any) -> CheckResult:
        try:
            result = check(self, *args)
        except SidecarUnavailable as exc:
            result = failed(name, f"The check could not reach the sidecar: {exc}. Is the stack still running? "
                                   "Re-run the setup cell.")
        except Exception as exc:  # noqa: BLE001 - a check must never stop the notebook
            result = failed(name, f"The check itself failed ({type(exc).__name__}: {short(str(exc), 160)}). "
                                   "Re-run it; if it keeps failing, ask your instructor.")
        result.name = name
        self.results[name] = result
        self._record()
        return result

    def _record(self) -> None:
        names = list(self.order) + [n for n in self.results if n not in self.order]
        ran = [self.results[n] for n in names if n in self.results]
        for r in ran:
            self.metrics.values[f"check_{r.name}"] = r.passed
            self.metrics.notes[f"check_{r.name}"] = r.message
        first = next((r for r in ran if not r.passed), None)
        self.metrics.values["checks"] = [{"check": r.name, "passed": r.passed, "message": r.message} for r in ran]
        self.metrics.values["first_failed_check"] = first.name if first else None
        self.metrics.values["first_failed_hint"] = first.message if first else None
        self.metrics.values["checks_passed"] = bool(self.order) and all(
            n in self.results and self.results[n].passed for n in self.order)
        self.metrics.notes["checks_passed"] = "every check of this lab ran and passed"
        self.metrics.save()

    def rows(self) -> list[tuple[str, str, str]]:
        names = list(self.order) + [n for n in self.results if n not in self.order]
        out = []
        for n in names:
            r = self.results.get(n)
            out.append((n, "·" if r is None else "✓" if r.passed else "✗", "not run yet" if r is None else r.message))
        return out

    def __repr__(self) -> str:
        done = sum(r.passed for r in self.results.values())
        lines = [f"{self.notebook}: {done} of {len(self.order)} checks passed"]
        lines += [f"  {mark} {name}: {short(msg, 100)}" for name, mark, msg in self.rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        done = sum(r.passed for r in self.results.values() if r.name in self.order)
        rows = [(f"<code>{html.escape(n)}</code>", m, md(short(msg, 220))) for n, m, msg in self.rows()]
        return (f"<p><b>{html.escape(self.notebook)}</b>: {done} of {len(self.order)} checks passed "
                f"<small>(recorded in <code>{html.escape(str(self.metrics.path))}</code>)</small></p>"
                + html_table(("check", "", "what it says"), rows, escape=False))

    # --- lab 01: fix the docs ---

    def save(self, save: Any) -> CheckResult:
        return self._run("save", check_save, save)

    def get(self, get: Any) -> CheckResult:
        return self._run("get", check_get, get)

    def delete(self, delete: Any) -> CheckResult:
        return self._run("delete", check_delete, delete)

    def etag_flow(self, get: Any, update: Any, delete: Any) -> CheckResult:
        return self._run("etag_flow", check_etag_flow, get, update, delete)

    # --- lab 02: increment with retry ---

    def attempt(self, attempt: Any) -> CheckResult:
        return self._run("attempt", check_attempt, attempt)

    def backoff(self, backoff: Any) -> CheckResult:
        return self._run("backoff", check_backoff, backoff)

    def increment(self, attempt: Any, backoff: Any, max_attempts: Any, *, writers: int = MIN_WRITERS,
                  operations: int = 10) -> CheckResult:
        return self._run("increment", check_increment, attempt, backoff, max_attempts, writers, operations)

    def timeline(self) -> Figure | Note:
        """The timeline of the last increment run (one row per writer), or a note if there is none yet.

        A wrong solution's timeline marks the writes that were acknowledged and then lost (``plots.timeline``).
        """
        if self._last_increment is None:
            return Note("No increment run yet: the timeline appears once `check.increment(...)` has run your writers.")
        from statelab import plots

        return plots.timeline(self._last_increment)

    def join_class(self, attempt: Any, backoff: Any, max_attempts: Any, *, class_id: str | None = None,
                   attendee: str | None = None, writers: int = MIN_WRITERS, operations: int = 10) -> ClassRun | Note:
        """Class contention mode: run your writers on the class's shared counter and publish the history.

        ``class_id`` None: ``$STATELAB_CLASS``, else solo mode (nothing shared). Runs only once
        ``check.increment`` has passed, so a broken increment never touches the class counter.
        """
        class_id = class_id or os.environ.get("STATELAB_CLASS") or None
        if not class_id:
            return Note("Solo mode: no class id given (set `class_id`, or `STATELAB_CLASS` before starting "
                        "Jupyter), so nothing is shared. In a workshop your instructor gives you one.")
        passed = self.results.get("increment")
        if passed is None or not passed.passed:
            return Note("Not joining the class run yet: `check.increment(...)` must pass first, so that a broken "
                        "increment never touches the class counter.")
        try:
            run = class_run(self.session, attempt, backoff, int(max_attempts), class_id=class_id,
                            attendee=attendee, writers=writers, operations=operations, seed=self.seed)
        except (DaprError, StackError) as exc:
            return Note(f"Could not join class {class_id!r}: {exc}")
        self.metrics.record("class_published", True, note=f"history saved under {run.key}")
        self.metrics.record("class_acknowledged", run.summary["acknowledged"])
        return run

    # --- lab 03: safe delete and create-if-absent ---

    def safe_delete(self, safe_delete: Any) -> CheckResult:
        return self._run("safe_delete", check_safe_delete, safe_delete)

    def create_if_absent(self, create_if_absent: Any, *, creators: int = 8) -> CheckResult:
        return self._run("create_if_absent", check_create_if_absent, create_if_absent, creators)

    def loser_status(self, loser_status: Any) -> CheckResult:
        return self._run("loser_status", check_loser_status, loser_status)

    # --- lab 04: transfers ---

    def transfer(self, transfer: Any) -> CheckResult:
        return self._run("transfer", check_transfer, transfer)

    def is_conflict(self, is_conflict: Any) -> CheckResult:
        return self._run("is_conflict", check_is_conflict, is_conflict)

    def total_conserved(self, transfer: Any, is_conflict: Any, *, workers: int = 8, transfers: int = 10) -> CheckResult:
        return self._run("total_conserved", check_total_conserved, transfer, is_conflict, workers, transfers)

    def redis_transaction(self, transfer: Any, on_redis: Any) -> CheckResult:
        return self._run("redis_transaction", check_redis_transaction, transfer, on_redis)

    def transfers_on_redis(self, transfer: Any, is_conflict: Any, *, workers: int = 8,
                           transfers: int = 10) -> TransferRun | Note:
        """The same concurrent transfers on Redis (a demonstration, not a check)."""
        redis_session = self._store_session("redis")
        if redis_session is None:
            return Note("No Redis store to run on here (it needs the local stack or a sidecar on state.redis).")
        run, fatal = run_transfers(redis_session, transfer, is_conflict, workers, transfers, self.seed, self.progress)
        if fatal is not None:
            return Note("Your functions are not ready yet: " + fatal)
        return run

    # --- lab 05: choose a consistency level ---

    def measurement(self, timings: Any) -> CheckResult:
        return self._run("measurement", check_measurement, timings)

    def replica_down(self, strong_save_fails: Any) -> CheckResult:
        return self._run("replica_down", check_replica_down, strong_save_fails)

    def choice(self, **answers: Any) -> CheckResult:
        """One ``(level, reason)`` answer per scenario: ``check.choice(page_views=page_views, ...)``."""
        return self._run("choice", check_choice, answers)

    # --- other stores (lab 04) ---

    def _store_session(self, kind: str) -> Session | None:
        """A session on ``kind`` ("sqlite" or "redis"): this lab's, or a local stack started once for the lab.

        "sqlite" stands for "a store with atomic transactions": this lab's own SQLite or single in-memory
        sidecar will do. A stack started here stops with the kernel.
        """
        if kind in self._sessions:
            return self._sessions[kind]
        from statelab.session import Session

        own = self.session.store_type.removeprefix("state.")
        wanted = ("sqlite", "in-memory") if kind == "sqlite" else (kind,)
        found: Session | None = None
        if own in wanted and (own != "in-memory" or len(self.session.endpoints) == 1):
            found = self.session
        else:
            from statelab.lessons.etags import start_stack_on_free_ports

            try:
                stack = start_stack_on_free_ports(kind, runtime=self.session.runtime)
                found = Session(stack.endpoint, stack=stack)
                found.client.wait_until_ready(timeout=30)
            except (StackError, SidecarUnavailable, OSError) as exc:
                log.info("could not start a %s stack for the lab: %s", kind, exc)
                found = None
        self._sessions[kind] = found
        return found
