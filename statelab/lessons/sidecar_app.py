"""An app beside its sidecar (lesson 07): ``statelab run`` as ``dapr run``, the component file, and resiliency.

- ``app_source()`` shows ``apps/order_processor.py``, ``yaml_file(path)`` a Component or Resiliency file;
  ``app_resources(lab)`` writes a resources folder whose component points at the lesson's store (``Resources``).
- ``run_app(lab, resources)`` runs ``apps/order_processor.py`` under ``statelab run --resources-path …`` in a
  subprocess, as a learner would in a terminal, and keeps its output and exit code (``AppRun``).
- ``key_prefixes(lab)`` starts one more sidecar with one component per ``keyPrefix`` mode on the lesson's store and
  reads the key each one stored (``PrefixTable``).
- ``measure_resiliency()`` starts a real daprd with ``apps/resources/resiliency.yaml`` on a Redis of its own and
  measures what the policies do with a stale ETag, a Redis outage and a run of 409s (``ResiliencyFindings``).

Sidecars are reached over HTTP only; stacks come from ``statelab.local``; stores are read around the sidecar the way
``Session.peek`` does.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml

from statelab.display import Source, html_table, show_file
from statelab.errors import StackError
from statelab.local import Stack, components_source, find_daprd, on_free_ports
from statelab.local.paths import REPO
from statelab.writers import STOP_GRACE_SECONDS

if TYPE_CHECKING:
    from statelab.session import Session

APP = REPO / "apps" / "order_processor.py"
RESILIENCY = REPO / "apps" / "resources" / "resiliency.yaml"
PREFIX_MODES = ("appid", "name", "none", "shop")  # keyPrefix values shown side by side; "shop" stands for any other
PREFIX_KEY = "prefix-demo"
EXTRA_FIRST_PORT = 3700  # the extra sidecars of this lesson: first free block from here (the lesson's stack: 3500)
RECOVERED = re.compile(r"Recovered processing operation component\[(?P<name>[^\]]+)\] output after (?P<n>\d+) attempts")


# --- files ---------------------------------------------------------------------------------------------------------


def yaml_file(path: str | os.PathLike) -> Source:
    """A YAML file to read in the notebook; a relative ``path`` is taken from the checkout's root."""
    return show_file(path, "yaml")


def app_source(app: Path = APP) -> Source:
    """The app's source, shown like ``statelab.show_code``."""
    return show_file(app, "python")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@dataclass
class Resources:
    """A resources folder (``--resources-path``) and the files in it; ``folder`` None with a ``note`` when the
    lesson's sidecar is not one statelab started (its store is not ours to point at)."""

    folder: Path | None
    files: list[Source] = field(default_factory=list)
    note: str = ""

    def __repr__(self) -> str:
        return self.note or "\n\n".join(repr(f) for f in self.files)

    def _repr_html_(self) -> str:
        if self.folder is None:
            return f"<p>{html.escape(self.note)}</p>"
        return "".join(f._repr_html_() for f in self.files)


def write_resources(folder: Path, docs: dict[str, dict[str, Any]]) -> Resources:
    """Write each document to ``folder/<file name>`` (only this user may read them: a component may hold a
    password) and return the folder with what it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, doc in docs.items():
        text = yaml.safe_dump(doc, sort_keys=False)
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        files.append(Source(name, _shown(folder / name), 1, text.rstrip(), "yaml"))
    return Resources(folder, files)


def _lesson_folder(lab: Session, name: str) -> Path:
    stack = lab.local_stack()
    base = Path(stack.run_dir) if stack.run_dir is not None else Path(tempfile.mkdtemp(prefix="statelab-07-"))
    return base / "lesson07" / name


def app_resources(lab: Session) -> Resources:
    """A resources folder for the app's sidecar: the lesson store's profile, pointed at the lesson's own store (its
    Redis, or its SQLite file), so both sidecars share one store as two ``dapr run``s on ``dapr init``'s Redis do."""
    if not lab.local:
        return Resources(None, note="This sidecar was not started by statelab, so its store is not ours to point a "
                                    "second sidecar at: run the app yourself with `dapr run … -- python "
                                    "apps/order_processor.py`.")
    return write_resources(_lesson_folder(lab, "app"), {"statestore.yaml": lab.local_stack().store_component()})


# --- the app under statelab run ------------------------------------------------------------------------------------


@dataclass
class AppRun:
    """One ``statelab run``: the command as typed in a terminal, what it printed (stdout and stderr in order) and
    its exit code."""

    command: list[str]
    output: str
    exit_code: int | None  # None: not run (``note`` says why)
    seconds: float = 0.0
    note: str = ""

    def text(self) -> str:
        if self.exit_code is None:
            return self.note
        return (f"$ {shlex.join(self.command)}\n{self.output.rstrip()}\n"
                f"(exit code {self.exit_code}, {self.seconds:.1f} s)")

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre style='white-space:pre-wrap'>{html.escape(self.text())}</pre>"


def run_app(lab: Session, resources: Resources, *, app: Path = APP, timeout: float = 120) -> AppRun:
    """``statelab run --resources-path <folder> -- python <app>`` from the checkout's root, with the lesson's app id
    and runtime; the app's sidecar stops when it exits."""
    if resources.folder is None:
        return AppRun([], "", None, note=resources.note)
    app_id = lab.local_stack().app_id
    options = ["--app-id", app_id, *(["--runtime", lab.runtime] if lab.runtime != "statelab" else []),
               "--resources-path", _shown(resources.folder)]
    shown = ["statelab", "run", *options, "--", "python", _shown(app)]
    argv = [sys.executable, "-m", "statelab", "run", *options, "--", sys.executable, str(app)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAPR_")}  # statelab run sets what the app needs
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return AppRun(shown, done.stdout, done.returncode, time.monotonic() - started)


# --- keyPrefix -----------------------------------------------------------------------------------------------------


@dataclass
class PrefixTable:
    """What each ``keyPrefix`` mode made of one key, read in the store itself."""

    key: str
    rows: list[dict[str, Any]]
    note: str = ""

    def stored(self) -> dict[str, str | None]:
        return {row["keyPrefix"]: row["stored key"] for row in self.rows}

    def metrics(self) -> list[tuple[str, Any, str]]:
        return [("prefix_stored_keys", self.stored(), f"keyPrefix mode: the key {self.key!r} became (None: not readable)")]

    def __repr__(self) -> str:
        lines = [f"{r['keyPrefix']:>8}  {r['component']:<14} {r['stored key']}" for r in self.rows]
        return "\n".join([*lines, self.note] if self.note else lines)

    def _repr_html_(self) -> str:
        table = html_table(["keyPrefix", "component", f"stored key for {self.key!r}"],
                           [[r["keyPrefix"], r["component"], r["stored key"]] for r in self.rows])
        return table + (f"<p>{html.escape(self.note)}</p>" if self.note else "")


def key_prefixes(lab: Session, modes: Iterable[str] = PREFIX_MODES, *, key: str = PREFIX_KEY) -> PrefixTable:
    """One more sidecar (the lesson's app id and runtime) with a component ``prefix-<mode>`` per ``keyPrefix`` mode,
    all on the lesson's store: save ``key`` through each, then find the key each one stored."""
    modes = list(modes)
    if not lab.local:
        return PrefixTable(key, [], note="This needs the local stack: a real sidecar's store is not ours to open.")
    stack = lab.local_stack()
    docs = {f"prefix-{m}.yaml": stack.store_component(f"prefix-{m}", keyPrefix=m) for m in modes}
    folder = write_resources(_lesson_folder(lab, "prefixes"), docs).folder
    extra = on_free_ports(Stack(store=stack.store, sidecars=1, app_id=stack.app_id, runtime=stack.runtime,
                                http_port=EXTRA_FIRST_PORT, grpc_port=EXTRA_FIRST_PORT + 1,
                                internal_grpc_port=EXTRA_FIRST_PORT + 2, resources_path=folder, start_store=False),
                          step=10).start()
    try:
        with requests.Session() as http:
            for mode in modes:
                http.post(f"{extra.endpoint}/v1.0/state/prefix-{mode}",
                          json=[{"key": key, "value": {"via": f"prefix-{mode}"}}]).raise_for_status()
    finally:
        extra.stop()
    found = _stored_keys(lab, key)
    rows = [{"keyPrefix": m, "component": f"prefix-{m}", "stored key": found.get(f"prefix-{m}")} for m in modes]
    note = "" if found else ("The in-memory store lives inside each sidecar: there is no store to read from here, "
                             "and the extra sidecar's data went with it.")
    return PrefixTable(key, rows, note)


def _stored_keys(lab: Session, key: str) -> dict[str, str]:
    """{component that saved it: stored key} for every stored key ending in ``key`` (the value names the component)."""
    stack = lab.local_stack()
    values: dict[str, str] = {}
    if stack.store == "redis":
        r = lab.redis(0)
        for raw in r.scan_iter(match=f"*{key}"):
            values[_text(raw)] = _text(r.hget(raw, "data") or b"")
    elif stack.store == "sqlite" and stack.run_dir is not None:
        with closing(sqlite3.connect(Path(stack.run_dir) / "state.db")) as db:
            values = {k: v for k, v in db.execute("SELECT key, value FROM state WHERE key LIKE ?", (f"%{key}",))}
    out = {}
    for stored, value in values.items():
        try:
            out[json.loads(value)["via"]] = stored
        except (ValueError, TypeError, KeyError):
            continue  # a value another writer left under the same key
    return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# --- resiliency on a real daprd ------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One situation: what was sent through which component, and what came back."""

    situation: str
    component: str
    statuses: list[int]
    attempts: int | None  # requests the store received (Redis commands), or daprd's own count; None: not counted
    seconds: float | None  # None: not timed
    answer: str = ""  # the error message, shortened

    def row(self) -> list[object]:
        statuses = " ".join(str(s) for s in self.statuses)
        attempts = "" if self.attempts is None else str(self.attempts)
        seconds = "" if self.seconds is None else f"{self.seconds:.2f} s"
        return [self.situation, self.component, statuses, attempts, seconds, self.answer]


@dataclass
class ResiliencyFindings:
    """What daprd did under ``apps/resources/resiliency.yaml``; ``measured`` False (and a ``note``) without a daprd."""

    measured: bool
    probes: list[Probe] = field(default_factory=list)
    max_retries: int = 0
    outage_seconds: float = 0.0
    breaker_closed_after_s: float | None = None
    value_after_stale_writes: Any = None
    note: str = ""

    def probe(self, situation: str) -> Probe:
        return next(p for p in self.probes if p.situation == situation)

    def _seconds(self, situation: str) -> float | None:
        seconds = self.probe(situation).seconds
        return None if seconds is None else round(seconds, 2)

    def metrics(self) -> list[tuple[str, Any, str]]:
        if not self.measured:
            return [("resiliency_measured", False, "no daprd binary here: skipped")]

        def pair(situation: str) -> list[Any]:
            p = self.probe(situation)
            return [p.statuses[-1], p.attempts]

        return [
            ("resiliency_measured", True, "measured on a real daprd"),
            ("res_max_retries", self.max_retries, "the retry policy's maxRetries"),
            ("res_stale_save", pair("stale ETag: save"), "[status, requests Redis received]: not retried"),
            ("res_stale_delete", pair("stale ETag: delete"), "[status, requests Redis received]: 1 + maxRetries"),
            ("res_stale_transaction", pair("stale ETag: transaction"), "[status, MULTI/EXEC blocks Redis ran]"),
            ("res_value_after_stale_writes", self.value_after_stale_writes, "no stale write was applied"),
            ("res_outage_without_policy", pair("Redis down: save"), "[status, attempts]: no policy"),
            ("res_outage_with_policy", pair("Redis down: save, with retries"), "[status, attempts in daprd's log]"),
            ("res_outage_s", {"outage": self.outage_seconds, "without_policy": self._seconds("Redis down: save"),
                              "with_policy": self._seconds("Redis down: save, with retries")},
             "seconds Redis was down, and until each save answered"),
            ("res_breaker_statuses", self.probe("four stale saves").statuses + self.probe("then other calls").statuses,
             "four stale saves, then a save of another key and a read"),
            ("res_breaker_open_message", self.probe("then other calls").answer, "what an open breaker answers"),
            ("res_breaker_closed_after_s", self.breaker_closed_after_s, "until a save passed again (breaker timeout 2s)"),
        ]

    def __repr__(self) -> str:
        if not self.measured:
            return self.note
        return "\n".join(" | ".join(str(c) for c in p.row()) for p in self.probes)

    def _repr_html_(self) -> str:
        if not self.measured:
            return f"<p>{html.escape(self.note)}</p>"
        table = html_table(["situation", "component", "status", "attempts", "time", "daprd said"],
                           [p.row() for p in self.probes])
        return table + (f"<p>{html.escape(self.note)}</p>" if self.note else "")


def resiliency_resources(folder: Path) -> Resources:
    """``apps/resources/resiliency.yaml`` and the three Redis components it is measured on: ``statestore`` (retries
    and a timeout), ``breaker-store`` (a circuit breaker) and ``unguarded`` (no policy)."""
    profile = next(d for d in yaml.safe_load_all((components_source() / "redis" / "statestore.yaml").read_text()) if d)
    docs = {}
    for name in ("statestore", "breaker-store", "unguarded"):
        doc = json.loads(json.dumps(profile))  # a deep copy
        doc["metadata"]["name"] = name
        docs[f"{name}.yaml"] = doc
    docs["resiliency.yaml"] = next(d for d in yaml.safe_load_all(RESILIENCY.read_text()) if d)
    return write_resources(folder, docs)


def measure_resiliency(*, outage_seconds: float = 3.0, first_port: int = EXTRA_FIRST_PORT + 100) -> ResiliencyFindings:
    """Start a daprd (never built here: one must exist, see ``find_daprd(build=False)``) with the policies on a Redis
    of its own, run the situations, stop it. Attempts are Redis's own command counts (``INFO commandstats``) or,
    while Redis is down, daprd's log line ``Recovered processing operation … after N attempts``."""
    try:
        daprd = find_daprd(build=False)
    except StackError as exc:
        return ResiliencyFindings(False, note=f"No daprd here ({exc}), so this measurement is skipped: statelab's "
                                             "sidecar applies no resiliency policy. The conclusions below were measured "
                                             "on daprd 1.18.3 (docs/dapr-behaviour.md §17).")
    with tempfile.TemporaryDirectory(prefix="statelab-07-") as tmp:
        folder = resiliency_resources(Path(tmp)).folder
        stack = on_free_ports(Stack(store="redis", replicas=0, sidecars=1, runtime="daprd", daprd=daprd,
                                    resources_path=folder, http_port=first_port, grpc_port=first_port + 1,
                                    internal_grpc_port=first_port + 2, redis_port=first_port + 5), step=10).start()
    try:
        return _probe_all(stack, outage_seconds)
    finally:
        stack.stop()


def _probe_all(stack: Stack, outage_seconds: float) -> ResiliencyFindings:
    import redis

    with closing(redis.Redis.from_url(stack.redis_url(), socket_timeout=5)) as r, requests.Session() as http:
        return _probes(stack, outage_seconds, r, http)


def _probes(stack: Stack, outage_seconds: float, r: Any, http: requests.Session) -> ResiliencyFindings:
    policy = next(d for d in yaml.safe_load_all(RESILIENCY.read_text()) if d)
    retries = int(policy["spec"]["policies"]["retries"]["storeRetry"]["maxRetries"])
    findings = ResiliencyFindings(True, max_retries=retries, outage_seconds=outage_seconds)
    base = f"{stack.endpoint}/v1.0/state"

    def counted(situation: str, component: str, send: Callable[[], requests.Response], *commands: str) -> Probe:
        before = _command_calls(r)
        started = time.monotonic()
        resp = send()
        seconds = time.monotonic() - started
        after = _command_calls(r)
        attempts = sum(after.get(c, 0) - before.get(c, 0) for c in commands)
        probe = Probe(situation, component, [resp.status_code], attempts, seconds, _message(resp))
        findings.probes.append(probe)
        return probe

    # 1. A stale ETag through the retry policy: the same request, sent how many times?
    key = f"order-{uuid.uuid4().hex[:8]}"
    for value in ("v1", "v2"):
        http.post(f"{base}/statestore", json=[{"key": key, "value": value}]).raise_for_status()
    counted("stale ETag: save", "statestore", lambda: http.post(
        f"{base}/statestore", json=[{"key": key, "value": "stale", "etag": "1"}]), "eval", "evalsha")
    counted("stale ETag: delete", "statestore", lambda: http.delete(
        f"{base}/statestore/{key}", headers={"If-Match": "1"}), "eval", "evalsha")
    counted("stale ETag: transaction", "statestore", lambda: http.post(f"{base}/statestore/transaction", json={
        "operations": [{"operation": "upsert", "request": {"key": key, "value": "stale", "etag": "1"}}]}), "exec")
    findings.value_after_stale_writes = http.get(f"{base}/statestore/{key}").json()

    # 2. Redis down for a while: one save through a component without a policy, one through the retry policy.
    outage = [_timed_save(http, f"{base}/unguarded", "Redis down: save", "unguarded"),
              _timed_save(http, f"{base}/statestore", "Redis down: save, with retries", "statestore")]
    stack.stop_redis_primary()
    threads = [threading.Thread(target=probe, daemon=True) for probe in outage]
    try:
        for thread in threads:
            thread.start()
        time.sleep(outage_seconds)  # the outage itself: Redis refuses connections this long
    finally:  # interrupted too: Redis comes back, and the two saves end with it, before the cell returns
        stack.start_redis_primary()
        for thread in threads:
            thread.join(STOP_GRACE_SECONDS)
    log = (Path(stack.run_dir or ".") / "sidecar-0.log").read_text(errors="replace")
    recovered = [int(m["n"]) for m in RECOVERED.finditer(log) if m["name"] == "statestore"]
    for probe in outage:
        result = probe.result
        if result.component == "statestore" and result.statuses == [204]:
            result.attempts = recovered[-1] if recovered else None
        findings.probes.append(result)

    # 3. A circuit breaker counts 409s as failures: three stale saves open it, and then it refuses everything.
    key = f"order-{uuid.uuid4().hex[:8]}"
    http.post(f"{base}/breaker-store", json=[{"key": key, "value": "v1"}]).raise_for_status()
    stale = [http.post(f"{base}/breaker-store", json=[{"key": key, "value": "stale", "etag": "99"}]) for _ in range(4)]
    findings.probes.append(Probe("four stale saves", "breaker-store", [s.status_code for s in stale], None, None,
                                 _message(stale[-1])))
    opened = time.monotonic()
    others = [http.post(f"{base}/breaker-store", json=[{"key": f"{key}-other", "value": 1}]),
              http.get(f"{base}/breaker-store/{key}")]
    findings.probes.append(Probe("then other calls", "breaker-store", [o.status_code for o in others], None, None,
                                 _message(others[-1])))
    while time.monotonic() - opened < 30:
        if http.post(f"{base}/breaker-store", json=[{"key": f"{key}-other", "value": 1}]).status_code == 204:
            findings.breaker_closed_after_s = round(time.monotonic() - opened, 1)
            findings.note = (f"Other calls: a save of another key, then a read. {findings.breaker_closed_after_s:g} s after "
                             "it opened, the breaker let a save through again (its timeout is 2s).")
            break
        time.sleep(0.1)
    http.close()
    r.close()
    return findings


class _timed_save:  # noqa: N801 - used like a function: the thread's target, with its result kept
    """A save sent from a thread while Redis is down; ``result`` holds what came back, and when."""

    def __init__(self, http: requests.Session, url: str, situation: str, component: str) -> None:
        self.http, self.url = http, url
        self.result = Probe(situation, component, [], None, 0.0)

    def __call__(self) -> None:
        started = time.monotonic()
        resp = self.http.post(self.url, json=[{"key": f"order-{uuid.uuid4().hex[:8]}", "value": "while Redis was down"}],
                              timeout=60)
        self.result.seconds = time.monotonic() - started
        self.result.statuses = [resp.status_code]
        self.result.answer = _message(resp)


def _command_calls(r: Any) -> dict[str, int]:
    """Redis's count of calls per command (``INFO commandstats``), lower-case names."""
    return {name.removeprefix("cmdstat_").lower(): int(stats["calls"]) for name, stats in r.info("commandstats").items()}


def _message(resp: requests.Response) -> str:
    """daprd's error message, cut after its first clause (``possible etag mismatch``, ``circuit breaker is open``)."""
    if resp.status_code < 300:
        return ""
    try:
        message = str(resp.json().get("message", ""))
    except ValueError:
        return resp.text[:80]
    for phrase in ("possible etag mismatch", "circuit breaker is open", "connection refused"):
        if phrase in message:
            return phrase
    last = message.rsplit(": ", 1)[-1]  # the innermost cause, e.g. the Lua script's "failed to set key myapp||k"
    return last if len(last) <= 60 else last[:57] + "…"


# --- the exercise: the retry a policy cannot do --------------------------------------------------------------------


@dataclass
class ExerciseResult:
    """The check of ``add_item``: ✓ or ✗, what the learner's code did, and on ✗ what to change."""

    passed: bool
    did: list[str]
    fix: str = ""
    not_written: bool = False

    @property
    def headline(self) -> str:
        if self.not_written:
            return "✗ add_item is not written yet"
        return "✓ add_item does it right" if self.passed else "✗ add_item needs a change"

    def __repr__(self) -> str:
        lines = [self.headline, *(f"  - {s}" for s in self.did)]
        return "\n".join([*lines, f"  What to change: {self.fix}"] if self.fix and not self.passed else lines)

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        fix = f"<p style='margin:4px 0'><b>What to change:</b> {_inline(self.fix)}</p>" if self.fix and not self.passed else ""
        items = "".join(f"<li>{_inline(s)}</li>" for s in self.did)
        return (f"<div style='border-left:4px solid {color};padding:2px 10px;overflow-wrap:anywhere'>"
                f"<p style='margin:4px 0;color:{color}'><b>{html.escape(self.headline)}</b></p>"
                f"<ul style='margin:2px 0'>{items}</ul>{fix}</div>")


def _inline(text: str) -> str:
    """A sentence as HTML: escaped, with `backticked` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


COMPETITOR_ITEM = "tea (added by another instance)"


class _Interloper:
    """An HTTP proxy in front of the sidecar that lets another writer in once: just before the first save of ``key``
    passes, it adds ``COMPETITOR_ITEM`` to the cart itself, so the learner's save carries a stale ETag."""

    def __init__(self, sidecar: str, store: str, key: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.sidecar, self.store, self.key = sidecar, store, key
        self.saves_seen = 0
        self.save_statuses: list[int] = []
        interloper = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                interloper.before(self.command, self.path, body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(self.command, interloper.sidecar + self.path, data=body, headers=headers,
                                        timeout=30)
                if self.command == "POST" and self.path.rstrip("/").endswith(f"/state/{interloper.store}"):
                    interloper.save_statuses.append(resp.status_code)
                self.send_response(resp.status_code)
                for name, value in resp.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 - the names http.server calls

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1.0/state/{self.store}"

    def before(self, method: str, path: str, body: bytes) -> None:
        if method not in ("POST", "PUT") or not path.rstrip("/").endswith(f"/state/{self.store}"):
            return
        try:
            keys = {item.get("key") for item in json.loads(body or b"[]")}
        except (ValueError, AttributeError):
            return
        if self.key in keys:
            self.saves_seen += 1
            if self.saves_seen == 1:  # another instance of the app gets its write in first
                url = f"{self.sidecar}/v1.0/state/{self.store}"
                cart = requests.get(f"{url}/{self.key}", timeout=30).json()
                cart["items"].append(COMPETITOR_ITEM)
                requests.post(url, json=[{"key": self.key, "value": cart}], timeout=30).raise_for_status()

    def __enter__(self) -> _Interloper:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_add_item(add_item: Callable[[str, str, str], object], lab: Session, metrics: Any = None) -> ExerciseResult:
    """Run the learner's ``add_item(url, key, item)`` on a fresh cart while another writer gets in between its read
    and its save, then once more alone; the cart must hold every item exactly once. Records ``exercise_add_item``."""
    key = f"cart-{uuid.uuid4().hex[:8]}"
    url = f"{lab.endpoint}/v1.0/state/{lab.store_name}"
    requests.post(url, json=[{"key": key, "value": {"items": ["coffee"]}}], timeout=30).raise_for_status()
    try:
        with _Interloper(lab.endpoint, lab.store_name, key) as proxy:
            add_item(proxy.url, key, "cake")
            add_item(url, key, "juice")
        result = _judge(requests.get(f"{url}/{key}", timeout=30).json()["items"], proxy.save_statuses)
    except NotImplementedError:
        result = ExerciseResult(False, ["`add_item` still raises `NotImplementedError`: the stub is waiting for "
                                        "your code."], "Replace the `raise NotImplementedError` line, run that cell, "
                                "then this one. The collapsed cell under yours (the ⋯ bar) holds an answer.",
                                not_written=True)
    except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything; the notebook must go on
        result = ExerciseResult(False, [f"`add_item` raised {type(exc).__name__}: {str(exc)[:200]}"],
                                "Read the error, fix your function and run both cells again.")
    if metrics is not None:
        metrics.record("exercise_add_item", result.passed,
                       note="the lesson's exercise: the learner's add_item, checked against the sidecar")
    return result


def _judge(items: list[str], save_statuses: list[int]) -> ExerciseResult:
    did = [f"The cart ended as {items}."]
    if save_statuses:
        did.append(f"Your saves through the busy sidecar answered {', '.join(map(str, save_statuses))}.")
    counts = {item: items.count(item) for item in ("coffee", COMPETITOR_ITEM, "cake", "juice")}
    if counts[COMPETITOR_ITEM] == 0:
        return ExerciseResult(False, did, "The other instance's item is gone: your save overwrote it. Send the ETag you "
                                          "read with the save, with `options: {\"concurrency\": \"first-write\"}` (on "
                                          "Redis, last-write ignores the ETag).")
    if counts["cake"] == 0:
        return ExerciseResult(False, did, "Your item never arrived: after a 409, read the cart again, add the item to "
                                          "what you read, and save with the new ETag.")
    if any(n != 1 for n in counts.values()) or len(items) != 4:
        return ExerciseResult(False, did, "Every item must be in the cart exactly once: add it to the cart you just "
                                          "read, not to a copy from an earlier attempt.")
    if 409 in save_statuses:
        did.append("Your save met a 409, and your loop read again and saved with the new ETag: nothing was lost.")
    return ExerciseResult(True, did)
