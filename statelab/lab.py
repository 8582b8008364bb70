"""Workshop labs: the checks behind ``labs/NN_*_lab.ipynb``, and the class contention mode.

A lab's setup cell makes one ``Checker("02_increment_lab", lab)``; each check cell passes the learner's
own function objects (or values) to one of its methods, e.g. ``check.increment(attempt, backoff,
max_attempts)``. A check never looks at cells: it calls those functions against the sidecar, watches
what they send (a recording ``StateClient``, or ``requests`` itself), reads the store back and, for the
concurrency labs, runs them from many threads and checks the recorded history. So learners may edit,
split, reorder, duplicate or delete cells, and re-run a check as often as they like: each run uses fresh
keys and gives the same verdict for the same code.

A check returns a ``CheckResult`` that shows as ``✓`` with a short explanation, or ``✗`` with a hint.
It never raises, whatever the learner's code does (a failing check must not stop a headless run), and it
records ``check_<name>`` (True/False) plus the ordered list ``checks``, ``first_failed_check``,
``first_failed_hint`` and ``checks_passed`` in the notebook's ``Metrics``: that is how CI tells a
solved lab from a handout (``tests/test_labs.py``).

Class contention mode (``labs/README.md``): every attendee's lab-02 writers increment one shared key on
the instructor's sidecar; each attendee's run saves a summary of its history under the class prefix,
and ``class_view`` reads them back with bulk get. Everything goes over the Dapr API, so it works against
a real daprd.
"""

from __future__ import annotations

import getpass
import html
import json
import linecache
import logging
import math
import os
import random
import re
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from statelab.client import FIRST_WRITE, LAST_WRITE, Reply, State, StateClient
from statelab.display import html_table
from statelab.errors import (
    DaprError,
    ETagMismatch,
    MalformedRequest,
    SidecarTimeout,
    SidecarUnavailable,
    StackError,
    StoreNotFound,
    TransactionFailed,
)
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN, Attempt, History, check_counter
from statelab.metrics import Metrics
from statelab.writers import RunResult, WritersConfig, run_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from statelab.etags import Trace
    from statelab.session import Session

LABS: dict[str, tuple[str, ...]] = {
    "01_fix_the_docs_lab": ("save", "get", "delete", "etag_flow"),
    "02_increment_lab": ("attempt", "backoff", "increment"),
    "03_safe_delete_lab": ("safe_delete", "create_if_absent", "loser_status"),
    "04_transfer_lab": ("transfer", "is_conflict", "total_conserved", "redis_transaction"),
    "05_consistency_lab": ("measurement", "replica_down", "choice"),
}
MIN_WRITERS = 8  # lab 02's increment check runs at least this many concurrent writers
MAX_WAIT = 1.0  # seconds: a learner's backoff longer than this is capped (and the check says so)
CLASS_PREFIX = "statelab-class"

log = logging.getLogger(__name__)


# --- results --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One check's verdict: ``message`` is the ✓ explanation when passed, the hint when not."""

    name: str
    passed: bool
    message: str
    details: list[str] = field(default_factory=list)
    data: Any = field(default=None, repr=False)  # what the check measured (e.g. a RunResult), for plots

    def text(self) -> str:
        mark = "✓" if self.passed else "✗"
        lines = [f"{mark} {self.name}: {self.message}"]
        lines += [f"    {d}" for d in self.details]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        colour, mark, word = ("#2a9d8f", "✓", "passed") if self.passed else ("#e76f51", "✗", "not yet")
        details = "".join(f"<li>{_md(d)}</li>" for d in self.details)
        more = f"<ul style='margin:0.3em 0 0 0'>{details}</ul>" if details else ""
        return (
            f"<div style='border-left:6px solid {colour};padding:0.4em 0.8em;margin:0.3em 0'>"
            f"<b style='color:{colour}'>{mark} check <code>{html.escape(self.name)}</code> {word}</b><br>"
            f"{_md(self.message)}{more}</div>"
        )


def _md(text: str) -> str:
    """Escape, and render `backticked` parts as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _passed(name: str, message: str, details: Sequence[str] = (), data: Any = None) -> CheckResult:
    return CheckResult(name, True, message, list(details), data)


def _failed(name: str, message: str, details: Sequence[str] = (), data: Any = None) -> CheckResult:
    return CheckResult(name, False, message, list(details), data)


@dataclass
class Note:
    """A plain sentence for a cell to show (a skipped step, a solo-mode notice)."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<p><i>{_md(self.text)}</i></p>"


# --- calling learner code ----------------------------------------------------------------------------

_OWN_FILES = (os.path.dirname(__file__), os.path.dirname(requests.__file__))


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _call(fn: Any, *args: Any) -> tuple[Any, Exception | None]:
    """``fn(*args)``: its result, or the exception it raised (never raised here)."""
    if not callable(fn):
        return None, TypeError(f"expected a function, got {type(fn).__name__} ({fn!r:.60})")
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - the learner's bug becomes a hint, never a traceback
        return None, exc


def _your_line(exc: BaseException) -> str:
    """`` (at `line`)`` for the last traceback frame in the learner's code, if there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith(_OWN_FILES) and "site-packages" not in frame.filename:
            line = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
            if line:
                return f" (at `{line}`)"
    return ""


def _raised(fn: Any, exc: Exception, task: str) -> str:
    """The hint for a learner function that raised: the TODO stub, or where and what."""
    name = _name(fn)
    if isinstance(exc, NotImplementedError):
        return f"`{name}()` is still the TODO stub (it raises NotImplementedError). {task}"
    if isinstance(exc, TypeError) and not callable(fn):
        return f"{exc}. {task}"
    return f"`{name}()` raised {type(exc).__name__}: {_short(str(exc), 160)}{_your_line(exc)}. {task}"


def _placeholder(value: Any) -> bool:
    return value is None or value is Ellipsis


def _short(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _token(session: Session) -> str:
    return session.client.headers.get("dapr-api-token", "")


def _client(session: Session, endpoint: str | None = None) -> StateClient:
    """A client of its own (one per thread), with the session's API token."""
    return StateClient(endpoint or session.endpoint, api_token=_token(session), timeout=session.client.timeout)


# --- watching what learner code sends ----------------------------------------------------------------


@dataclass
class Call:
    """One Dapr state API call as a recording client saw it."""

    kind: str  # "get", "save", "delete", "transaction", "bulk" or "other"
    keys: list[str]
    status: int | None
    etag_read: str | None = None  # GET: the ETag answered
    etags: dict[str, str | None] = field(default_factory=dict)  # save/transaction/delete: key -> ETag sent
    concurrency: dict[str, str | None] = field(default_factory=dict)  # key -> concurrency option sent
    values: dict[str, Any] = field(default_factory=dict)  # save/transaction upserts: key -> value sent


def _describe_call(method: str, path: str, params: dict | None, body: Any, headers: dict | None,
                   resp: Reply | requests.Response) -> Call:
    parts = [unquote(p) for p in path.split("/")]
    # ['', 'v1.0', 'state', store, key?]
    rest = parts[4:] if len(parts) > 4 and parts[2] == "state" else []
    status = resp.status_code
    if method == "GET" and rest:
        return Call("get", [rest[0]], status, etag_read=resp.headers.get("ETag"))
    if method == "DELETE" and rest:
        etag = (headers or {}).get("If-Match") or None
        return Call("delete", [rest[0]], status, etags={rest[0]: etag},
                    concurrency={rest[0]: (params or {}).get("concurrency")})
    if method in ("POST", "PUT") and rest == ["bulk"]:
        return Call("bulk", list((body or {}).get("keys", [])), status)
    if method in ("POST", "PUT") and rest == ["transaction"]:
        call = Call("transaction", [], status)
        for op in (body or {}).get("operations", []):
            req = op.get("request", {})
            key = req.get("key", "")
            call.keys.append(key)
            call.etags[key] = req.get("etag")
            call.concurrency[key] = (req.get("options") or {}).get("concurrency")
            if op.get("operation") == "upsert":
                call.values[key] = req.get("value")
        return call
    if method in ("POST", "PUT") and not rest and isinstance(body, list):
        call = Call("save", [], status)
        for item in body:
            key = item.get("key", "")
            call.keys.append(key)
            call.etags[key] = item.get("etag")
            call.concurrency[key] = (item.get("options") or {}).get("concurrency")
            call.values[key] = item.get("value")
        return call
    return Call("other", [], status)


class RecordingClient(StateClient):
    """A ``StateClient`` that keeps every state call, and can let "someone else" write right after a read.

    ``interpose(key, action)`` runs ``action()`` once, right after the first read of ``key`` returns: the
    deterministic way to put a competing write between a learner's read and their write.
    """

    def __init__(self, endpoint: str, *, api_token: str = "", timeout: float = 10.0) -> None:
        super().__init__(endpoint, api_token=api_token, timeout=timeout)
        self.calls: list[Call] = []
        self.interposed: list[str] = []  # keys whose competing write has run
        self._after_read: dict[str, Callable[[], None]] = {}

    def interpose(self, key: str, action: Callable[[], None]) -> None:
        self._after_read[key] = action

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                headers: dict | None = None, data: bytes | None = None) -> Reply:
        resp = super().request(method, path, params=params, json_body=json_body, headers=headers, data=data)
        call = _describe_call(method, path, params, json_body, headers, resp)
        self.calls.append(call)
        if call.kind == "get" and resp.status_code in (200, 204):
            action = self._after_read.pop(call.keys[0], None)
            if action is not None:
                action()
                self.interposed.append(call.keys[0])
        return resp

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def __enter__(self) -> RecordingClient:
        return self


def _recording(session: Session, endpoint: str | None = None) -> RecordingClient:
    return RecordingClient(endpoint or session.endpoint, api_token=_token(session), timeout=session.client.timeout)


@dataclass
class Exchange:
    """One HTTP exchange made with ``requests`` (by learner code), as it went over the wire."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any
    status: int
    error_code: str
    response_headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def _exchange(request: requests.PreparedRequest, resp: requests.Response) -> Exchange:
    raw = request.body.decode("utf-8", "replace") if isinstance(request.body, bytes) else str(request.body or "")
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    try:
        answer = resp.json() if resp.content else None
    except ValueError:
        answer = None
    code = str(answer.get("errorCode", "")) if isinstance(answer, dict) else ""
    headers = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in request.headers.items()}
    return Exchange(request.method or "", request.url or "", headers, body, resp.status_code, code, dict(resp.headers))


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
            wire.append(_exchange(resp.request, resp))

    @contextmanager
    def _watching_http(self) -> Iterator[list[Exchange]]:
        """The exchanges made through this checker's ``http()`` sessions inside the block."""
        self._wire = seen = []
        try:
            yield seen
        finally:
            self._wire = None

    def _run(self, name: str, check: Callable[..., CheckResult], *args: Any) -> CheckResult:
        try:
            result = check(self, *args)
        except SidecarUnavailable as exc:
            result = _failed(name, f"The check could not reach the sidecar: {exc}. Is the stack still running? "
                                   "Re-run the setup cell.")
        except Exception as exc:  # noqa: BLE001 - a check must never stop the notebook
            result = _failed(name, f"The check itself failed ({type(exc).__name__}: {_short(str(exc), 160)}). "
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
        lines += [f"  {mark} {name}: {_short(msg, 100)}" for name, mark, msg in self.rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        done = sum(r.passed for r in self.results.values() if r.name in self.order)
        rows = [(f"<code>{html.escape(n)}</code>", m, _md(_short(msg, 220))) for n, m, msg in self.rows()]
        return (f"<p><b>{html.escape(self.notebook)}</b>: {done} of {len(self.order)} checks passed "
                f"<small>(recorded in <code>{html.escape(str(self.metrics.path))}</code>)</small></p>"
                + html_table(("check", "", "what it says"), rows, escape=False))

    # --- lab 01: fix the docs ---

    def save(self, save: Any) -> CheckResult:
        return self._run("save", _check_save, save)

    def get(self, get: Any) -> CheckResult:
        return self._run("get", _check_get, get)

    def delete(self, delete: Any) -> CheckResult:
        return self._run("delete", _check_delete, delete)

    def etag_flow(self, get: Any, update: Any, delete: Any) -> CheckResult:
        return self._run("etag_flow", _check_etag_flow, get, update, delete)

    # --- lab 02: increment with retry ---

    def attempt(self, attempt: Any) -> CheckResult:
        return self._run("attempt", _check_attempt, attempt)

    def backoff(self, backoff: Any) -> CheckResult:
        return self._run("backoff", _check_backoff, backoff)

    def increment(self, attempt: Any, backoff: Any, max_attempts: Any, *, writers: int = MIN_WRITERS,
                  operations: int = 10) -> CheckResult:
        return self._run("increment", _check_increment, attempt, backoff, max_attempts, writers, operations)

    def timeline(self) -> Figure | Note:
        """The timeline of the last increment run (one row per writer), or a note if there is none yet."""
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
        return self._run("safe_delete", _check_safe_delete, safe_delete)

    def create_if_absent(self, create_if_absent: Any, *, creators: int = 8) -> CheckResult:
        return self._run("create_if_absent", _check_create_if_absent, create_if_absent, creators)

    def loser_status(self, loser_status: Any) -> CheckResult:
        return self._run("loser_status", _check_loser_status, loser_status)

    # --- lab 04: transfers ---

    def transfer(self, transfer: Any) -> CheckResult:
        return self._run("transfer", _check_transfer, transfer)

    def is_conflict(self, is_conflict: Any) -> CheckResult:
        return self._run("is_conflict", _check_is_conflict, is_conflict)

    def total_conserved(self, transfer: Any, is_conflict: Any, *, workers: int = 8, transfers: int = 10) -> CheckResult:
        return self._run("total_conserved", _check_total_conserved, transfer, is_conflict, workers, transfers)

    def redis_transaction(self, transfer: Any, on_redis: Any) -> CheckResult:
        return self._run("redis_transaction", _check_redis_transaction, transfer, on_redis)

    def transfers_on_redis(self, transfer: Any, is_conflict: Any, *, workers: int = 8,
                           transfers: int = 10) -> TransferRun | Note:
        """The same concurrent transfers on Redis (a demonstration, not a check)."""
        redis_session = self._store_session("redis")
        if redis_session is None:
            return Note("No Redis store to run on here (it needs the local stack or a sidecar on state.redis).")
        run, fatal = _run_transfers(redis_session, transfer, is_conflict, workers, transfers, self.seed, self.progress)
        if fatal is not None:
            return Note("Your functions are not ready yet: " + fatal)
        return run

    # --- lab 05: choose a consistency level ---

    def measurement(self, timings: Any) -> CheckResult:
        return self._run("measurement", _check_measurement, timings)

    def replica_down(self, strong_save_fails: Any) -> CheckResult:
        return self._run("replica_down", _check_replica_down, strong_save_fails)

    def choice(self, **answers: Any) -> CheckResult:
        """One ``(level, reason)`` answer per scenario: ``check.choice(page_views=page_views, ...)``."""
        return self._run("choice", _check_choice, answers)

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
            from statelab.etags import start_stack_on_free_ports

            try:
                stack = start_stack_on_free_ports(kind, runtime=self.session.runtime)
                found = Session(stack.endpoint, stack=stack)
                found.client.wait_until_ready(timeout=30)
            except (StackError, SidecarUnavailable, OSError) as exc:
                log.info("could not start a %s stack for the lab: %s", kind, exc)
                found = None
        self._sessions[kind] = found
        return found


# --- lab 01: fix the docs' snippets ----------------------------------------------------------------------

SAVE_TASK = ("Write `save(url, key, value)`: POST a JSON *array* with one item "
             "(`{\"key\": key, \"value\": value, \"options\": {\"consistency\": \"strong\"}}`) to `url` and return the response.")
GET_TASK = ("Write `get(url, key)`: GET `url/key` with `consistency=strong` as a query parameter; return "
            "`(value, etag)` on 200 and `(None, None)` on 204.")
DELETE_TASK = ("Write `delete(url, key, etag=None)`: DELETE `url/key`, with the ETag in an `If-Match` header when one "
               "is given; return True on 204 and False on 409.")
UPDATE_TASK = ("Write `update(url, key, value, etag)`: save one item with `\"etag\": etag` and "
               "`\"options\": {\"concurrency\": \"first-write\"}`; return True on 204 and False on 409.")


def _explain_refusal(ex: Exchange | None, store: str) -> str:
    """Why the sidecar refused a request, in the terms of the docs' bugs (lesson 00)."""
    if ex is None:
        return "No request reached the sidecar: did the function send one (with `http` or `requests`)?"
    if ex.status == 401:
        return "The sidecar answered 401: it wants a `dapr-api-token` header. Send with `http` (set up above), not `requests`."
    if ex.error_code == "ERR_STATE_STORE_NOT_FOUND":
        return (f"The sidecar answered 400 ERR_STATE_STORE_NOT_FOUND: there is no store at `{urlsplit(ex.url).path}`. "
                f"The store is called `{store}`: use the `url` the check passes in.")
    if ex.error_code == "ERR_MALFORMED_REQUEST":
        if isinstance(ex.body, str):
            return ("The sidecar answered 400 ERR_MALFORMED_REQUEST: the body was one JSON *string*. You passed text to "
                    "`json=`, which encodes it a second time: pass the Python list itself.")
        return "The sidecar answered 400 ERR_MALFORMED_REQUEST: the body must be a JSON array of items (a list of dicts)."
    return f"The sidecar answered {ex.status} {ex.error_code}".rstrip() + "."


def _check_save(ck: Checker, save: Any) -> CheckResult:
    key, value = _fresh("lab01-save"), {"item": "coffee", "qty": 2}
    with ck._watching_http() as wire:
        out, exc = _call(save, ck.url, key, value)
    if exc is not None:
        return _failed("save", _raised(save, exc, SAVE_TASK))
    stored = ck.session.client.get(ck.store, key)
    posts = [e for e in wire if e.method in ("POST", "PUT")]
    last = posts[-1] if posts else None
    if stored is None:
        if isinstance(out, requests.Response) and last is None:
            last = _exchange(out.request, out)
        return _failed("save", f"Nothing was saved under `{key}`. " + _explain_refusal(last, ck.store))
    if stored.value != value:
        return _failed("save", f"The store holds {_short(json.dumps(stored.value))} under `{key}`, not "
                               f"{json.dumps(value)}: put the value into the item as it is.")
    if last is not None and isinstance(last.body, list):
        options = next((i.get("options") or {} for i in last.body if isinstance(i, dict) and i.get("key") == key), {})
        if options.get("consistency") != "strong":
            where = " (a `consistency` header is ignored)" if last.header("consistency") else ""
            return _failed("save", "Saved, but not with strong consistency, which the page asks for" + where +
                                   ": put `\"options\": {\"consistency\": \"strong\"}` into the item.")
    seen = "" if last is not None else " (sent without `requests`, so the check could not see the request)"
    return _passed("save", f"`{key}` holds {json.dumps(value)}: a POST of a JSON array with one item, answered 204, "
                           f"with `options.consistency` strong inside the item{seen}.")


def _check_get(ck: Checker, get: Any) -> CheckResult:
    client = ck.session.client
    key, value = _fresh("lab01-get"), {"item": "tea", "qty": 1}
    client.save(ck.store, key, value)
    etag = client.get(ck.store, key).etag  # type: ignore[union-attr]
    with ck._watching_http() as wire:
        out, exc = _call(get, ck.url, key)
    if exc is not None:
        return _failed("get", _raised(get, exc, GET_TASK))
    if isinstance(out, list) and len(out) == 2:
        out = tuple(out)
    if not (isinstance(out, tuple) and len(out) == 2):
        what = "a response object" if isinstance(out, requests.Response) else type(out).__name__
        return _failed("get", f"`get()` returned {what}; return a tuple `(value, etag)`: `resp.json()` and "
                              "`resp.headers[\"ETag\"]` when the status is 200.")
    got, got_etag = out
    if got != value:
        if isinstance(got, str) and got == json.dumps(value, separators=(",", ":")):
            return _failed("get", "The value came back as text: return `resp.json()`, not `resp.text`.")
        return _failed("get", f"`get()` returned {_short(repr(got))} as the value of `{key}`; the store holds "
                              f"{json.dumps(value)} (the body of the 200 answer).")
    if got_etag != etag:
        return _failed("get", f"`get()` returned {got_etag!r} as the ETag; the store's ETag is {etag!r}: return the "
                              "`ETag` header of the answer.")
    gets = [e for e in wire if e.method == "GET"]
    if gets and "consistency" not in gets[-1].query:
        if gets[-1].header("consistency"):
            return _failed("get", "`consistency` went as an HTTP header, as on the docs page, and the sidecar ignores "
                                  "it there: pass `params={\"consistency\": \"strong\"}` (a query parameter).")
        return _failed("get", "The read did not ask for strong consistency: pass `params={\"consistency\": \"strong\"}`.")
    missing = _fresh("lab01-missing")
    out, exc = _call(get, ck.url, missing)
    if exc is not None:
        return _failed("get", f"Reading a key that does not exist raised {type(exc).__name__}: {_short(str(exc))}"
                              f"{_your_line(exc)}. A missing key answers 204 with an empty body and no ETag header: "
                              "look at `resp.status_code` before reading them, and return `(None, None)`.")
    if out not in ((None, None), [None, None]):
        return _failed("get", f"For a key that does not exist `get()` returned {_short(repr(out))}; return "
                              "`(None, None)` (the sidecar answers 204, no body, no ETag).")
    return _passed("get", "`get()` returns the value and its ETag on 200, and `(None, None)` on 204 for a missing key; "
                          "`consistency=strong` went in the query string, where the sidecar reads it.")


def _check_delete(ck: Checker, delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = _fresh("lab01-delete")
    client.save(store, key, "v1")
    out, exc = _call(delete, ck.url, key)
    if exc is not None:
        return _failed("delete", _raised(delete, exc, DELETE_TASK))
    if client.get(store, key) is not None:
        return _failed("delete", f"`delete(url, {key!r})` left the key in the store. " + DELETE_TASK)
    if out is not True:
        return _failed("delete", f"The key is gone, but `delete()` returned {out!r}: return True when the sidecar "
                                 "answers 204.")
    client.save(store, key, "v1")
    stale = client.get(store, key).etag  # type: ignore[union-attr]
    client.save(store, key, "v2")  # someone else saves: `stale` is now old
    with ck._watching_http() as wire:
        out, exc = _call(delete, ck.url, key, stale)
    after = client.get(store, key)
    deletes = [e for e in wire if e.method == "DELETE"]
    if after is None:
        sent = deletes[-1].header("If-Match") if deletes else None
        why = ("it sent no `If-Match` header, so the sidecar deleted whatever was there" if deletes and not sent
               else "send the ETag in an `If-Match` header")
        return _failed("delete", f"A delete with a stale ETag removed `{key}`, which someone had saved again after "
                                 f"that ETag was read: {why}.")
    if exc is not None:
        return _failed("delete", f"A delete with a stale ETag raised {type(exc).__name__}{_your_line(exc)}: the "
                                 "sidecar answers 409 there, which is expected. Return False instead of raising.")
    if out is not False:
        return _failed("delete", f"The sidecar refused the stale delete (409), but `delete()` returned {out!r}: "
                                 "return False on 409, so the caller knows nothing was deleted.")
    current = after.etag
    out, exc = _call(delete, ck.url, key, current)
    if exc is not None or out is not True or client.get(store, key) is not None:
        return _failed("delete", "With the current ETag the delete should go through (204) and return True; "
                                 f"it returned {out!r}" + (f" and raised {type(exc).__name__}" if exc else "") + ".")
    return _passed("delete", "`delete()` removes a key (204 → True); with a stale ETag in `If-Match` the sidecar "
                             "answers 409, the newer value stays, and `delete()` says so (False); with the current "
                             "ETag it deletes.")


def _check_etag_flow(ck: Checker, get: Any, update: Any, delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = _fresh("lab01-k1")
    client.save(store, key, "Some Data")
    out, exc = _call(get, ck.url, key)
    if exc is not None or not (isinstance(out, (tuple, list)) and len(out) == 2) or not out[1]:
        return _failed("etag_flow", "This flow starts with your `get()`, which does not return `(value, etag)` "
                                    "yet: make its check pass first.")
    etag = out[1]
    with ck._watching_http() as wire:
        ok, exc = _call(update, ck.url, key, "New Data", etag)
    if exc is not None:
        return _failed("etag_flow", _raised(update, exc, UPDATE_TASK))
    state = client.get(store, key)
    if ok is not True or state is None or state.value != "New Data":
        posts = [e for e in wire if e.method in ("POST", "PUT")]
        why = _explain_refusal(posts[-1] if posts else None, store) if (not posts or posts[-1].status != 204) else ""
        return _failed("etag_flow", f"`update()` with the ETag just read should save \"New Data\" and return True; it "
                                    f"returned {ok!r} and the store holds {_short(repr(state.value if state else None))}. "
                                    + (why or UPDATE_TASK))
    posts = [e for e in wire if e.method in ("POST", "PUT")]
    if posts and isinstance(posts[-1].body, list):
        item = next((i for i in posts[-1].body if isinstance(i, dict)), {})
        if item.get("etag") != etag:
            return _failed("etag_flow", "`update()` saved without sending the ETag in the item (`\"etag\": etag`), "
                                        "so it would overwrite anyone's newer version.")
        if (item.get("options") or {}).get("concurrency") == LAST_WRITE:
            return _failed("etag_flow", "`update()` sends `last-write`, with which Redis ignores the ETag: use "
                                        "`\"concurrency\": \"first-write\"`.")
    ok, exc = _call(update, ck.url, key, "Newer Data", etag)  # the same ETag again: stale now
    state = client.get(store, key)
    if state is None or state.value != "New Data":
        return _failed("etag_flow", "A second `update()` with the now stale ETag changed the value: the ETag must go "
                                    "in the item with `first-write`, so the sidecar can refuse it (409).")
    if exc is not None:
        return _failed("etag_flow", f"With a stale ETag the sidecar answers 409 and `update()` raised "
                                    f"{type(exc).__name__}{_your_line(exc)}: handle it, return False.")
    if ok is not False:
        return _failed("etag_flow", f"The stale update was refused (409), but `update()` returned {ok!r}: return False "
                                    "so the caller knows to re-read.")
    out, exc = _call(get, ck.url, key)
    new_etag = out[1] if exc is None and isinstance(out, (tuple, list)) and len(out) == 2 else None
    if not new_etag or new_etag == etag:
        return _failed("etag_flow", "After the update, `get()` should return the new version's ETag.")
    gone, exc = _call(delete, ck.url, key, new_etag)
    if exc is not None or gone is not True or client.get(store, key) is not None:
        return _failed("etag_flow", "The last step, `delete()` with the current ETag, should delete the key and "
                                    "return True: make the `delete` check pass first.")
    return _passed("etag_flow", "The page's flow works: read the ETag, save with it (204 → True), the same ETag again "
                                "is stale (409 → False, nothing changed), read the new ETag, delete with it (204).")


# --- lab 02: increment with retry and backoff -------------------------------------------------------------

ATTEMPT_TASK = ("Write `attempt(client, store, key)`: read the counter with `client.get` (a missing key counts as 0), "
                "then `client.save` it + 1 with the ETag you read and `concurrency=\"first-write\"`; let "
                "`ETagMismatch` reach the caller.")
BACKOFF_TASK = ("Write `backoff(attempt, rng)`: the seconds to wait before retry number `attempt`, e.g. full jitter "
                "`rng.uniform(0, min(cap, base * 2 ** attempt))` with base 0.002 and cap 0.1.")


def _check_attempt(ck: Checker, attempt: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = _fresh("lab02-counter")
    client.save(store, key, 5)
    rc = _recording(ck.session)
    _, exc = _call(attempt, rc, store, key)
    if exc is not None:
        if isinstance(exc, TypeError) and "NoneType" in str(exc):
            return _failed("attempt", _raised(attempt, exc, "A missing key reads as None: count it as 0."))
        return _failed("attempt", _raised(attempt, exc, ATTEMPT_TASK))
    value = client.get(store, key).value  # type: ignore[union-attr]
    saves = [c for c in rc.calls if c.kind in ("save", "transaction") and key in c.keys]
    reads = [c for c in rc.calls if c.kind == "get" and key in c.keys]
    if not saves:
        return _failed("attempt", "`attempt()` returned without saving anything through the `client` it was given. "
                                  + ATTEMPT_TASK)
    if value != 6:
        return _failed("attempt", f"The counter went from 5 to {value!r}: one attempt adds exactly 1 to the value it read.")
    if not reads:
        return _failed("attempt", "`attempt()` saved without reading first. Each attempt must `client.get` the "
                                  "counter itself: the retry after a conflict needs the *new* value and ETag.")
    if saves[-1].etags.get(key) != reads[-1].etag_read:
        return _failed("attempt", "The save did not carry the ETag you read (`etag=state.etag`): without it the "
                                  "sidecar cannot refuse a save based on an old value.")
    if saves[-1].concurrency.get(key) == LAST_WRITE:
        return _failed("attempt", "The save says `last-write`, with which Redis ignores the ETag: use "
                                  "`concurrency=\"first-write\"`.")
    # Someone else adds 10 between this attempt's read and its save: the save must be refused, not overwrite.
    key2 = _fresh("lab02-counter")
    client.save(store, key2, 10)
    rc = _recording(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, 20))
    _, exc = _call(attempt, rc, store, key2)
    value = client.get(store, key2).value  # type: ignore[union-attr]
    if value == 11:
        return _failed("attempt", "Someone saved 20 between your read (10) and your save, and your save overwrote it "
                                  "with 11: a lost update. Save with the ETag you read and `first-write`, so the "
                                  "sidecar refuses it (409).")
    if exc is None:
        return _failed("attempt", "When someone saves between your read and your save, the sidecar refuses yours (409), "
                                  "but `attempt()` returned normally, so a caller would think it worked. Let the "
                                  "`ETagMismatch` propagate (do not catch it here).")
    if not isinstance(exc, ETagMismatch):
        return _failed("attempt", f"On a conflict `attempt()` raised {type(exc).__name__}{_your_line(exc)}; let the "
                                  "client's `ETagMismatch` (409) reach the caller unchanged.")
    key3 = _fresh("lab02-counter")
    _, exc = _call(attempt, _recording(ck.session), store, key3)
    state = client.get(store, key3)
    if exc is not None or state is None or state.value != 1:
        what = f"raised {type(exc).__name__}{_your_line(exc)}" if exc else f"left {state.value if state else None!r}"
        return _failed("attempt", f"On a key that does not exist yet `attempt()` {what}; it should create it with 1 "
                                  "(a missing key reads as None: count it as 0, save without an ETag).")
    return _passed("attempt", "One attempt reads the counter and its ETag, saves +1 with that ETag and first-write, "
                              "and starts a missing counter at 1; when someone saves in between, the sidecar answers "
                              "409 and `ETagMismatch` reaches the caller.")


def _check_backoff(ck: Checker, backoff: Any) -> CheckResult:
    waits: dict[int, list[float]] = {}
    for attempt in range(1, 11):
        waits[attempt] = []
        for seed in range(40):
            value, exc = _call(backoff, attempt, random.Random(seed))
            if exc is not None:
                return _failed("backoff", _raised(backoff, exc, BACKOFF_TASK))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                return _failed("backoff", f"`backoff({attempt}, rng)` returned {value!r}; return a number of seconds.")
            waits[attempt].append(float(value))
    flat = [w for ws in waits.values() for w in ws]
    if min(flat) < 0:
        return _failed("backoff", f"`backoff()` returned a negative wait ({min(flat):g} s); waits are >= 0.")
    if max(flat) == 0:
        return _failed("backoff", "`backoff()` always returns 0: writers that collided retry at once and collide "
                                  "again. Wait a little, more after each conflict.")
    if max(flat) > MAX_WAIT:
        return _failed("backoff", f"`backoff()` waits up to {max(flat):.2f} s; cap it (e.g. `min(0.1, ...)`): a writer "
                                  "waiting that long holds its caller up far longer than the conflict cost.")
    again = [backoff(a, random.Random(3)) for a in range(1, 11)]
    first = [backoff(a, random.Random(3)) for a in range(1, 11)]
    if again != first:
        return _failed("backoff", "Two runs with the same seeded `rng` gave different waits: draw from the `rng` "
                                  "passed in (`rng.uniform(...)`), not from the `random` module, so runs can be replayed.")
    jittered = sum(len(set(ws)) > 1 for ws in waits.values())
    if jittered < 5:
        return _failed("backoff", "Every writer waits exactly the same time after the same attempt: writers that "
                                  "collided together retry together and collide again. Add jitter "
                                  "(`rng.uniform(0, ...)`).")
    mean = {a: sum(ws) / len(ws) for a, ws in waits.items()}
    if mean[6] < 1.5 * mean[1]:
        return _failed("backoff", f"The waits do not grow: about {mean[1] * 1000:.1f} ms after the first conflict and "
                                  f"{mean[6] * 1000:.1f} ms after the sixth. Back off more after each conflict "
                                  "(e.g. `base * 2 ** attempt`, capped).")
    return _passed("backoff", f"Jittered, growing and capped: on average {mean[1] * 1000:.1f} ms after the first "
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


def _run_increments(session: Session, endpoints: Sequence[str], key: str, attempt: Any, backoff: Any,
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
        with _client(session) as c:
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
        with RecordingClient(endpoints[sidecar], api_token=_token(session), timeout=session.client.timeout) as rc:
            for op in range(operations):
                for number in range(1, max_attempts + 1):
                    if stop.is_set() or time.perf_counter() - t0 > deadline:
                        stop.set()
                        break
                    mark, began = len(rc.calls), time.perf_counter() - t0
                    _, exc = _call(attempt, rc, store, key)
                    ended = time.perf_counter() - t0
                    calls = rc.since(mark)
                    saves = [c for c in calls if c.kind in ("save", "transaction") and key in c.keys]
                    outcome, status, detail = _outcome(exc, saves, key)
                    if outcome == "fatal":
                        fatal(_raised(attempt, exc, ATTEMPT_TASK))  # type: ignore[arg-type]
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
                    wait, exc = _call(backoff, number, rng)
                    if exc is not None or not isinstance(wait, (int, float)):
                        fatal(_raised(backoff, exc, BACKOFF_TASK) if exc else
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
            fatal(f"The writers could not run: {type(exc).__name__}: {_short(str(exc), 160)}")

    if start is not None:
        start.wait()  # all attendees of a simulation start together
    threads = [threading.Thread(target=guarded, args=(i,), name=f"lab-writer-{i}", daemon=True) for i in range(writers)]
    try:
        run_threads(threads, stop)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    with _client(session) as c:
        state = c.get(store, key)
    finals = {("all", key): state.value if state else None}
    history = History(sorted(attempts, key=lambda a: a.start))
    groups = dict.fromkeys(range(len(endpoints)), "all")
    config = WritersConfig(writers=writers, operations=operations, max_attempts=max_attempts, seed=seed,
                           policy=f"your {_name(backoff)}()", store=store)
    result = RunResult(config, list(endpoints), history, finals, groups, check_counter(history, finals, groups),
                       wall, stopped_early=stop.is_set(), gave_up=gave_up[0], store_type=session.store_type)
    return result, flags


def _lab_endpoints(session: Session) -> list[str]:
    """The sidecars sharing one store: all of them, except on state.in-memory (data lives in each sidecar)."""
    return session.endpoints[:1] if session.store_type == "state.in-memory" else session.endpoints


def _check_max_attempts(max_attempts: Any) -> str:
    if _placeholder(max_attempts):
        return "`max_attempts` is still the placeholder: choose how many attempts one increment may make (e.g. 20)."
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        return f"`max_attempts` is {max_attempts!r}; it must be a whole number of attempts (e.g. 20)."
    if max_attempts < 2:
        return f"`max_attempts = {max_attempts}` never retries: with {MIN_WRITERS} writers on one key, conflicts are certain."
    if max_attempts > 100:
        return (f"`max_attempts = {max_attempts}` is hardly a bound: a writer stuck that long should give up and say "
                "so. Something between 10 and 50 is plenty here.")
    return ""


def _check_increment(ck: Checker, attempt: Any, backoff: Any, max_attempts: Any, writers: int,
                     operations: int) -> CheckResult:
    if problem := _check_max_attempts(max_attempts):
        return _failed("increment", problem)
    for fn, task in ((attempt, ATTEMPT_TASK), (backoff, BACKOFF_TASK)):
        if not callable(fn):
            return _failed("increment", f"Expected a function, got {type(fn).__name__}. {task}")
    writers = max(MIN_WRITERS, int(writers))
    endpoints = _lab_endpoints(ck.session)
    run, flags = _run_increments(ck.session, endpoints, _fresh("lab02-hot"), attempt, backoff, max_attempts,
                                 writers=writers, operations=operations, seed=ck.seed, progress=ck.progress)
    ck._last_increment = run
    details = [", ".join(f"{k} {v}" for k, v in run.summary().items()
                         if k in ("acknowledged", "surviving", "lost updates", "conflicts", "gave up"))]
    if flags.fatal:
        return _failed("increment", flags.fatal, details, run)
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
        return _failed("increment", f"{run.lost_updates} acknowledged increments are not in the counter ({where}): "
                                    f"{run.sentences()[0]} {cause}", details + run.sentences()[1:3], run)
    if flags.swallowed:
        return _failed("increment", f"{flags.swallowed} attempts returned normally although the sidecar refused their "
                                    "save (409): your caller would count them as done. Let `ETagMismatch` propagate.",
                       details, run)
    if flags.no_etag or flags.no_read or flags.last_write:
        return _failed("increment", "Nothing was lost this time, but only by luck: "
                                    f"{flags.no_etag} saves without an ETag, {flags.no_read} without a fresh read, "
                                    f"{flags.last_write} with last-write. With more contention those lose updates.",
                       details, run)
    if run.gave_up:
        return _failed("increment", f"{run.gave_up} increments gave up after {max_attempts} attempts ({where}). "
                                    "Back off longer after each conflict, or allow more attempts.", details, run)
    if run.stopped_early:
        return _failed("increment", "The run was stopped before all writers finished (too slow): are the waits "
                                    "reasonable (milliseconds, not seconds)?", details, run)
    worst = max(run.history.attempts_per_success(), default=0)
    capped = f" ({flags.capped_waits} waits were capped at {MAX_WAIT:g} s.)" if flags.capped_waits else ""
    return _passed("increment", f"{where}, {operations} increments each: all {run.acknowledged} acknowledged "
                                f"increments are in the counter ({run.surviving}), none lost. {run.conflicts} conflicts "
                                f"were retried: {run.attempts_per_success:.2f} attempts per increment, the worst "
                                f"{worst} of the {max_attempts} allowed.{capped}", details, run)


# --- lab 03: safe delete and create-if-absent -----------------------------------------------------------

SAFE_DELETE_TASK = ("Write `safe_delete(client, store, key, etag)`: delete `key` only if it is still at version "
                    "`etag` (`client.delete(store, key, etag=etag)` sends it in `If-Match`); let `ETagMismatch` "
                    "reach the caller.")
CREATE_TASK = ("Write `create_if_absent(client, store, key, value)`: save with `concurrency=\"first-write\"` and no "
               "ETag, so the store refuses it when the key exists; let that error reach the caller.")


def _check_safe_delete(ck: Checker, safe_delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = _fresh("lab03-cart")
    client.save(store, key, {"items": []})
    etag = client.get(store, key).etag  # type: ignore[union-attr]
    rc = _recording(ck.session)
    _, exc = _call(safe_delete, rc, store, key, etag)
    if exc is not None:
        return _failed("safe_delete", _raised(safe_delete, exc, SAFE_DELETE_TASK))
    if client.get(store, key) is not None:
        return _failed("safe_delete", "With the current ETag, `safe_delete()` should delete the key; it is still there. "
                                      + SAFE_DELETE_TASK)
    # A reads (etag), B adds an item, A deletes with what it read.
    client.save(store, key, {"items": []})
    stale = client.get(store, key).etag  # type: ignore[union-attr]
    client.save(store, key, {"items": ["coffee"]})
    rc = _recording(ck.session)
    out, exc = _call(safe_delete, rc, store, key, stale)
    after = client.get(store, key)
    deletes = [c for c in rc.calls if c.kind == "delete" and key in c.keys]
    if after is None:
        sent = deletes[-1].etags.get(key) if deletes else None
        why = ("The delete carried no ETag: pass `etag=etag` to `client.delete`." if deletes and not sent else
               "Delete with the ETag you were given, and only with it.")
        return _failed("safe_delete", "Someone added coffee to the cart after the ETag was read, and `safe_delete()` "
                                      f"deleted the cart anyway. {why}")
    if after.value != {"items": ["coffee"]}:
        return _failed("safe_delete", f"The cart should still hold the coffee; it holds {_short(repr(after.value))}.")
    if exc is None and out is not False:
        return _failed("safe_delete", "The sidecar refused the stale delete (409) and the cart survived, but "
                                      "`safe_delete()` returned normally: the caller would think the cart is gone. "
                                      "Let `ETagMismatch` propagate (or return False).")
    if exc is not None and not isinstance(exc, ETagMismatch):
        return _failed("safe_delete", f"On a stale ETag `safe_delete()` raised {type(exc).__name__}{_your_line(exc)}; "
                                      "let the client's `ETagMismatch` (409) through unchanged.")
    aba = " (On Redis an ETag is a counter that restarts at 1 when a key is deleted and created again, so an ETag " \
          "from before a delete can match the new key: compare values too if keys are re-created.)" \
        if ck.session.store_type == "state.redis" else ""
    return _passed("safe_delete", "With the ETag just read the cart is deleted; with a stale one the sidecar answers "
                                  f"409, the newer cart survives and the caller is told.{aba}")


def _check_create_if_absent(ck: Checker, create: Any, creators: int) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = _fresh("lab03-job")
    _, exc = _call(create, _recording(ck.session), store, key, {"owner": "first"})
    if exc is not None:
        return _failed("create_if_absent", _raised(create, exc, CREATE_TASK))
    state = client.get(store, key)
    if state is None or state.value != {"owner": "first"}:
        return _failed("create_if_absent", f"On a missing key `create_if_absent()` should create it; the store holds "
                                           f"{_short(repr(state.value if state else None))}. " + CREATE_TASK)
    _, exc = _call(create, _recording(ck.session), store, key, {"owner": "second"})
    state = client.get(store, key)
    if state is None or state.value != {"owner": "first"}:
        return _failed("create_if_absent", "A second `create_if_absent()` on the same key replaced the first owner: a "
                                           "plain save is last-write-wins. Save with `concurrency=\"first-write\"` and "
                                           "no ETag.")
    if exc is None:
        return _failed("create_if_absent", "On a key that already exists `create_if_absent()` returned normally, so "
                                           "the caller would believe it created it. Let the sidecar's refusal reach "
                                           "the caller.")
    # Check-then-act: someone creates the key right after this creator's read (if it reads at all).
    key2 = _fresh("lab03-job")
    rc = _recording(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, {"owner": "other"}, concurrency=FIRST_WRITE))
    _, exc = _call(create, rc, store, key2, {"owner": "me"})
    state = client.get(store, key2)
    if key2 in rc.interposed and state is not None and state.value == {"owner": "me"}:
        return _failed("create_if_absent", "Your function checks whether the key exists and then saves: someone created "
                                           "it between the two, and your save overwrote theirs. Let the store decide "
                                           "in one request: first-write without an ETag.")
    # The race: `creators` threads released together.
    key3 = _fresh("lab03-lock")
    gate = threading.Barrier(creators)
    outcomes: list[tuple[int, Exception | None, int | None]] = []
    lock = threading.Lock()

    def creator(i: int) -> None:
        try:
            with _recording(ck.session) as own:
                gate.wait()
                _, err = _call(create, own, store, key3, {"owner": f"creator-{i}"})
                saves = [c for c in own.calls if c.kind == "save" and key3 in c.keys]
                status = saves[-1].status if saves else None
        except Exception as exc:  # noqa: BLE001 - never a thread traceback on stderr
            err, status = exc, None
        with lock:
            outcomes.append((i, err, status))

    run_threads([threading.Thread(target=creator, args=(i,), daemon=True) for i in range(creators)], gate=gate)
    winners = sorted(i for i, err, _ in outcomes if err is None)
    state = client.get(store, key3)
    losers = sorted({s for _, err, s in outcomes if err is not None and s is not None})
    ck._last_race = losers
    if len(winners) != 1:
        return _failed("create_if_absent", f"{creators} creators raced for one key and {len(winners)} were told they "
                                           "created it; exactly one must win.")
    if state is None or state.value != {"owner": f"creator-{winners[0]}"}:
        return _failed("create_if_absent", f"creator-{winners[0]} was told it won, but the store holds "
                                           f"{_short(repr(state.value if state else None))}.")
    return _passed("create_if_absent", f"A missing key is created; an existing one is refused and kept; of {creators} "
                                       f"creators racing for one key exactly one won (creator-{winners[0]}), the "
                                       f"others got {', '.join(map(str, losers))}.")


LOSER_STATUS = {"redis": 500, "sqlite": 409, "in-memory": 409}  # dapr-state-api.md §6, first-write over a first-write key


def _check_loser_status(ck: Checker, loser_status: Any) -> CheckResult:
    if _placeholder(loser_status) or not isinstance(loser_status, dict):
        return _failed("loser_status", "`loser_status` is still the placeholder: give a dict "
                                       "`{\"redis\": ..., \"sqlite\": ..., \"in-memory\": ...}` with the status each "
                                       "store answers a creator that loses the race.")
    own = ck.session.store_type.removeprefix("state.")
    measured = ck._last_race[0] if len(ck._last_race) == 1 else None
    if measured is None:  # no race seen yet: make two first-write creates of one key
        key = _fresh("lab03-probe")
        ck.session.client.save(ck.store, key, 1, concurrency=FIRST_WRITE)
        try:
            ck.session.client.save(ck.store, key, 2, concurrency=FIRST_WRITE)
            measured = 204
        except DaprError as exc:
            measured = exc.status
    guess = loser_status.get(own)
    if own in LOSER_STATUS and guess != measured:
        return _failed("loser_status", f"On this lab's store ({own}) the losers got {measured}, and you predicted "
                                       f"{guess!r}. Look at the statuses in the race above.")
    wrong = {s: loser_status.get(s) for s, want in LOSER_STATUS.items() if loser_status.get(s) != want}
    if wrong:
        store, guess = next(iter(wrong.items()))
        return _failed("loser_status", f"For {store} you predicted {guess!r}. Lesson 03's store matrix shows what each "
                                       "store answers to first-write without an ETag on a key created with first-write.")
    return _passed("loser_status", f"Right: here ({own}) the losers got {measured}. SQLite and in-memory answer 409; "
                                   "Redis answers 500 ERR_STATE_SAVE, because it marks keys created with first-write and "
                                   "refuses later writes without an ETag inside its script, and Dapr maps that to 409 "
                                   "only when the request carried an ETag. Code that treats only 409 as \"already "
                                   "exists\" breaks on Redis.")


def aba_delete(session: Session) -> Trace:
    """Delete with an ETag read before the key was deleted and created again (lab 03's "going further")."""
    from statelab.etags import Step, Trace

    client, store = session.client, session.store_name
    key = _fresh("lab03-aba")
    trace = Trace("An ETag from before a delete", key)
    client.save(store, key, "old")
    old = client.get(store, key)
    trace.add(Step("A", "read", "A reads the key", 200, old.etag if old else None, "old"))
    client.delete(store, key)
    trace.add(Step("B", "delete", "B deletes it", 204))
    client.save(store, key, "new")
    new = client.get(store, key)
    trace.add(Step("B", "save", "B creates it again", 204, new.etag if new else None, "new"))
    try:
        client.delete(store, key, etag=old.etag if old else None)
        status = 204
    except DaprError as exc:
        status = exc.status
    trace.add(Step("A", "delete", "A deletes, If-Match the ETag it read first", status, old.etag if old else None))
    state = client.get(store, key)
    trace.add(Step("check", "read", "read back", 200 if state else 204, state.etag if state else None,
                   state.value if state else None))
    return trace


# --- lab 04: transfers between two accounts ------------------------------------------------------------------

TRANSFER_TASK = ("Write `transfer(client, store, src, dst, amount)`: read both balances with `client.get`, then ONE "
                 "`client.transaction` with two `upsert`s, each carrying the ETag you read; let errors propagate.")
CONFLICT_TASK = ("Write `is_conflict(exc)`: True for the error a transaction with a stale ETag raises (daprd answers "
                 "500 ERR_STATE_TRANSACTION, `TransactionFailed`, not 409), False otherwise.")


@dataclass
class Accounts:
    """Two accounts in one store, for the transfer checks."""

    session: Session
    alice: str
    bob: str
    opening: int

    @classmethod
    def open(cls, session: Session, opening: int = 100) -> Accounts:
        accounts = cls(session, _fresh("lab04-alice"), _fresh("lab04-bob"), opening)
        for key in (accounts.alice, accounts.bob):
            session.client.save(session.store_name, key, opening)
        return accounts

    def balances(self) -> tuple[Any, Any]:
        states = self.session.client.get_bulk(self.session.store_name, [self.alice, self.bob])
        a, b = (s.value if s else None for s in states)
        return a, b


def _ready_transfer(ck: Checker, transfer: Any, session: Session) -> CheckResult | None:
    """None if ``transfer`` works on ``session`` (one quiet transfer, ETags on both ops), else the failure."""
    accounts = Accounts.open(session)
    rc = _recording(session)
    _, exc = _call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    if exc is not None:
        return _failed("transfer", _raised(transfer, exc, TRANSFER_TASK))
    a, b = accounts.balances()
    if (a, b) != (70, 130):
        return _failed("transfer", f"Transferring 30 from alice (100) to bob (100) left alice {a!r} and bob {b!r}; "
                                   "expected 70 and 130.")
    txs = [c for c in rc.calls if c.kind == "transaction"]
    if not txs or not {accounts.alice, accounts.bob} <= set(txs[-1].keys):
        return _failed("transfer", "The two balances were not written in one `client.transaction`: with two separate "
                                   "saves, a failure between them loses or creates money.")
    missing = [who for who, key in (("alice", accounts.alice), ("bob", accounts.bob)) if not txs[-1].etags.get(key)]
    if missing:
        return _failed("transfer", f"The upsert of {' and '.join(missing)} carries no ETag (`upsert(key, value, "
                                   "etag=state.etag)`): a transfer made in between would be overwritten.")
    if any(txs[-1].concurrency.get(k) == LAST_WRITE for k in txs[-1].keys):
        return _failed("transfer", "An upsert says `last-write`, with which Redis ignores the ETag: leave concurrency "
                                   "out or say `first-write`.")
    return None


def _check_transfer(ck: Checker, transfer: Any) -> CheckResult:
    session = ck._store_session("sqlite")
    if session is None:
        return _failed("transfer", "This check needs a store with atomic transactions (SQLite or in-memory) and could "
                                   "not start one here; run the lab with the local stack.")
    if problem := _ready_transfer(ck, transfer, session):
        return problem
    # Someone deposits 10 into bob between this transfer's reads and its transaction.
    accounts = Accounts.open(session)
    other = session.client
    rc = _recording(session)
    rc.interpose(accounts.bob, lambda: other.save(session.store_name, accounts.bob, 110))
    _, exc = _call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    a, b = accounts.balances()
    if exc is None:
        return _failed("transfer", f"Bob got a deposit between your reads and your transaction; the transaction should "
                                   f"be refused (stale ETag), but `transfer()` returned normally (alice {a}, bob {b}).")
    if (a, b) != (100, 110):
        return _failed("transfer", f"After a refused transfer the balances should be untouched (alice 100, bob 110 "
                                   f"with the deposit); they are alice {a}, bob {b}.")
    kind = "SQLite" if session.store_type == "state.sqlite" else session.store_type
    return _passed("transfer", f"One transaction moves 30 from alice to bob with both ETags; when bob's balance changes "
                               f"between your reads and your transaction, {kind} refuses the whole transaction "
                               f"({type(exc).__name__}) and neither balance moves.")


def _check_is_conflict(ck: Checker, is_conflict: Any) -> CheckResult:
    cases = [
        (TransactionFailed("error while executing state transaction: possible etag mismatch", status=500,
                           error_code="ERR_STATE_TRANSACTION"), True,
         "a transaction refused for a stale ETag (500 ERR_STATE_TRANSACTION)",
         "daprd reports every failed transaction this way, ETag conflicts included: retry it (a bounded number of times)"),
        (StoreNotFound("state store statestor is not found", status=400, error_code="ERR_STATE_STORE_NOT_FOUND"), False,
         "a misspelt store name (400 ERR_STATE_STORE_NOT_FOUND)", "retrying never fixes it"),
        (MalformedRequest("failed deserializing HTTP body", status=400, error_code="ERR_MALFORMED_REQUEST"), False,
         "a malformed request (400 ERR_MALFORMED_REQUEST)", "the same request will be refused again"),
        (KeyError("balance"), False, "a KeyError (a bug in the code)", "retrying a bug only repeats it"),
    ]
    for exc, want, what, why in cases:
        got, err = _call(is_conflict, exc)
        if err is not None:
            return _failed("is_conflict", _raised(is_conflict, err, CONFLICT_TASK))
        if bool(got) != want:
            return _failed("is_conflict", f"For {what} `is_conflict()` returned {got!r}, but {why}.")
    return _passed("is_conflict", "A stale ETag inside a transaction answers 500 ERR_STATE_TRANSACTION, not 409, and "
                                  "your `is_conflict()` retries it; a wrong store name, a malformed request and bugs are not.")


@dataclass
class TransferRun:
    """Concurrent transfers between two accounts, and what they did to the total."""

    store_type: str
    workers: int
    transfers: int
    opening: tuple[int, int]
    final: tuple[Any, Any]
    acknowledged: list[tuple[str, int]]  # ("a->b" | "b->a", amount) of the transfers that returned
    retried: int
    gave_up: int
    failures: Counter = field(default_factory=Counter)  # error type -> count, of transfers that gave up

    @property
    def total_before(self) -> int:
        return sum(self.opening)

    @property
    def total_after(self) -> Any:
        a, b = self.final
        return a + b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None

    @property
    def expected(self) -> tuple[int, int]:
        """The balances the acknowledged transfers add up to."""
        moved = sum(amount if way == "a->b" else -amount for way, amount in self.acknowledged)
        return self.opening[0] - moved, self.opening[1] + moved

    def sentence(self) -> str:
        drift = (self.total_after - self.total_before) if self.total_after is not None else None
        head = (f"{self.workers} workers × {self.transfers} transfers on {self.store_type}: "
                f"{len(self.acknowledged)} acknowledged, {self.retried} retries, {self.gave_up} gave up. ")
        if drift:
            how = f"{drift} appeared from nowhere" if drift > 0 else f"{-drift} vanished"
            return head + f"Total before {self.total_before}, after {self.total_after}: {how}."
        return head + f"Total before {self.total_before}, after {self.total_after}."

    def __repr__(self) -> str:
        return self.sentence()

    def _repr_html_(self) -> str:
        rows = [("alice", self.opening[0], self.expected[0], self.final[0]),
                ("bob", self.opening[1], self.expected[1], self.final[1]),
                ("total", self.total_before, sum(self.expected), self.total_after)]
        return (f"<p>{_md(self.sentence())}</p>" +
                html_table(("account", "opening", "what the acknowledged transfers add up to", "in the store"), rows))


def _run_transfers(session: Session, transfer: Any, is_conflict: Any, workers: int, transfers: int, seed: int,
                   progress: bool, max_attempts: int = 40) -> tuple[TransferRun, str | None]:
    """``workers`` threads each making ``transfers`` random transfers with retries; (run, fatal hint or None)."""
    from tqdm.auto import tqdm

    accounts = Accounts.open(session)
    store = session.store_name
    lock = threading.Lock()
    acknowledged: list[tuple[str, int]] = []
    counts = {"retried": 0, "gave_up": 0}
    failures: Counter = Counter()
    fatal: list[str] = []
    stop = threading.Event()
    bar = tqdm(total=workers * transfers, desc="transfers", disable=not progress)

    def worker(index: int) -> None:
        rng = random.Random(seed * 7919 + index)
        with _recording(session) as rc:
            for _ in range(transfers):
                way = rng.choice(("a->b", "b->a"))
                amount = rng.randint(1, 20)
                src, dst = (accounts.alice, accounts.bob) if way == "a->b" else (accounts.bob, accounts.alice)
                for number in range(1, max_attempts + 1):
                    if stop.is_set():
                        return
                    _, exc = _call(transfer, rc, store, src, dst, amount)
                    if exc is None:
                        with lock:
                            acknowledged.append((way, amount))
                        break
                    if not isinstance(exc, DaprError):
                        with lock:
                            fatal.append(_raised(transfer, exc, TRANSFER_TASK))
                        stop.set()
                        return
                    retry, err = _call(is_conflict, exc)
                    if err is not None:
                        with lock:
                            fatal.append(_raised(is_conflict, err, CONFLICT_TASK))
                        stop.set()
                        return
                    if not retry or number == max_attempts:
                        with lock:
                            counts["gave_up"] += 1
                            failures[type(exc).__name__] += 1
                        break
                    with lock:
                        counts["retried"] += 1
                    time.sleep(rng.uniform(0, min(0.05, 0.002 * 2**number)))
                with lock:
                    bar.update(1)

    def guarded(index: int) -> None:
        try:
            worker(index)
        except Exception as exc:  # noqa: BLE001 - never a thread traceback on stderr
            with lock:
                fatal.append(f"The transfers could not run: {type(exc).__name__}: {_short(str(exc), 160)}")
            stop.set()

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(workers)]
    try:
        run_threads(threads, stop)
    finally:
        bar.close()
    run = TransferRun(session.store_type.removeprefix("state."), workers, transfers,
                      (accounts.opening, accounts.opening), accounts.balances(), acknowledged, counts["retried"],
                      counts["gave_up"], failures)
    return run, (fatal[0] if fatal else None)


def _check_total_conserved(ck: Checker, transfer: Any, is_conflict: Any, workers: int, transfers: int) -> CheckResult:
    session = ck._store_session("sqlite")
    if session is None:
        return _failed("total_conserved", "This check needs a store with atomic transactions (SQLite or in-memory) and "
                                          "could not start one here; run the lab with the local stack.")
    for fn, task in ((transfer, TRANSFER_TASK), (is_conflict, CONFLICT_TASK)):
        if not callable(fn):
            return _failed("total_conserved", f"Expected a function, got {type(fn).__name__}. {task}")
    run, fatal = _run_transfers(session, transfer, is_conflict, workers, transfers, ck.seed, ck.progress)
    if fatal:
        return _failed("total_conserved", fatal, data=run)
    if run.total_after != run.total_before:
        return _failed("total_conserved", f"Money appeared or vanished: the total was {run.total_before} and is now "
                                          f"{run.total_after}. Both upserts of a transfer must carry the ETags read for "
                                          "it, in one transaction.", [run.sentence()], run)
    if run.final != run.expected:
        return _failed("total_conserved", f"The total holds, but the balances {run.final} are not what the acknowledged "
                                          f"transfers add up to {run.expected}: some transfer overwrote another.",
                       [run.sentence()], run)
    if run.gave_up:
        errors = ", ".join(f"{n}× {name}" for name, n in run.failures.items())
        return _failed("total_conserved", f"{run.gave_up} transfers gave up ({errors}). A stale ETag inside a "
                                          "transaction answers 500 ERR_STATE_TRANSACTION (`TransactionFailed`): "
                                          "does `is_conflict()` say True for it?", [run.sentence()], run)
    return _passed("total_conserved", f"{workers} workers made {len(run.acknowledged)} concurrent transfers on "
                                      f"{run.store_type}: the total is {run.total_after} before and after, and both "
                                      f"balances are exactly what the acknowledged transfers add up to; "
                                      f"{run.retried} transactions were refused for a stale ETag and retried.",
                   [run.sentence()], run)


ON_REDIS_KEYS = ("status", "debit_applied", "credit_applied")


def _check_redis_transaction(ck: Checker, transfer: Any, on_redis: Any) -> CheckResult:
    if _placeholder(on_redis) or not isinstance(on_redis, dict) or not set(ON_REDIS_KEYS) <= set(on_redis):
        return _failed("redis_transaction", "`on_redis` is still the placeholder: predict "
                                            "`{\"status\": ..., \"debit_applied\": ..., \"credit_applied\": ...}` for "
                                            "the transfer described above, before running the check.")
    session = ck._store_session("redis")
    if session is None:
        return _passed("redis_transaction", "Not measured: no Redis store here (it needs the local stack or a sidecar "
                                            "on state.redis). On Redis the transaction answers 500, the debit is applied "
                                            "and the credit is not.")
    if problem := _ready_transfer(ck, transfer, session):
        return _failed("redis_transaction", "This question is about your ETag-guarded transfer, which is not ready on "
                                            "Redis yet: " + problem.message)
    accounts = Accounts.open(session)
    rc = _recording(session)
    rc.interpose(accounts.bob, lambda: session.client.save(session.store_name, accounts.bob, 110))
    _, exc = _call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    a, b = accounts.balances()
    measured = {"status": exc.status if isinstance(exc, DaprError) else 204,
                "debit_applied": a == 70, "credit_applied": b == 140}
    wrong = [k for k in ON_REDIS_KEYS if on_redis.get(k) != measured[k]]
    facts = (f"the transaction answered {measured['status']}, alice has {a} (debit "
             f"{'applied' if measured['debit_applied'] else 'not applied'}), bob has {b} (credit "
             f"{'applied' if measured['credit_applied'] else 'not applied'})")
    if wrong:
        return _failed("redis_transaction", f"Not what happened: {facts}. You predicted " +
                       ", ".join(f"{k}={on_redis.get(k)!r}" for k in wrong) + ". dapr-state-api.md §6: on Redis a "
                       "transaction is a MULTI/EXEC batch of scripts; read what happens when one of them fails.",
                       data=measured)
    return _passed("redis_transaction", f"Right: {facts}. Redis runs the transaction as MULTI/EXEC, one script per "
                                        "operation, without rollback: bob's script refuses the stale ETag, alice's "
                                        "succeeds, and daprd reports the whole transaction as failed (500 "
                                        "ERR_STATE_TRANSACTION). The 30 are gone, and a retry would debit alice again. "
                                        "On Redis keep values that must change together in one key (one save with "
                                        "one ETag), or use a store with atomic transactions.", data=measured)


# --- lab 05: choose a consistency level -----------------------------------------------------------------------

SCENARIOS: dict[str, tuple[str, str]] = {
    # name: (the right level, the fact that decides it)
    "page_views": ("eventual", "A few lost page views after a failover do not matter, and strong makes every one of "
                               "thousands of saves a second wait for the replica ({cost})."),
    "replica_report": ("strong", "The report reads the replica itself. Only a strong save makes the sidecar wait until "
                                 "the replica has the write (one WAIT per save); after an eventual save the replica "
                                 "may lag ({stale} — zero is luck, not a promise)."),
    "own_reads": ("eventual", "The sidecar reads from the Redis primary whether you ask for strong or not, so the "
                              "service always reads its own writes; strong would add {cost} and change nothing it "
                              "reads."),
}


def _check_measurement(ck: Checker, timings: Any) -> CheckResult:
    from statelab.client import EVENTUAL, STRONG
    from statelab.consistency import SaveTimings

    if _placeholder(timings):
        return _failed("measurement", "`timings` is still the placeholder: measure strong and eventual saves with "
                                      "`consistency.measure_saves(lab, samples=samples, seed=seed)`.")
    if not isinstance(timings, SaveTimings):
        return _failed("measurement", f"`timings` is a {type(timings).__name__}; the check reads what "
                                      "`consistency.measure_saves(...)` returns.")
    n = min(len(timings.latency_ms[STRONG]), len(timings.latency_ms[EVENTUAL]))
    if n < 50:
        return _failed("measurement", f"Only {n} saves per mode: measure at least 50 so the medians settle.")
    if timings.store_type != "state.redis":
        return _failed("measurement", f"This was measured on {timings.store_type or 'a store'} without replicas, where "
                                      "strong does nothing. Run this lab on the replicated store (`store = \"redis\"`).")
    ck._last_timings = timings
    head = (f"{n} saves per mode on Redis: median strong {timings.p50(STRONG):.2f} ms, eventual "
            f"{timings.p50(EVENTUAL):.2f} ms ({timings.extra_p50_ms:+.2f} ms for strong)")
    if timings.skipped or timings.wait_calls is None:
        return _passed("measurement", head + ". WAITs and replica reads were not counted (that needs the local stack).",
                       data=timings)
    if timings.wait_calls != timings.strong_saves:
        return _failed("measurement", f"The primary ran {timings.wait_calls} WAITs for {timings.strong_saves} strong "
                                      "saves, not one each: did the sidecar start while the replica was down (lesson "
                                      "02, 'read once')? Re-run the setup cell, then measure again.", data=timings)
    if timings.stale[STRONG]:
        return _failed("measurement", f"{timings.stale[STRONG]} replica reads right after a strong save were stale; "
                                      "strong should rule that out while the replica is up. Measure again.",
                       data=timings)
    return _passed("measurement", head + f". The primary ran exactly one WAIT per strong save ({timings.wait_calls}); "
                                         f"replica reads right after a strong save were never stale (after eventual "
                                         f"saves: {timings.stale[EVENTUAL]}).", data=timings)


def _check_replica_down(ck: Checker, strong_save_fails: Any) -> CheckResult:
    from statelab import consistency

    if not isinstance(strong_save_fails, bool):
        return _failed("replica_down", "`strong_save_fails_when_replica_down` is still the placeholder: predict True or "
                                       "False first, then run the check.")
    down = consistency.save_with_replica_down(ck.session, progress=ck.progress)
    if down.skipped:
        return _passed("replica_down", f"Not measured here: {down.skipped.removeprefix('Skipped: ')} On the local "
                                       "stack the strong save still answers 204, about one second late.")
    fails = not down.strong_ok
    if strong_save_fails != fails:
        return _failed("replica_down", f"You predicted that it {'fails' if strong_save_fails else 'succeeds'}. "
                                       f"{down.verdict()}", data=down)
    return _passed("replica_down", f"Right. {down.verdict()} A 204 to a strong save does not prove a replica has the "
                                   "write.", data=down)


def _check_choice(ck: Checker, answers: dict[str, Any]) -> CheckResult:
    from statelab.client import EVENTUAL, STRONG

    if missing := [n for n in SCENARIOS if n not in answers]:
        return _failed("choice", f"Pass one answer per scenario: `check.choice({', '.join(f'{n}={n}' for n in SCENARIOS)})`"
                                 f"; missing: {', '.join(missing)}.")
    for name in SCENARIOS:
        answer = answers[name]
        if _placeholder(answer):
            return _failed("choice", f"`{name}` is still the placeholder: write `(\"strong\" or \"eventual\", "
                                     "\"why, in one sentence\")`.")
        if not (isinstance(answer, tuple) and len(answer) == 2):
            return _failed("choice", f"`{name}` is {_short(repr(answer))}; write a pair `(level, reason)`, e.g. "
                                     "`(\"eventual\", \"because ...\")`.")
        if answer[0] not in (STRONG, EVENTUAL):
            return _failed("choice", f"The level of `{name}` is {answer[0]!r}: say \"strong\" or \"eventual\".")
        if not isinstance(answer[1], str) or len(answer[1].split()) < 4:
            return _failed("choice", f"Justify `{name}` in a sentence (ideally quoting what you measured); "
                                     f"{_short(repr(answer[1]))} is too short for a colleague to follow.")
    timings = ck._last_timings
    cost = f"{timings.extra_p50_ms:+.2f} ms per save at the median here" if timings else "a replica round trip per save"
    stale = (f"your run saw {timings.stale[EVENTUAL]} stale replica reads after eventual saves"
             if timings and timings.stale.get(EVENTUAL) is not None else "this session could not read the replica")
    for name, (want, why) in SCENARIOS.items():
        if answers[name][0] != want:
            return _failed("choice", f"Think again about `{name}`: {why.format(cost=cost, stale=stale)}")
    chosen = "; ".join(f"{n}: {answers[n][0]}" for n in SCENARIOS)
    return _passed("choice", f"{chosen}. Strong is worth its cost ({cost}) only where something reads the replica "
                             "(or must survive losing the primary right after the 204); the sidecar itself always "
                             "reads the primary.")


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
        try:
            client.save(store, keys.roster, [*roster, attendee], etag=state.etag if state else None,
                        concurrency=FIRST_WRITE)
            return
        except ETagMismatch:
            pass
        except DaprError as exc:  # Redis: a concurrent first-write create of the roster answers 500
            if exc.status != 500 or state is not None:
                raise
        time.sleep(rng.uniform(0, min(0.2, 0.005 * 2**number)))
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
        return f"<p>{_md(self.text())}</p>"


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
    return Room(class_id, session.endpoint, bool(_token(session)))


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
        return f"<p>{_md(self.sentence())}</p>"


OUTCOME_CODES = {OK: "o", CONFLICT: "c", ERROR: "e", UNKNOWN: "u"}
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
    run, flags = _run_increments(session, _lab_endpoints(session), keys.counter, attempt, backoff, max_attempts,
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
    return rng.uniform(0, min(0.1, 0.002 * 2**attempt))


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
        errors = "".join(f"<p>{_md(e)}</p>" for e in self.errors)
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
        return f"<p>{_md(self.verdict())}</p>" + table

    def plot(self) -> Figure:
        return plot_class(self)


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


# --- plots --------------------------------------------------------------------------------------------------------


def plot_class(view: ClassView) -> Figure:
    """Everyone's attempts on one time axis (one band per attendee), and attempts per success per attendee."""
    import matplotlib.pyplot as plt

    from statelab.plots import OUTCOME_COLORS

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * max(3, len(view.runs)) + 2.2),
                                      gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    plt.close(fig)
    origin = min((r.started_at for r in view.runs), default=0.0)
    names = {code: name for name, code in OUTCOME_CODES.items()}
    for row, run in enumerate(view.runs):
        writers = max(1, run.writers)
        for code in ("o", "c", "e", "u"):
            pts = [a for a in run.attempts if a[5] == code]
            if pts:
                ys = [row + 0.8 * (a[0] + 0.5) / writers - 0.4 for a in pts]
                xs = [run.started_at - origin + a[4] for a in pts]
                left.scatter(xs, ys, s=6, color=OUTCOME_COLORS[names[code]],
                             label=names[code] if row == 0 else None)
    left.set_yticks(range(len(view.runs)), [r.attendee for r in view.runs])
    left.invert_yaxis()
    left.set_xlabel("seconds since the first attendee started")
    left.set_title(f"Class {view.class_id}: every attempt, by attendee (writers stacked)")
    if view.runs:
        left.legend(frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    top = max((max(r.attempts_per_success(), default=1) for r in view.runs), default=1)
    xs = list(range(1, top + 1))
    width = 0.8 / max(1, len(view.runs))
    for i, run in enumerate(view.runs):
        counts = Counter(run.attempts_per_success())
        right.bar([x + (i - (len(view.runs) - 1) / 2) * width for x in xs], [counts.get(x, 0) for x in xs],
                  width=width, label=run.attendee)
    right.set_xlabel("attempts needed by a successful increment")
    right.set_ylabel("increments")
    right.set_title(f"{view.acknowledged} increments, counter {view.counter}")
    if 1 < len(view.runs) <= 12:
        right.legend(frameon=False, fontsize="small")
    return fig
