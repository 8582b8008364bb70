"""The Dapr docs page "How-To: Build a stateful service", run as written, with a fixed version beside each snippet.

Each Python snippet of the page is kept below as text and executed for real against the session's sidecar:
``exec`` in a fresh namespace in which ``http://localhost:3500`` points at the session's endpoint and
``import requests`` gives a recording stand-in, so every HTTP exchange (method, URL, status, body) is kept.
Bugs mask each other (a wrong store name hides the double-encoded body, which hides the wrong success
check), so a snippet runs in *stages*: first as written, then with one more bug fixed per stage, each
fix a visible text change. Exceptions the snippets raise (``KeyError`` from ``str.format``) come back as
data; the endless retry loop is stopped by a deadline inside the recording ``requests`` (no thread).
Then the corrected snippet runs the same way. ``run(name, lab)`` returns all of it as a ``SnippetResult``.

The page's text, our fixes and the stages are in ``statelab.lessons.howto_page`` (re-exported here, as the
lessons use them: ``howto.SNIPPETS``, ``howto.Rewrite``).
"""

from __future__ import annotations

import builtins
import html
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from statelab.lessons.howto_page import ATTRIBUTION, SNIPPETS, Rewrite, Snippet, Stage

log = logging.getLogger(__name__)

PAGE_ENDPOINT = "http://localhost:3500"  # what the page's snippets call; rewritten to the session's endpoint
SHOWN_CALLS = 6  # calls listed per run in the HTML view; the rest are counted

# --- what a run recorded ----------------------------------------------------------------------------------------


@dataclass
class SnippetCall:
    """One HTTP exchange a snippet made, as it went over the wire."""

    method: str
    url: str
    request_headers: dict[str, str]  # the headers the snippet passed (not requests' defaults)
    request_body: str
    status: int
    error_code: str  # Dapr's errorCode for an error answer, else ""
    response_headers: dict[str, str]  # ETag, Content-Type
    response_body: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    @property
    def store(self) -> str:
        parts = self.path.split("/")
        return unquote(parts[3]) if len(parts) > 3 else ""

    @property
    def key(self) -> str:
        parts = self.path.split("/")
        return unquote(parts[4]) if len(parts) > 4 else ""

    @property
    def value(self) -> Any:
        """The answer's JSON body decoded (the value of a 200 GET), else None."""
        try:
            return json.loads(self.response_body) if self.response_body else None
        except ValueError:
            return None

    def line(self) -> str:
        """``POST /v1.0/state/statestore → 400 ERR_MALFORMED_REQUEST`` plus what was sent beside the body."""
        target = urlsplit(self.url)
        where = target.path + (f"?{target.query}" if target.query else "")
        sent = "".join(f" [{k}: {v}]" for k, v in self.request_headers.items())
        body = f" body {_clip(self.request_body, 90)}" if self.request_body else ""
        answer = f"{self.status} {self.error_code}".strip()
        if self.status == 200 and self.response_body:
            answer += f" {_clip(self.response_body, 40)} ETag {self.response_headers.get('ETag', '-')}"
        return f"{self.method} {where}{sent}{body} → {answer}"


@dataclass
class SnippetFinding:
    code: str
    sentence: str


@dataclass
class Run:
    """One execution of a snippet's text: what it sent, what came back, what it raised, what the store holds."""

    label: str
    source: str  # the text that ran, after the endpoint and the stage's fixes were applied
    fixes: list[Rewrite]
    given: dict[str, str | None]
    calls: list[SnippetCall]
    printed: list[str]
    exception: str | None  # e.g. "KeyError: ' \"key\"'"
    exception_type: str | None
    exception_line: str | None  # the snippet line that raised
    stopped: bool  # still running at the deadline and stopped there
    timeout: float
    seconds: float
    before: dict[str, Any]  # watched key -> value (None = absent)
    after: dict[str, Any]
    redis_waits: int | None  # WAIT commands Redis ran meanwhile (local Redis stack only)
    findings: list[SnippetFinding] = field(default_factory=list)
    new_fixes: list[Rewrite] = field(default_factory=list)  # the fixes this stage adds to the previous one

    @property
    def attempts(self) -> int:
        """Save requests that reached the sidecar (for the retry loop: its attempts)."""
        return sum(1 for c in self.calls if c.method == "POST")

    @property
    def statuses(self) -> list[str]:
        return [f"{c.method} {c.status}" for c in self.calls]

    @property
    def diagnosis(self) -> str:
        return self.findings[0].sentence if self.findings else ""

    @property
    def outcome(self) -> str:
        if self.stopped:
            return f"still retrying after {self.attempts} attempts; stopped at the {self.timeout:g} s timeout"
        if self.exception:
            return f"raised {self.exception}"
        if any(f.code == "unchecked" for f in self.findings):
            return "ran to the end without an error, although the sidecar refused a request"
        return "ran to the end"


@dataclass
class SnippetResult:
    """A docs snippet's runs (as written, then one more fix per stage) and the fixed version's run."""

    name: str
    title: str
    intent: str
    docs: str
    stages: list[Run]
    fixed_source: str
    fixed: Run
    fixed_expect: tuple[str, ...]
    fixed_after: dict[str, Any]
    headline: int

    @property
    def diagnosis(self) -> str:
        """The one sentence that is this snippet's own lesson."""
        return self.stages[self.headline].diagnosis

    @property
    def fixed_ok(self) -> bool:
        """The fixed snippet made exactly the expected calls, raised nothing, and left the store as expected."""
        run = self.fixed
        after = {k: run.after.get(k) for k in self.fixed_after}
        return (
            not run.exception and not run.stopped and tuple(run.statuses) == self.fixed_expect
            and after == self.fixed_after
        )

    def stage(self, label: str) -> Run:
        for run in self.stages:
            if run.label == label:
                return run
        raise KeyError(label)

    def __repr__(self) -> str:
        lines = [f"{self.title}: {self.intent}"]
        for i, run in enumerate(self.stages, 1):
            lines.append(f"  {i}. {run.label}: {' | '.join(run.statuses[:4]) or 'no request'} → {run.outcome}")
        lines.append(f"  diagnosis: {self.diagnosis}")
        verdict = "as intended" if self.fixed_ok else "NOT as intended"
        lines.append(f"  fixed: {' | '.join(self.fixed.statuses)} → {self.fixed.outcome} ({verdict})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        fixed_note = (
            "<p style='color:#1a7f37'><b>The fixed snippet did what the page intended.</b></p>" if self.fixed_ok
            else f"<p style='color:#cf222e'><b>The fixed snippet did not do what was intended</b> "
            f"(expected {html.escape(' | '.join(self.fixed_expect))}).</p>"
        )
        head = (
            f"<h4 style='margin:0.3em 0'>{html.escape(self.title)}</h4>"
            f"<p><b>The docs intend:</b> {html.escape(self.intent)}<br>"
            f"<b>Diagnosis:</b> {_md_code(self.diagnosis)}</p>"
        )
        cell = "style='vertical-align:top;text-align:left;padding:4px 8px;border:1px solid #ddd'"
        th = "style='text-align:left;padding:4px 8px;border:1px solid #ddd;background:#f6f8fa'"
        rows = (
            f"<tr><th {th}>the docs' snippet</th><th {th}>what happened</th></tr>"
            f"<tr><td {cell} width='45%'>{_pre(self.docs)}<small>{html.escape(ATTRIBUTION)}</small></td>"
            f"<td {cell}>{''.join(_run_html(i, run) for i, run in enumerate(self.stages, 1))}</td></tr>"
            f"<tr><th {th}>fixed snippet</th><th {th}>what happened</th></tr>"
            f"<tr><td {cell}>{_pre(self.fixed_source)}</td><td {cell}>{_run_html(0, self.fixed)}{fixed_note}</td></tr>"
        )
        return f"<div>{head}<table style='border-collapse:collapse;width:100%'>{rows}</table></div>"


# --- running a snippet --------------------------------------------------------------------------------------------


class _Stopped(BaseException):
    """Raised by the recording ``requests`` once the deadline passed. A BaseException, so ``except Exception``
    in a snippet lets it through; the page's bare ``except:`` swallows it, but the next call raises again."""


class _Wire:
    """What ``import requests`` gives a snippet: the same calls, made with a real session and recorded."""

    def __init__(self, headers: dict[str, str], deadline: float) -> None:
        self._session = requests.Session()
        self._session.headers.update(headers)  # the session's dapr-api-token, if any (never recorded)
        self._deadline = deadline
        self.calls: list[SnippetCall] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        if time.monotonic() > self._deadline:
            raise _Stopped()
        kwargs.setdefault("timeout", 10)
        resp = self._session.request(method, url, **kwargs)
        self.calls.append(_record(method.upper(), resp, kwargs.get("headers") or {}))
        return resp

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, data: Any = None, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url: str, data: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PUT", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", url, **kwargs)

    def __getattr__(self, name: str) -> Any:  # requests.exceptions, requests.codes, ...
        return getattr(requests, name)

    def close(self) -> None:
        self._session.close()


def _record(method: str, resp: requests.Response, sent_headers: dict) -> SnippetCall:
    body = resp.request.body or b""
    request_body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    error_code = ""
    if resp.status_code >= 400:
        try:
            error_code = str(resp.json().get("errorCode", ""))
        except (ValueError, AttributeError):
            pass
    # Header names are case-insensitive on the wire (daprd writes Go's canonical "Etag"); record one spelling.
    kept = {name: resp.headers[name] for name in ("ETag", "Content-Type") if name in resp.headers}
    return SnippetCall(
        method, resp.request.url or "", {str(k): str(v) for k, v in sent_headers.items()}, request_body,
        resp.status_code, error_code, kept, resp.text,
    )


def _namespace(wire: _Wire, printed: list[str]) -> dict[str, Any]:
    """A fresh module namespace whose ``import requests`` is the recorder and whose ``print`` is captured."""

    def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if name == "requests" and level == 0:
            return wire
        return builtins.__import__(name, globals, locals, fromlist, level)

    def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
        if file is not None:
            builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
        else:
            printed.append((" " if sep is None else sep).join(map(str, args)))

    names = dict(vars(builtins))
    names.update(__import__=_import, print=_print)
    return {"__name__": "__snippet__", "__builtins__": names}


def execute(
    source: str,
    lab: Any,
    *,
    label: str = "run",
    fixes: tuple[Rewrite, ...] = (),
    given: tuple[tuple[str, str | None], ...] = (),
    watch: tuple[str, ...] = (),
    timeout: float = 2.0,
    diagnosed: bool = True,
) -> Run:
    """Run ``source`` (after ``fixes``) against ``lab``'s sidecar; never raises for what the snippet does.

    ``given`` sets the store up first through the session's client; ``watch`` keys are read before and after.
    A run still going after ``timeout`` seconds is stopped at its next HTTP call and reported as such (a loop
    that makes no HTTP call, or swallows the stop in nested bare ``except:`` blocks, is beyond this bound).
    ``diagnosed=False`` (for our fixed snippets) skips the findings: ``SnippetResult.fixed_ok`` judges those.
    """
    for key, value in given:
        _put(lab, key, value)
    text = source
    for fix in fixes:
        text = fix.apply(text)
    text = text.replace(PAGE_ENDPOINT, lab.endpoint)
    before = {key: _read(lab, key) for key in watch}
    waits_before = _redis_waits(lab)
    printed: list[str] = []
    started = time.monotonic()
    wire = _Wire(dict(lab.client.headers), started + timeout)
    filename = f"<snippet: {label}>"
    exception = exception_type = exception_line = None
    stopped = False
    try:
        exec(compile(text, filename, "exec"), _namespace(wire, printed))  # noqa: S102 - running the docs' code is the lesson
    except _Stopped:
        stopped = True
    except Exception as exc:  # noqa: BLE001 - what the snippet raised is the result
        exception_type = type(exc).__name__
        exception = f"{exception_type}: {exc}"
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        if frames and frames[-1].lineno:
            exception_line = text.splitlines()[frames[-1].lineno - 1].strip()
    finally:
        wire.close()
    seconds = time.monotonic() - started
    waits_after = _redis_waits(lab)
    run = Run(
        label, text, list(fixes), dict(given), wire.calls, printed, exception, exception_type, exception_line,
        stopped, timeout, seconds, before, {key: _read(lab, key) for key in watch},
        None if waits_before is None or waits_after is None else waits_after - waits_before,
    )
    if diagnosed:
        run.findings = diagnose(run)
    log.debug("%s: %s", label, run.outcome)
    return run


def run(name: str, lab: Any, *, timeout: float = 2.0, progress: bool = True) -> SnippetResult:
    """Run the page's snippet ``name`` stage by stage, then the fixed version; see ``SNIPPETS`` for the names.

    ``lab`` is a ``statelab.Session``. ``timeout`` bounds each run (only the retry loop ever reaches it).
    Runs that can take that long show a progress bar of the requests sent.
    """
    snippet = SNIPPETS[name]
    bar = None
    if progress and name == "retry":
        from tqdm.auto import tqdm

        bar = tqdm(total=len(snippet.stages) + 1, desc="stages of the retry loop", unit="stage")
    try:
        stages: list[Run] = []
        for stage in snippet.stages:
            if bar is not None:
                bar.set_postfix_str(stage.label)
            done = execute(snippet.docs, lab, label=stage.label, fixes=stage.fixes, given=stage.given,
                           watch=snippet.watch, timeout=timeout)
            done.new_fixes = [f for f in stage.fixes if not stages or f not in stages[-1].fixes]
            stages.append(done)
            if bar is not None:
                bar.update(1)
        fixed = execute(snippet.fixed, lab, label="fixed", given=snippet.fixed_given, watch=snippet.watch,
                        timeout=timeout, diagnosed=False)
        if bar is not None:
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return SnippetResult(
        name, snippet.title, snippet.intent, snippet.docs, stages, snippet.fixed, fixed,
        snippet.fixed_expect, snippet.fixed_after, snippet.headline,
    )


def _put(lab: Any, key: str, value: str | None) -> None:
    """Set ``key`` to ``value`` from scratch (delete first: Redis keeps a first-write marker on the old one)."""
    lab.client.delete(lab.store_name, key)
    if value is not None:
        lab.client.save(lab.store_name, key, value)


def _read(lab: Any, key: str) -> Any:
    state = lab.client.get(lab.store_name, key)
    return None if state is None else state.value


def _redis_waits(lab: Any) -> int | None:
    """How many WAIT commands the local Redis primary has run (None unless a local Redis with replicas)."""
    stack = getattr(lab, "stack", None)
    if stack is None or getattr(stack, "store", None) != "redis" or not stack.redis_replicas:
        return None
    import redis

    with redis.Redis.from_url(stack.redis_url(0)) as r:
        return int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


# --- diagnosis ----------------------------------------------------------------------------------------------------


def diagnose(run: Run) -> list[SnippetFinding]:
    """What went wrong in ``run``, most telling first, each as one sentence; empty when nothing did."""
    found: list[SnippetFinding] = []
    posts = [c for c in run.calls if c.method == "POST"]
    if run.stopped:
        if posts and all(c.status == 204 for c in posts):
            found.append(SnippetFinding("endless_204", (
                f"Every save succeeded with 204, but `save_state` counts only 200 as success, so the loop never ends: "
                f"it was still retrying after {run.attempts} successful saves when the {run.timeout:g} s timeout stopped it."
            )))
        else:
            statuses = sorted({c.status for c in posts})
            found.append(SnippetFinding("endless_rejected", (
                f"Every save is refused ({', '.join(map(str, statuses)) or 'no answer'}) and `save_state` turns that "
                f"into False, so the loop repeats a request that can never succeed ({run.attempts} attempts before the stop)."
            )))
    not_found = next((c for c in run.calls if c.error_code == "ERR_STATE_STORE_NOT_FOUND"), None)
    if not_found is not None:
        found.append(SnippetFinding("store_not_found", (
            f"There is no state store called `{not_found.store}`: `dapr init` names its store `statestore`, "
            f"so the sidecar answers 400 ERR_STATE_STORE_NOT_FOUND."
        )))
    if run.exception_type == "KeyError" and ".format(" in (run.exception_line or "") and "headers[" not in (run.exception_line or ""):
        found.append(SnippetFinding("format_keyerror", (
            f"`str.format` reads every `{{` of the JSON template as a placeholder, so it raises {run.exception} "
            f"before any request is sent."
        )))
    double = next((c for c in posts if c.error_code == "ERR_MALFORMED_REQUEST" and _is_json_string(c.request_body)), None)
    if double is not None:
        found.append(SnippetFinding("double_encoded", (
            "The body is already a JSON string and `json=` encodes it a second time: the sidecar receives one "
            "JSON string instead of an array of items and answers 400 ERR_MALFORMED_REQUEST."
        )))
    stale = next((c for c in run.calls if c.method == "DELETE" and c.status == 409), None)
    if stale is not None:
        found.append(SnippetFinding("stale_etag", (
            "The DELETE sends the ETag read before the save; that save made a new version, so the sidecar refuses "
            f"the delete with 409 and `{stale.key}` stays."
        )))
    missing = next((c for c in run.calls if c.method == "GET" and c.status == 204), None)
    if missing is not None:
        tail = (f", so `response.headers['ETag']` raises {run.exception}" if run.exception_type == "KeyError"
                and "headers[" in (run.exception_line or "") else "")
        found.append(SnippetFinding("missing_key", (
            f"Nobody saved `{missing.key}` (the page saves `k1`): the GET answers 204 with no body and no ETag header{tail}."
        )))
    nothing = next((c for c in run.calls if c.method == "DELETE" and c.status == 204 and c.key in run.before
                    and run.before[c.key] is None), None)
    if nothing is not None:
        others = [k for k, v in run.after.items() if v is not None]
        still = f", and `{others[0]}` is still there" if others else ""
        found.append(SnippetFinding("deleted_nothing", (
            f"Nobody saved `{nothing.key}` (the page saves `k1`): the DELETE answers 204 all the same{still}."
        )))
    refused = [c for c in run.calls if c.status >= 400]
    if refused and not run.exception and not run.stopped:
        found.append(SnippetFinding("unchecked", (
            f"The snippet never looks at the answers: {refused[0].method} got {refused[0].status} and the code went on "
            "as if it had worked."
        )))
    for call in run.calls:
        for name in ("consistency", "concurrency"):
            sent = {k.lower() for k in call.request_headers}
            if name in sent and name not in call.query:
                if call.method == "GET" and name == "concurrency":
                    sentence = ("`concurrency` went as an HTTP header on a GET, which has no concurrency option at all; "
                                "the sidecar ignores it.")
                else:
                    sentence = (f"`{name}` went as an HTTP header, which the sidecar ignores: it reads `?{name}=` "
                                "from the query string, and this request carried none.")
                if all(f.sentence != sentence for f in found):
                    found.append(SnippetFinding("header_ignored", sentence))
    return found


def _is_json_string(body: str) -> bool:
    try:
        return isinstance(json.loads(body), str)
    except ValueError:
        return False


# --- where does `consistency` go? ----------------------------------------------------------------------------------


@dataclass
class ProbeRow:
    request: str
    sent_as: str
    status: int
    error_code: str
    redis_waits: int | None
    meaning: str


@dataclass
class HeaderProbe:
    """Evidence that the sidecar reads ``consistency`` from the query string and the item, never from a header."""

    query_delete: ProbeRow
    header_delete: ProbeRow
    options_save: ProbeRow
    header_save: ProbeRow
    waits_measured: bool

    @property
    def rows(self) -> list[ProbeRow]:
        return [self.query_delete, self.header_delete, self.options_save, self.header_save]

    def __repr__(self) -> str:
        return "\n".join(
            f"{r.request:<58} {r.status} {r.error_code:<16} waits={r.redis_waits}  {r.meaning}" for r in self.rows
        )

    def _repr_html_(self) -> str:
        cell = "style='text-align:left;padding:3px 8px;border:1px solid #ddd'"
        body = "".join(
            f"<tr><td {cell}><code>{html.escape(r.request)}</code></td><td {cell}>{html.escape(r.sent_as)}</td>"
            f"<td {cell}>{r.status} {html.escape(r.error_code)}</td>"
            f"<td {cell}>{'n/a' if r.redis_waits is None else r.redis_waits}</td><td {cell}>{html.escape(r.meaning)}</td></tr>"
            for r in self.rows
        )
        note = "" if self.waits_measured else (
            "<p><small>Redis WAIT counts need the local Redis stack with a replica; not measured here.</small></p>")
        return (
            f"<table style='border-collapse:collapse'><tr><th {cell}>request</th><th {cell}>consistency sent as</th>"
            f"<th {cell}>answer</th><th {cell}>Redis WAITs</th><th {cell}>what it shows</th></tr>{body}</table>{note}"
        )


def header_probe(lab: Any, key: str = "howto-probe") -> HeaderProbe:
    """Send ``consistency`` once as a header and once where Dapr reads it, and compare the answers."""
    url = f"{lab.endpoint}/v1.0/state/{lab.store_name}"
    with requests.Session() as http:
        http.headers.update(lab.client.headers)

        def probe(request: str, sent_as: str, meaning: str, send: Callable[[], requests.Response]) -> ProbeRow:
            before = _redis_waits(lab)
            resp = send()
            after = _redis_waits(lab)
            code = resp.json().get("errorCode", "") if resp.status_code >= 400 else ""
            waits = None if before is None or after is None else after - before
            return ProbeRow(request, sent_as, resp.status_code, code, waits, meaning)

        rows = [
            probe(f"DELETE {key}?consistency=nonsense", "query parameter",
                  "the sidecar reads the query parameter and rejects the unknown value",
                  lambda: http.delete(f"{url}/{key}", params={"consistency": "nonsense"}, timeout=10)),
            probe(f"DELETE {key}  consistency: nonsense", "header",
                  "the same nonsense as a header is never looked at",
                  lambda: http.delete(f"{url}/{key}", headers={"consistency": "nonsense"}, timeout=10)),
            probe(f'POST [{{"key": "{key}", …, "options": {{"consistency": "strong"}}}}]', "item option",
                  "a strong save makes Redis WAIT for its replica",
                  lambda: http.post(url, json=[{"key": key, "value": 1, "options": {"consistency": "strong"}}], timeout=10)),
            probe(f'POST [{{"key": "{key}", …}}]  consistency: strong', "header",
                  "as a header it changes nothing: no WAIT",
                  lambda: http.post(url, json=[{"key": key, "value": 2}], headers={"consistency": "strong"}, timeout=10)),
        ]
        http.delete(f"{url}/{key}", timeout=10)
    query_delete, header_delete, options_save, header_save = rows
    return HeaderProbe(query_delete, header_delete, options_save, header_save,
                       waits_measured=options_save.redis_waits is not None)


# --- all snippets at a glance --------------------------------------------------------------------------------------


@dataclass
class Summary:
    results: list[SnippetResult]

    @property
    def all_fixed_ok(self) -> bool:
        return all(r.fixed_ok for r in self.results)

    def __repr__(self) -> str:
        return "\n".join(f"{r.title}: {r.diagnosis} Fixed: {'ok' if r.fixed_ok else 'NOT ok'}" for r in self.results)

    def _repr_html_(self) -> str:
        cell = "style='vertical-align:top;text-align:left;padding:4px 8px;border:1px solid #ddd'"
        rows = "".join(
            f"<tr><td {cell}><b>{html.escape(r.title)}</b></td>"
            f"<td {cell}>{html.escape(r.stages[0].outcome)}</td>"
            f"<td {cell}>{_md_code(r.diagnosis)}</td>"
            f"<td {cell}>{html.escape(' | '.join(r.fixed.statuses))} {'✔' if r.fixed_ok else '✘'}</td></tr>"
            for r in self.results
        )
        return (
            f"<table style='border-collapse:collapse'><tr><th {cell}>snippet</th><th {cell}>as written</th>"
            f"<th {cell}>its own bug, once the others are fixed</th><th {cell}>fixed version</th></tr>{rows}</table>"
        )


def summary(results: list[SnippetResult]) -> Summary:
    return Summary(list(results))


# --- HTML helpers ---------------------------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _pre(text: str) -> str:
    return f"<pre style='white-space:pre-wrap;font-size:85%;margin:0'>{html.escape(text.rstrip())}</pre>"


def _md_code(sentence: str) -> str:
    """Escape a sentence and render its `backticked` parts as code."""
    parts = html.escape(sentence).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _run_html(number: int, run: Run) -> str:
    title = f"{number} · {run.label}" if number else "the fixed snippet"
    out = [f"<p style='margin:0.4em 0 0.1em'><b>{html.escape(title)}</b>"]
    if run.given:
        state = ", ".join(f"{k} = {v!r}" if v is not None else f"{k} absent" for k, v in run.given.items())
        out.append(f" <small>(before: {html.escape(state)})</small>")
    out.append("</p>")
    for fix in run.new_fixes:
        out.append(f"<small>fix: {_md_code(fix.why)} (<code>{html.escape(_clip(fix.old, 50))}</code> → "
                   f"<code>{html.escape(_clip(fix.new, 50))}</code>)</small><br>")
    lines = [c.line() for c in run.calls[:SHOWN_CALLS]]
    if len(run.calls) > SHOWN_CALLS + 1:
        lines.append(f"… {len(run.calls) - SHOWN_CALLS - 1} more requests like these, the last one:")
    if len(run.calls) > SHOWN_CALLS:
        lines.append(run.calls[-1].line())
    if not run.calls:
        lines.append("(no request was sent)")
    lines += [f"printed: {p}" for p in run.printed[:3]]
    if run.exception_line:
        lines.append(f"raised at: {run.exception_line}")
    out.append(_pre("\n".join(lines)))
    after = ", ".join(f"{k} = {v!r}" if v is not None else f"{k} absent" for k, v in run.after.items())
    waits = f"; Redis WAITs: {run.redis_waits}" if run.redis_waits else ""
    out.append(f"<small>→ {html.escape(run.outcome)}. Afterwards: {html.escape(after)}{waits}.</small>")
    if run.findings:
        out.append(f"<br><small><b>⇒</b> {_md_code(run.findings[0].sentence)}</small>")
    return "".join(out)


__all__ = ["PAGE_ENDPOINT", "SNIPPETS", "HeaderProbe", "Rewrite", "Run", "Snippet", "SnippetResult", "Stage",
           "Summary", "execute", "header_probe", "run", "summary"]
