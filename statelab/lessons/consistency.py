"""Strong vs eventual consistency, measured: what ``consistency: strong`` costs and buys, store by store.

Everything here speaks the Dapr HTTP API through the session's sidecar. The local-stack parts (reading a
Redis replica directly, stopping it, counting ``WAIT`` in the primary's ``INFO commandstats``, restarting
the sidecar) check ``session.local`` and come back with a ``skipped`` sentence when the lesson runs
against a real sidecar, whose store is not ours to open.

What the stores do with ``strong`` (docs/dapr-behaviour.md §12): ``state.redis`` sends ``WAIT <replicas> 1000``
after a strong save and ignores the answer, with ``<replicas>`` read once when the sidecar starts;
``state.sqlite`` and ``state.in-memory`` validate the word and do nothing else.
"""

from __future__ import annotations

import html
import json
import logging
import random
import signal
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from statelab.client import EVENTUAL, STRONG

if TYPE_CHECKING:
    import redis

from statelab.display import html_table
from statelab.session import Session

log = logging.getLogger(__name__)

MODES = (STRONG, EVENTUAL)
WAIT_TIMEOUT_MS = 1000  # the timeout state.redis passes to WAIT

# What the Dapr docs promise, word for word (dapr/docs, checked on the v1.14 and v1.15 branches).
DOCS_CLAIMS = [
    {
        "page": "How-To: Build a stateful service",
        "url": "https://docs.dapr.io/developing-applications/building-blocks/state-management/howto-stateful-service/",
        "text": "Using strong consistency, Dapr makes sure that the underlying state store: "
        "Returns the response once the data has been written to all replicas. "
        "Receives an ACK from a quorum before writing or deleting state.",
    },
    {
        "page": "State management overview",
        "url": "https://docs.dapr.io/developing-applications/building-blocks/state-management/state-management-overview/",
        "text": "Strong consistency: Dapr waits for all replicas (or designated quorums) to acknowledge "
        "before acknowledging a write request.",
    },
]

# What the three stores' code does (dapr/components-contrib state/redis/redis.go Set and Init,
# state/sqlite, state/in-memory; docs/dapr-behaviour.md §12).
STRONG_BY_STORE = [
    {
        "store": "state.redis",
        "save": f"after the write, one WAIT <replicas> {WAIT_TIMEOUT_MS} (only if replicas > 0); its reply, the "
        "number of replicas that acknowledged, is not looked at, so a timeout is still a success",
        "get": "nothing (the read goes to the primary anyway)",
        "delete": "nothing (no WAIT)",
        "replicas": "read once from INFO replication (connected_slaves) when the sidecar starts",
    },
    {
        "store": "state.sqlite",
        "save": "nothing: the word is validated (strong or eventual), then ignored",
        "get": "nothing",
        "delete": "nothing (validated only)",
        "replicas": "none",
    },
    {
        "store": "state.in-memory",
        "save": "nothing: the word is validated (strong or eventual), then ignored",
        "get": "nothing",
        "delete": "nothing (validated only)",
        "replicas": "none: the data lives in the sidecar process",
    },
]

# Why a local-stack part did not run (completed by "Skipped: " or "WAITs not counted: ").
NOT_LOCAL = (
    "this needs the local stack (it reads Redis directly), and this session talks to a sidecar "
    "whose store is not ours to open."
)
NOT_REDIS = "this store has no replicas, so there is no replica to read and no WAIT to count."
NO_REPLICA = "the local Redis runs without a replica (open the session with replicas=1)."


def _table_html(rows: list[dict[str, Any]], caption: str = "") -> str:
    if not rows:
        return ""
    return html_table(rows[0], ([_fmt(v) for v in row.values()] for row in rows), caption)


def _count(n: int | None, noun: str) -> str:
    """``_count(1, "WAIT")`` → "1 WAIT", ``_count(0, "WAIT")`` → "0 WAITs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


# --- what strong means -----------------------------------------------------------------------------


@dataclass
class StrongMeaning:
    """The docs' promise next to what each store does, and what this session's store is."""

    store_type: str
    claims: list[dict[str, str]]
    stores: list[dict[str, str]]
    connected_replicas: int | None  # the primary's connected_slaves (local Redis only), else None

    @property
    def this_store(self) -> dict[str, str] | None:
        return next((row for row in self.stores if row["store"] == self.store_type), None)

    def text(self) -> str:
        lines = [f'Docs ({c["page"]}): "{c["text"]}"' for c in self.claims]
        lines += [f"{row['store']}: save → {row['save']}; delete → {row['delete']}" for row in self.stores]
        lines.append(f"This session's store: {self.store_type or '?'}" + self._replicas_text())
        return "\n".join(lines)

    def _replicas_text(self) -> str:
        if self.connected_replicas is None:
            return ""
        return f", its primary has {_count(self.connected_replicas, 'connected replica')} right now"

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        claims = "".join(
            f"<blockquote>{html.escape(c['text'])} — <a href='{c['url']}'>{html.escape(c['page'])}</a></blockquote>"
            for c in self.claims
        )
        return (
            f"<p><b>What the docs say strong means</b></p>{claims}"
            + _table_html(self.stores, "What each store's code does with consistency=strong")
            + f"<p>This session's store: <code>{html.escape(self.store_type or '?')}</code>"
            + html.escape(self._replicas_text())
            + "</p>"
        )


def what_strong_means(session: Session) -> StrongMeaning:
    """Quote the docs, list what each store does with ``strong``, and say which store this session uses."""
    replicas = None
    if _is_local_redis(session):
        info = _redis(session, 0).info("replication")
        replicas = int(info.get("connected_slaves", 0))
    return StrongMeaning(session.store_type, DOCS_CLAIMS, STRONG_BY_STORE, replicas)


# --- latency and staleness of strong vs eventual saves ---------------------------------------------


@dataclass
class SaveTimings:
    """``samples`` saves per mode, interleaved; each HTTP save timed, and (local Redis) the replica read
    straight after it.

    ``stale[mode]`` counts replica reads that did not return the value just saved (None when not measured,
    see ``skipped``). ``wait_calls`` is how many WAIT commands the primary ran during the run.
    """

    store_type: str
    samples: int
    seed: int
    latency_ms: dict[str, list[float]]
    stale: dict[str, int | None]
    wait_calls: int | None
    skipped: str = ""

    @property
    def strong_saves(self) -> int:
        return len(self.latency_ms[STRONG])

    def percentile(self, mode: str, q: float) -> float:
        """The q-th percentile (0–100) of the save latencies of ``mode``, in ms (nearest rank)."""
        values = sorted(self.latency_ms[mode])
        rank = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
        return values[rank]

    def p50(self, mode: str) -> float:
        return statistics.median(self.latency_ms[mode])

    @property
    def extra_p50_ms(self) -> float:
        """How much slower the median strong save was than the median eventual one (ms)."""
        return self.p50(STRONG) - self.p50(EVENTUAL)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "consistency": mode,
                "saves": len(self.latency_ms[mode]),
                "p50 ms": self.p50(mode),
                "p90 ms": self.percentile(mode, 90),
                "p99 ms": self.percentile(mode, 99),
                "max ms": max(self.latency_ms[mode]),
                "stale replica reads": self.stale[mode],
            }
            for mode in MODES
        ]

    def verdict(self) -> str:
        """One sentence reading the result."""
        strong, eventual = self.p50(STRONG), self.p50(EVENTUAL)
        head = f"Median save: strong {strong:.2f} ms, eventual {eventual:.2f} ms ({self.extra_p50_ms:+.2f} ms for strong)."
        if self.wait_calls:
            return (
                f"{head} The primary ran {_count(self.wait_calls, 'WAIT command')} "
                f"for {_count(self.strong_saves, 'strong save')}."
            )
        if self.store_type != "state.redis":
            return f"{head} This store has no replicas: strong does nothing here, so any gap is noise."
        return head

    def text(self) -> str:
        lines = [self.verdict()]
        lines += [", ".join(f"{k}={_fmt(v)}" for k, v in row.items()) for row in self.rows()]
        if self.skipped:
            lines.append(self.skipped)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        skipped = f"<p><i>{html.escape(self.skipped)}</i></p>" if self.skipped else ""
        return f"<p>{html.escape(self.verdict())}</p>" + _table_html(self.rows()) + skipped


def measure_saves(session: Session, samples: int = 200, *, seed: int = 7, progress: bool = True) -> SaveTimings:
    """Save ``samples`` values with ``strong`` and as many with ``eventual``, taking turns in a seeded order.

    Each save is one HTTP request, timed from send to answer. On the local Redis stack, the replica is read
    with HGET right after each answer and compared with what was just saved, and the primary's WAIT count
    is taken before and after.
    """
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]  # fresh values each run, so a leftover from an earlier run never looks fresh
    reason = _replica_skip_reason(session)
    skipped = f"Replica reads and WAIT counts skipped: {reason}" if reason else ""
    replica = primary = None
    if not skipped:
        primary, replica = _redis(session, 0), _redis(session, 1)
    waits_before = _wait_calls(primary) if primary is not None else None
    latency: dict[str, list[float]] = {mode: [] for mode in MODES}
    stale: dict[str, int | None] = {mode: (None if skipped else 0) for mode in MODES}
    client = session.client
    for i in tqdm(range(samples), desc="strong and eventual saves", disable=not progress):
        order = list(MODES)
        rng.shuffle(order)  # neither mode always goes first
        for mode in order:
            key = f"consistency-{mode}-{run}"
            value = {"run": run, "i": i}
            started = time.perf_counter()
            client.save(session.store_name, key, value, consistency=mode)
            latency[mode].append((time.perf_counter() - started) * 1000)
            if replica is not None and _replica_value(replica, session, key) != value:
                stale[mode] = (stale[mode] or 0) + 1
    waits = _wait_calls(primary) - waits_before if primary is not None and waits_before is not None else None
    return SaveTimings(session.store_type, samples, seed, latency, stale, waits, skipped)


# --- strong saves with the replica down ------------------------------------------------------------


@dataclass
class ReplicaDown:
    """A strong and an eventual save while the only replica is stopped (local Redis only)."""

    skipped: str = ""
    strong_seconds: float | None = None
    strong_ok: bool | None = None  # the sidecar answered 204
    strong_error: str = ""
    eventual_seconds: float | None = None
    eventual_ok: bool | None = None
    value_read_back: bool | None = None  # a GET through the sidecar returns the strong save's value
    wait_calls: int | None = None  # WAIT commands during the strong save
    wait_reply: int | None = None  # what WAIT 1 1000 answers now: replicas that acknowledged
    replica_caught_up: bool | None = None  # after the restart the replica holds the value

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"save": "strong", "seconds": self.strong_seconds, "answered 204": self.strong_ok},
            {"save": "eventual", "seconds": self.eventual_seconds, "answered 204": self.eventual_ok},
        ]

    def verdict(self) -> str:
        if self.skipped:
            return self.skipped
        if not self.strong_ok:
            return f"The strong save failed while the replica was down: {self.strong_error}"
        return (
            f"With the replica down, the strong save still answered 204, after {self.strong_seconds or 0:.2f} s "
            f"(the eventual one took {(self.eventual_seconds or 0) * 1000:.1f} ms). The primary ran "
            f"{_count(self.wait_calls, 'WAIT')}; asked the same question, WAIT answers that "
            f"{_count(self.wait_reply, 'replica')} acknowledged, and Dapr does not look at that answer. "
            + ("Restarted, the replica caught up." if self.replica_caught_up else "Restarted, the replica had not caught up.")
        )

    def __repr__(self) -> str:
        return self.verdict()

    def _repr_html_(self) -> str:
        if self.skipped:
            return f"<p><i>{html.escape(self.skipped)}</i></p>"
        return f"<p>{html.escape(self.verdict())}</p>" + _table_html(self.rows())


def save_with_replica_down(session: Session, *, progress: bool = True) -> ReplicaDown:
    """Stop replica 0, time a strong and an eventual save, and start the replica again (always)."""
    if reason := _replica_skip_reason(session):
        return ReplicaDown(skipped=f"Skipped: {reason}")
    from tqdm.auto import tqdm

    from statelab.errors import DaprError

    stack = session.local_stack()
    primary = _redis(session, 0)
    key = f"consistency-lonely-{uuid.uuid4().hex[:8]}"
    result = ReplicaDown()
    steps = tqdm(total=5, desc="replica down", disable=not progress)
    try:
        stack.stop_replica(0)
        steps.update()
        waits_before = _wait_calls(primary)
        started = time.perf_counter()
        try:
            session.client.save(session.store_name, key, "saved anyway", consistency=STRONG)
            result.strong_ok = True
        except DaprError as exc:
            result.strong_ok, result.strong_error = False, str(exc)
        result.strong_seconds = round(time.perf_counter() - started, 4)
        result.wait_calls = _wait_calls(primary) - waits_before
        steps.update()
        started = time.perf_counter()
        try:
            session.client.save(session.store_name, key + "-eventual", "saved", consistency=EVENTUAL)
            result.eventual_ok = True
        except DaprError:
            result.eventual_ok = False
        result.eventual_seconds = round(time.perf_counter() - started, 4)
        state = session.client.get(session.store_name, key)
        result.value_read_back = state is not None and state.value == "saved anyway"
        steps.update()
        result.wait_reply = _ask_wait(primary)
        steps.update()
    finally:
        if "redis-1" not in stack.pids:
            stack.start_replica(0)
        steps.update()
        steps.close()
    result.replica_caught_up = _replica_value(_redis(session, 1), session, key) == "saved anyway"
    return result


# --- the replica count is read once, at sidecar start -----------------------------------------------


@dataclass
class ReadOnce:
    """Strong saves after the sidecar (re)started without, then with, a replica connected."""

    skipped: str = ""
    connected_replicas: int | None = None  # the primary's view when the strong save ran
    waits_started_without_replica: int | None = None  # WAITs for one strong save
    waits_started_with_replica: int | None = None

    def verdict(self) -> str:
        if self.skipped:
            return self.skipped
        return (
            f"Sidecar started while the replica was down: a strong save sent "
            f"{_count(self.waits_started_without_replica, 'WAIT')}, although the primary had "
            f"{_count(self.connected_replicas, 'replica')} connected again by then. "
            f"Sidecar restarted with the replica up: {_count(self.waits_started_with_replica, 'WAIT')}."
        )

    def __repr__(self) -> str:
        return self.verdict()

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.verdict())}</p>"


def replica_count_is_read_once(session: Session, *, progress: bool = True) -> ReadOnce:
    """Restart sidecar 0 while the replica is down, bring the replica back, and count WAITs of a strong save;
    then restart the sidecar with the replica up and count again. Leaves replica and sidecar running."""
    if reason := _replica_skip_reason(session):
        return ReadOnce(skipped=f"Skipped: {reason}")
    from tqdm.auto import tqdm

    stack = session.local_stack()
    primary = _redis(session, 0)
    key = f"consistency-once-{uuid.uuid4().hex[:8]}"
    result = ReadOnce()
    steps = tqdm(total=4, desc="restarts", disable=not progress)
    try:
        stack.stop_replica(0)
        _restart_sidecar(session)  # it now counts 0 replicas, and keeps that number
        steps.update()
        stack.start_replica(0)
        result.connected_replicas = int(primary.info("replication").get("connected_slaves", 0))
        result.waits_started_without_replica = _waits_for_one_strong_save(session, primary, key)
        steps.update()
        _restart_sidecar(session)  # counts 1 again
        steps.update()
        result.waits_started_with_replica = _waits_for_one_strong_save(session, primary, key)
        steps.update()
    finally:
        pids = stack.pids
        if "redis-1" not in pids:
            stack.start_replica(0)
        if "sidecar-0" not in pids or result.waits_started_with_replica is None:
            _restart_sidecar(session)  # a sidecar that started without the replica must not stay behind
        steps.close()
    return result


def _restart_sidecar(session: Session) -> None:
    stack = session.local_stack()
    if "sidecar-0" in stack.pids:
        stack.kill_sidecar(0, signal.SIGTERM)
    stack.start_sidecar(0)
    session.client.wait_until_ready(timeout=30)


def _waits_for_one_strong_save(session: Session, primary: redis.Redis, key: str) -> int:
    before = _wait_calls(primary)
    session.client.save(session.store_name, key, "strong", consistency=STRONG)
    return _wait_calls(primary) - before


# --- consistency as a header (the how-to page) is ignored -------------------------------------------


@dataclass
class RawRequest:
    """One raw request and what came back."""

    name: str  # short handle, e.g. "header save"
    request: str  # what was sent, in words
    status: int
    error_code: str = ""
    waits: int | None = None  # WAIT commands it caused (local Redis only)

    def row(self) -> dict[str, Any]:
        return {"request": self.request, "status": self.status, "errorCode": self.error_code, "WAITs": self.waits}


@dataclass
class HeaderCheck:
    """Consistency sent as an HTTP header (as the how-to page does) next to where daprd reads it."""

    attempts: list[RawRequest] = field(default_factory=list)
    skipped: str = ""  # why WAITs were not counted

    def __getitem__(self, name: str) -> RawRequest:
        for attempt in self.attempts:
            if attempt.name == name:
                return attempt
        raise KeyError(name)

    def rows(self) -> list[dict[str, Any]]:
        return [a.row() for a in self.attempts]

    def text(self) -> str:
        lines = [", ".join(f"{k}={_fmt(v)}" for k, v in row.items()) for row in self.rows()]
        return "\n".join(lines + ([self.skipped] if self.skipped else []))

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        skipped = f"<p><i>{html.escape(self.skipped)}</i></p>" if self.skipped else ""
        return _table_html(self.rows()) + skipped




def check_header(session: Session) -> HeaderCheck:
    """Send consistency the how-to page's way (a header) and daprd's way (body / query), side by side.

    A bogus value shows who reads what on any sidecar: in a header it passes unnoticed, as a query
    parameter daprd validates it and refuses the delete (500 ERR_STATE_DELETE). On the local Redis stack
    each request's WAIT commands are counted too.
    """
    reason = _replica_skip_reason(session)
    primary = None if reason else _redis(session, 0)
    skipped = f"WAITs not counted: {reason}" if reason else ""
    key = f"consistency-header-{uuid.uuid4().hex[:8]}"
    path = f"/v1.0/state/{quote(session.store_name, safe='')}"
    requests_ = [  # name, in words, method, path, query, headers, body
        ("header save", "save, header consistency: strong", "POST", path, {}, {"consistency": STRONG},
         [{"key": key, "value": "header"}]),
        ("body save", "save, options.consistency strong in the body", "POST", path, {}, {},
         [{"key": key, "value": "body", "options": {"consistency": STRONG}}]),
        ("header get", "GET, header consistency: strong", "GET", f"{path}/{key}", {}, {"consistency": STRONG}, None),
        ("bogus header delete", "DELETE, header consistency: bogus", "DELETE", f"{path}/{key}", {},
         {"consistency": "bogus"}, None),
        ("bogus query delete", "DELETE ?consistency=bogus", "DELETE", f"{path}/{key}", {"consistency": "bogus"},
         {}, None),
    ]
    result = HeaderCheck(skipped=skipped)
    for name, words, method, url, params, headers, body in requests_:
        before = _wait_calls(primary) if primary is not None else None
        resp = session.client.request(method, url, params=params, headers=headers, json_body=body)
        waits = _wait_calls(primary) - before if primary is not None and before is not None else None
        result.attempts.append(RawRequest(name, words, resp.status_code, _error_code(resp), waits))
    session.client.delete(session.store_name, key)
    return result


def _error_code(resp: Any) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    return str(body.get("errorCode", "")) if isinstance(body, dict) else ""


# --- local Redis helpers ---------------------------------------------------------------------------


def _is_local_redis(session: Session) -> bool:
    return session.stack is not None and session.stack.store == "redis"


def _replica_skip_reason(session: Session) -> str:
    """"" when the session's own Redis has a replica to read and stop, else the reason why not."""
    if not session.local:
        return NOT_LOCAL
    if not _is_local_redis(session):
        return NOT_REDIS
    if session.stack is None or session.stack.redis_replicas < 1:
        return NO_REPLICA
    return ""


def _redis(session: Session, index: int) -> redis.Redis:
    """The session's client for the stack's primary (0) or replica ``index`` (local stack only)."""
    return session.redis(index)


def _wait_calls(primary: redis.Redis) -> int:
    """How many WAIT commands the Redis server has run since it started (INFO commandstats)."""
    stats = primary.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def _ask_wait(primary: redis.Redis) -> int:
    """Write a probe key, then ask WAIT 1 <timeout> on the same connection, as state.redis does after a save."""
    with primary.client() as conn:  # one connection: WAIT counts acknowledgements of this connection's writes
        conn.set("statelab:wait-probe", "1")
        acknowledged = int(conn.execute_command("WAIT", 1, WAIT_TIMEOUT_MS))
        conn.delete("statelab:wait-probe")
    return acknowledged


def _replica_value(replica: redis.Redis, session: Session, key: str) -> Any:
    """The value the replica holds for a Dapr key (hash ``<app id>||<key>``, field ``data``), decoded."""
    app_id = getattr(session.stack, "app_id", "myapp")
    raw = replica.hget(f"{app_id}||{key}", "data")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# --- plots -----------------------------------------------------------------------------------------
