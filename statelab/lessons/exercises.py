"""The lessons' exercises: the learner writes the code that matters, and a check runs it against the sidecar.

One check per exercise, each called from a lesson's check cell with the learner's function:

- ``check_save`` (lesson 01): ``save_orders(url, orders)``, one POST that saves several values;
- ``check_strong_save`` (02): ``save(url, key, value, consistency)``, consistency where a save reads it;
- ``check_retry_loop`` (03): ``deposit(client, store, key, amount, max_attempts, backoff)``, the retry loop;
- ``check_attempt`` (04): ``attempt(client, store, key)``, one read-modify-write, run by ``run_writers``;
- ``check_backoff`` (05): ``backoff(attempt, rng)``, full jitter, run by real writers beside the built-in policies;
- ``check_sdk_save`` (06): ``save_if_unchanged(d, store, key, value, etag)`` with the Dapr Python SDK.

A check calls the learner's function on fresh keys, reads the store back and returns a ``Verdict``: ✓ or ✗, a
sentence per thing the learner's code actually did and, on ✗, what to change. It never raises into the notebook
(only an interrupt goes through): a stub that still raises ``NotImplementedError`` is "not written yet", any other
exception of the learner's code is reported with the line it came from. With ``metrics`` it records
``exercise_<name>`` (True or False), which the headless runs hold to True with the lessons' answers.

Like the rest of the learner wing it speaks only the Dapr APIs (HTTP, and gRPC through the SDK in lesson 06), so
every check runs the same against a real daprd.
"""

from __future__ import annotations

import html
import inspect
import json
import math
import random
import re
import sysconfig
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import requests

from statelab.client import LAST_WRITE, State, StateClient
from statelab.display import key_table
from statelab.errors import DaprError, SidecarTimeout, SidecarUnavailable, is_save_conflict
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN
from statelab.writers import AbortRun, AttemptOutcome, Comparison, WritersConfig, WriterTask, run_writers

if TYPE_CHECKING:
    from statelab.metrics import Metrics
    from statelab.session import Session

STUCK = "Stuck? The collapsed cell under your function (the ⋯ bar) holds the answer."


# --- the verdict -------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a check found: ✓ or ✗, what the learner's code did (one sentence each) and, on ✗, what to change."""

    exercise: str  # recorded as exercise_<exercise>
    function: str  # the learner's function, as the lesson names it
    passed: bool
    did: list[str]
    fix: str = ""
    table: str = ""  # HTML shown under the sentences (lesson 05: the policies beside the learner's)
    result: Any = None  # what the check ran, for a closer look (lesson 04 and 05: the RunResult)
    not_written: bool = False

    @property
    def headline(self) -> str:
        if self.not_written:
            return f"✗ {self.function} is not written yet"
        return f"✓ {self.function} does it right" if self.passed else f"✗ {self.function} needs a change"

    def text(self) -> str:
        lines = [self.headline, *(f"  - {s}" for s in self.did)]
        if self.fix and not self.passed:
            lines.append(f"  What to change: {self.fix}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        items = "".join(f"<li>{_inline(s)}</li>" for s in self.did)
        fix = (f"<p style='margin:4px 0'><b>What to change:</b> {_inline(self.fix)}</p>"
               if self.fix and not self.passed else "")
        return (f"<div style='border-left:4px solid {color};padding:2px 10px;overflow-wrap:anywhere'>"
                f"<p style='margin:4px 0;color:{color}'><b>{html.escape(self.headline)}</b></p>"
                f"<ul style='margin:2px 0'>{items}</ul>{fix}{self.table}</div>")


def _inline(text: str) -> str:
    """A sentence as HTML: escaped, with `backticked` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _not_written(exercise: str, function: str) -> Verdict:
    return Verdict(exercise, function, False,
                   [f"`{function}` still raises `NotImplementedError`: the stub is waiting for your code."],
                   "Replace the `raise NotImplementedError` line with your code, run that cell, then this one. "
                   + STUCK,
                   not_written=True)


def _verdicts(exercise: str, function: str) -> Callable[..., Verdict]:
    """``v(passed, did, fix="", **more)``: a Verdict of this exercise, with less to type in each branch."""

    def make(passed: bool, did: list[str], fix: str = "", **more: Any) -> Verdict:
        return Verdict(exercise, function, passed, did, fix, **more)

    return make


def _checked(exercise: str, function: str, metrics: Metrics | None, run: Callable[[], Verdict]) -> Verdict:
    """Run one check; whatever the learner's code raises becomes a ✗ verdict, recorded in ``metrics``."""
    try:
        verdict = run()
    except NotImplementedError:
        verdict = _not_written(exercise, function)
    except SidecarUnavailable as exc:
        verdict = Verdict(exercise, function, False, [f"The sidecar did not answer: {_short(str(exc))}"],
                          "Run the setup cell again (it starts or finds the sidecar), then this one.")
    except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything; the notebook must go on
        if isinstance(exc, DaprError) and _learner_line(exc) is None:  # the check's own request to the sidecar
            verdict = Verdict(exercise, function, False, [f"The check's own request failed: {_short(str(exc))}"],
                              "Run the setup cell again, then this one; if it keeps failing, look at the sidecar.")
        else:
            verdict = Verdict(exercise, function, False, [f"`{function}` raised {_raised(exc)}."],
                              f"Read the error and the line it points at, fix your function and run both cells "
                              f"again. {STUCK}")
    if metrics is not None:
        metrics.record(f"exercise_{exercise}", verdict.passed,
                       note=f"the lesson's exercise: the learner's {function}, checked against the sidecar")
    return verdict


# Where a traceback leaves statelab and the libraries: that frame is the learner's line.
_PACKAGE = Path(__file__).resolve().parents[1]
_LIBRARIES = tuple(Path(p).resolve() for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})


def _learner_line(exc: BaseException) -> str | None:
    """The last line of the traceback outside statelab and the libraries (the learner's), without its comment;
    None if the exception never passed through the learner's code."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PACKAGE) or any(path.is_relative_to(lib) for lib in _LIBRARIES):
            continue
        return (frame.line or "").split("  # ")[0].strip()
    return None


def _raised(exc: BaseException) -> str:
    """``TypeError: ...`` and, when the traceback shows it, the learner's line that raised it."""
    line = _learner_line(exc)
    where = f" at `{line}`" if line else ""
    code, details = _grpc_code(exc), getattr(exc, "details", None)
    message = f"{code}: {details()}" if code and callable(details) else str(exc)  # not the RPC error's long repr
    return f"`{type(exc).__name__}: {_short(message, 160)}`{where}"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _short(text, limit)


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _state_url(lab: Session) -> str:
    return f"{lab.endpoint}/v1.0/state/{lab.store_name}"


def _cleanup(lab: Session, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            lab.client.delete(lab.store_name, key)
        except DaprError:
            pass  # a tidy store is nice to have, not part of the verdict


# --- what a raw HTTP answer shows of the request behind it (lessons 01 and 02) --------------------------------

_NOT_JSON = object()


@dataclass
class _Sent:
    """The request behind a ``requests.Response`` the learner returned, and the sidecar's answer."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any  # the JSON sent, decoded; _NOT_JSON if it was not JSON
    status: int
    error: str  # "ERR_…: message" from the answer's body, "" if none

    @classmethod
    def of(cls, answer: Any) -> _Sent | None:
        if not isinstance(answer, requests.Response) or answer.request is None:
            return None
        request = answer.request
        raw = request.body or b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = _NOT_JSON
        error = ""
        try:
            data = answer.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("errorCode"):
            error = f"{data['errorCode']}: {_short(str(data.get('message', '')))}"
        return cls(request.method or "", request.url or "", dict(request.headers), body, answer.status_code, error)

    @property
    def answer(self) -> str:
        return f"{self.status}" + (f" `{self.error}`" if self.error else "")

    def items(self) -> list[dict]:
        return [i for i in self.body if isinstance(i, dict)] if isinstance(self.body, list) else []


def _shape_problem(sent: _Sent) -> tuple[str, str] | None:
    """What is wrong with the shape of a save body, as (what was sent, what to change); None if it looks right."""
    body = sent.body
    if sent.method not in ("POST", "PUT"):
        return (f"You sent a `{sent.method}`; a save is a `POST` to the store's URL.",
                "Send the items with `requests.post(url, json=...)`.")
    if body is _NOT_JSON or body is None:
        return ("The body you sent is not JSON.", "Pass the Python list to `json=`: requests encodes it as JSON.")
    if isinstance(body, str):
        return ("You sent a JSON string: the body was encoded twice (`json.dumps`, then once more by `json=`).",
                "Pass the Python list itself to `json=`; requests encodes it once.")
    if isinstance(body, dict):
        return (f"You sent a JSON object, `{_show(body)}`.",
                "A save takes a JSON array of items, one `{\"key\": …, \"value\": …}` per value: a list, even for "
                "one item.")
    if isinstance(body, list) and (not body or any(not isinstance(i, dict) or "key" not in i for i in body)):
        return (f"You sent `{_show(body)}`: the array holds no items with a `key`.",
                "Make each element an object with a `key` and a `value`.")
    return None


# --- lesson 01: save several values with one POST -----------------------------------------------------------


def check_save(save_orders: Callable[..., Any], lab: Session, metrics: Metrics | None = None) -> Verdict:
    """Call ``save_orders(url, orders)`` with two fresh orders and read both back; the response it returns shows
    what was sent."""
    return _checked("save", "save_orders", metrics, lambda: _check_save(save_orders, lab))


def _check_save(save_orders: Callable[..., Any], lab: Session) -> Verdict:
    tag = uuid.uuid4().hex[:6]
    orders = {f"order-{tag}-1": {"item": "tea", "qty": 1}, f"order-{tag}-2": {"item": "cake", "qty": 2}}
    try:
        answer = save_orders(_state_url(lab), json.loads(json.dumps(orders)))  # a copy: the check keeps its own
        states = {key: lab.client.get(lab.store_name, key) for key in orders}
    finally:
        _cleanup(lab, orders)
    sent = _Sent.of(answer)
    stored = {key: state.value for key, state in states.items() if state is not None}
    right = [key for key, value in orders.items() if key in stored and stored[key] == value]
    v = _verdicts("save", "save_orders")
    if len(right) == len(orders):
        if sent is None:
            return v(False, ["Both orders are saved: they read back as they were."],
                     f"Return the response of your request (your function returned `{_short(repr(answer), 40)}`): "
                     "the check reads from it what you sent.")
        sent_keys = {i.get("key") for i in sent.items()}
        if not set(orders) <= sent_keys:
            return v(False, ["Both orders are saved, but the response you returned is of a request that carried "
                             f"{len(sent_keys & set(orders))} of them: one request per order?"],
                     "One POST can carry every order: the body is an array, one item per order.")
        return v(True, [f"One `{sent.method}` sent a JSON array of {len(sent.items())} items; the sidecar answered "
                        f"{sent.answer}.", "Both orders read back exactly as they were: their keys, and their values "
                        "as JSON objects."])
    texts = [key for key in orders if isinstance(stored.get(key), str)]
    if texts:
        return v(False, [f"`{texts[0]}` reads back as the text `{_short(stored[texts[0]], 60)}`, not as the JSON "
                         "object you meant: the value was encoded twice (you turned it into text, then requests "
                         "encoded that text)."],
                 "Put the value itself in the item; `json=` encodes the whole body, values included, once.")
    if right:
        return v(False, [f"{len(right)} of the {len(orders)} orders is saved; the other "
                         f"{'is missing' if len(stored) == len(right) else 'reads back differently'}."],
                 "Make one item per order: every key of `orders`, with its value.")
    wrong = [key for key in orders if key in stored]
    if wrong:
        return v(False, [f"`{wrong[0]}` reads back as `{_show(stored[wrong[0]])}`, not `{_show(orders[wrong[0]])}`."],
                 "Save each order's own value under its own key.")
    if sent is None:
        return v(False, [f"Nothing was saved under the keys of `orders`, and your function returned "
                         f"`{_short(repr(answer), 40)}`, not the response, so the check cannot show what the sidecar "
                         "said."], "Return the response of your request, then look at what the sidecar answered.")
    shape = _shape_problem(sent)
    did = [f"The sidecar answered {sent.answer} and nothing was saved."]
    if shape:
        return v(False, [*did, shape[0]], shape[1])
    return v(False, [*did, f"You sent `{_show(sent.body)}` to `{sent.url}`."],
             "Use the keys of `orders` in the items, and send them to the `url` you were given.")


# --- lesson 02: a strong save ------------------------------------------------------------------------------


def check_strong_save(save: Callable[..., Any], lab: Session, metrics: Metrics | None = None) -> Verdict:
    """Call ``save(url, key, value, consistency)`` with ``strong``, then with ``bogus``: a sidecar that reads the
    consistency refuses the second, so the first value stays. On a local Redis with a replica it counts WAITs too."""
    return _checked("strong_save", "save", metrics, lambda: _check_strong_save(save, lab))


def _where_consistency(sent: _Sent | None) -> str:
    """Where a request carried its consistency, in words; "" if it did not show."""
    if sent is None:
        return ""
    if any(name.lower() == "consistency" for name in sent.headers):
        return "You sent it as a header, `consistency: …`, which the sidecar never reads."
    if "consistency=" in sent.url:
        return "You sent it in the query string (`?consistency=…`), which a save ignores."
    if any("consistency" in item for item in sent.items()):
        return "You put it beside `key` and `value` in the item, where a save does not look for it."
    return ""


def _waits(lab: Session) -> int | None:
    """WAITs the local Redis primary has run so far; None unless the session runs Redis with a replica."""
    stack = lab.stack
    if stack is None or stack.store != "redis" or stack.redis_replicas < 1:
        return None
    try:
        stats = lab.redis(0).info("commandstats")
    except Exception:  # noqa: BLE001 - only an extra sentence depends on it
        return None
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def _check_strong_save(save: Callable[..., Any], lab: Session) -> Verdict:
    key = _fresh("strong")
    v = _verdicts("strong_save", "save")
    try:
        before = _waits(lab)
        first = save(_state_url(lab), key, {"n": 1}, "strong")
        after = _waits(lab)
        state = lab.client.get(lab.store_name, key)
        sent = _Sent.of(first)
        if state is None or state.value != {"n": 1}:
            did = ["Your save with consistency `strong` did not save `{\"n\": 1}`"
                   + (f": the sidecar answered {sent.answer}." if sent else ".")]
            shape = _shape_problem(sent) if sent else None
            if shape:
                return v(False, [*did, shape[0]], shape[1])
            return v(False, did, "Save the value under the key: one item in a JSON array, then the consistency.")
        try:
            second = save(_state_url(lab), key, {"n": 2}, "bogus")
        except NotImplementedError:
            raise
        except Exception:  # noqa: BLE001 - a function that raises on an error answer is fine here
            second = None
        kept = lab.client.get(lab.store_name, key)
    finally:
        _cleanup(lab, [key])
    waits = None if before is None or after is None else after - before
    redis = (f"On this Redis with a replica your strong save made the primary run {waits} `WAIT`"
             f"{'' if waits == 1 else 's'}.") if waits is not None else ""
    did = ["Your save with `strong` went through" + (f" ({sent.answer})" if sent else "")
           + " and the value reads back."]
    if kept is not None and kept.value == {"n": 2}:
        answered = _Sent.of(second)
        did.append("Then a save with consistency `bogus`, a value no sidecar accepts, went through too"
                   + (f" ({answered.answer})" if answered else "") + ": the sidecar never read your consistency, so "
                   "your `strong` save was an ordinary eventual one.")
        where = _where_consistency(sent)
        return v(False, [*did, *([where] if where else []), *([redis] if redis else [])],
                 "A save reads consistency from each item's `options` object, beside `key` and `value`.")
    refused = _Sent.of(second)
    did.append("A save with consistency `bogus` was refused"
               + (f" ({refused.answer})" if refused else "") + " and the first value stayed: the sidecar read your "
               "consistency, so your `strong` was really strong.")
    return v(True, did + ([redis] if redis else []))


# --- lesson 03: the retry loop ------------------------------------------------------------------------------

ACCOUNT = 100  # the balance every check account starts with
DEPOSIT = 10


class _Runaway(BaseException):
    """Raised into a learner's loop that goes past its bound. A BaseException, so ``except Exception`` in the
    learner's code cannot swallow it."""


@dataclass
class _Save:
    etag: str | None  # what the save carried
    concurrency: str | None
    value: Any
    read: str | None  # the ETag of the read before it
    status: int | None = None  # 204, or the error status


class _RecordingClient(StateClient):
    """A real client that records what is read and what each save carries (the last read's ETag beside it)."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        super().__init__(endpoint, timeout=timeout)
        self.reads: list[str | None] = []
        self.saves: list[_Save] = []

    def begin(self) -> None:
        self.reads, self.saves = [], []

    def get(self, store: str, key: str, **kwargs: Any) -> State | None:
        state = super().get(store, key, **kwargs)
        self.reads.append(state.etag if state else None)
        return state

    def save_many(self, store: str, items: Iterable[dict], **kwargs: Any) -> None:
        items = list(items)
        item = items[0] if items and isinstance(items[0], dict) else {}
        options = item.get("options")
        concurrency = options.get("concurrency") if isinstance(options, dict) else None
        record = _Save(item.get("etag"), concurrency, item.get("value"),
                       self.reads[-1] if self.reads else None)
        self._before_save(record)
        self.saves.append(record)
        try:
            super().save_many(store, items, **kwargs)
        except DaprError as exc:
            record.status = exc.status or None
            raise
        record.status = 204

    def _before_save(self, record: _Save) -> None:
        """A hook for subclasses: runs before each save is sent."""


class _Crowded(_RecordingClient):
    """Lesson 03's client: another writer deposits 1 between the learner's read and save (after the first
    ``rivals`` reads, or after every read when ``rivals`` is None), and a loop past ``max_saves`` is stopped."""

    def __init__(self, endpoint: str, rivals: int | None, max_saves: int) -> None:
        super().__init__(endpoint)
        self.rivals = rivals
        self.max_saves = max_saves
        self.deposits = 0
        self._rival = StateClient(endpoint, timeout=5.0)

    def get(self, store: str, key: str, **kwargs: Any) -> State | None:
        if len(self.reads) >= 3 * self.max_saves + 3:
            raise _Runaway(f"{len(self.reads)} reads")
        state = super().get(store, key, **kwargs)
        if self.rivals is None or len(self.reads) <= self.rivals:
            current = self._rival.get(store, key)
            value = current.value if current is not None else None
            balance = value.get("balance", 0) if isinstance(value, dict) else 0
            self._rival.save(store, key, {"balance": balance + 1}, etag=current.etag if current else None)
            self.deposits += 1
        return state

    def _before_save(self, record: _Save) -> None:
        if len(self.saves) >= self.max_saves:
            raise _Runaway(f"save {len(self.saves) + 1}")

    def close(self) -> None:
        self._rival.close()
        super().close()


@dataclass
class _Run:
    """One call of the learner's deposit: what it returned or raised, what it did, what the account holds."""

    returned: Any = None
    raised: BaseException | None = None
    runaway: bool = False
    reads: int = 0
    saves: list[_Save] = field(default_factory=list)
    waits: list[Any] = field(default_factory=list)
    deposits: int = 0
    balance: Any = None

    @property
    def statuses(self) -> list[int | None]:
        return [s.status for s in self.saves]


def _deposit_run(deposit: Callable[..., Any], lab: Session, *, rivals: int | None, max_attempts: int) -> _Run:
    key = _fresh("account")
    lab.client.save(lab.store_name, key, {"balance": ACCOUNT})
    run = _Run()

    def backoff(attempt: Any) -> float:
        run.waits.append(attempt)
        return 0.001

    client = _Crowded(lab.endpoint, rivals, max_attempts)
    try:
        run.returned = deposit(client, lab.store_name, key, DEPOSIT, max_attempts, backoff)
    except NotImplementedError:
        raise
    except _Runaway:
        run.runaway = True
    except Exception as exc:  # noqa: BLE001 - a deposit that gives up raises; the verdict says whether it should have
        run.raised = exc
    finally:
        client.close()
        run.reads, run.saves, run.deposits = len(client.reads), client.saves, client.deposits
        state = lab.client.get(lab.store_name, key)
        run.balance = state.value.get("balance") if state is not None and isinstance(state.value, dict) else None
        _cleanup(lab, [key])
    return run


def check_retry_loop(deposit: Callable[..., Any], lab: Session, metrics: Metrics | None = None) -> Verdict:
    """Call ``deposit(client, store, key, amount, max_attempts, backoff)`` three times on fresh accounts of 100:
    alone; with another writer saving between its read and its save twice; and with one doing so every time."""
    return _checked("retry_loop", "deposit", metrics, lambda: _check_retry_loop(deposit, lab))


def _statuses(run: _Run) -> str:
    return ", ".join(str(s) for s in run.statuses) or "none"


def _lost_update(run: _Run, expected: int) -> tuple[str, str]:
    """Why a crowded run lost the other writer's deposit, from what the saves carried."""
    said = (f"Another writer deposited 1 between your read and your save, and your save went through anyway: the "
            f"balance is {run.balance}, it should be {expected}. That deposit is lost.")
    if any(s.etag in (None, "") for s in run.saves):
        return said + " Your save carried no ETag, so the sidecar had nothing to compare.", (
            "Send the ETag of the read with the save (`etag=`), under first-write: then a save based on an old "
            "read is refused (409) and your loop tries again.")
    if any(s.concurrency == LAST_WRITE for s in run.saves):
        return said + " Your save said `last-write`, which tells Redis to ignore the ETag.", (
            "Save under first-write (`concurrency=\"first-write\"`), with the ETag of the read.")
    return said + " Your save carried a fresh ETag, but a balance computed from an older read.", (
        "Compute the new balance from the value of the same read whose ETag you send.")


def _check_retry_loop(deposit: Callable[..., Any], lab: Session) -> Verdict:
    v = _verdicts("retry_loop", "deposit")
    alone = _deposit_run(deposit, lab, rivals=0, max_attempts=5)
    if alone.raised is not None or alone.runaway:
        what = (f"raised {_raised(alone.raised)}" if alone.raised is not None
                else "kept saving after its save went through")
        return v(False, [f"Alone on an account of {ACCOUNT}, your deposit {what}."],
                 f"Read the account, save the balance + amount, return the attempt number. {STUCK}")
    if alone.balance != ACCOUNT + DEPOSIT:
        return v(False, [f"Alone on an account of {ACCOUNT}, a deposit of {DEPOSIT} left the balance at "
                         f"{alone.balance}, not {ACCOUNT + DEPOSIT}."],
                 "Save `{\"balance\": <the balance read> + amount}` under the same key.")
    did = [f"Alone: {len(alone.saves)} save, balance {ACCOUNT} → {alone.balance}"
           + ("." if alone.returned == 1 else f", but it returned {alone.returned!r}, not the 1 attempt it took.")]
    if alone.returned != 1:
        return v(False, did, "Return the number of the attempt that saved (1 when nobody is in the way).")

    crowded = _deposit_run(deposit, lab, rivals=2, max_attempts=5)
    expected = ACCOUNT + crowded.deposits + DEPOSIT
    if crowded.reads == 1 and len(crowded.saves) > 1:
        return v(False, [*did, f"With another writer in the way, you read the account once and re-sent the ETag of "
                         f"that read {len(crowded.saves)} times; every save was refused ({_statuses(crowded)})."],
                 "Read at the start of every attempt: only a fresh read gives the current ETag and balance.")
    if crowded.runaway:
        return v(False, [*did, "With another writer in the way twice, your loop went past `max_attempts` = 5."],
                 "Bound the loop: at most `max_attempts` attempts.")
    if crowded.raised is not None:
        return v(False, [*did, f"Another writer saved between your read and your save; your save was refused "
                         f"({_statuses(crowded)}) and your deposit raised {_raised(crowded.raised)}."],
                 "Catch the refusal (`ETagMismatch`, a 409), wait `backoff(attempt)` seconds and try again.")
    if crowded.balance != expected:
        said, fix = _lost_update(crowded, expected)
        return v(False, [*did, said], fix)
    if any(s.concurrency == LAST_WRITE for s in [*alone.saves, *crowded.saves]):
        return v(False, [*did, "Your saves said `last-write`. This store still compared the ETag, but Redis ignores "
                         "it under last-write: there your deposit would have overwritten the other writer's."],
                 "Save under first-write (`concurrency=\"first-write\"`), with the ETag of the read.")
    did.append(f"With another writer saving between your read and your save twice: {crowded.reads} reads, saves "
               f"answered {_statuses(crowded)}, balance {crowded.balance}: nothing lost.")
    if not crowded.waits:
        return v(False, did + ["Between those attempts your loop never called `backoff`: it retried at once."],
                 "After a refused save, sleep `backoff(attempt)` seconds (the attempt that was refused: 1, 2, …).")
    if list(crowded.waits) != [1, 2]:
        return v(False, did + [f"Your loop called `backoff` with {', '.join(map(repr, crowded.waits))}; after the "
                               "refusals of attempts 1 and 2 it should be `backoff(1)`, then `backoff(2)`."],
                 "Pass `backoff` the number of the attempt that was refused, so the wait can grow.")
    if crowded.returned != len(crowded.saves):
        return v(False, did + [f"It returned {crowded.returned!r}, but took {len(crowded.saves)} attempts."],
                 "Return the number of the attempt that saved.")
    did[-1] = did[-1][:-1] + f"; it waited `backoff(1)` and `backoff(2)` and returned {crowded.returned}."

    jammed = _deposit_run(deposit, lab, rivals=None, max_attempts=4)
    if jammed.runaway:
        return v(False, did + ["With another writer in the way every time and `max_attempts` = 4, your loop kept "
                               "going: the check stopped it at attempt 5."],
                 "Bound the loop: at most `max_attempts` attempts, then give up.")
    if jammed.raised is None:
        return v(False, did + [f"With another writer in the way every time, your deposit made {len(jammed.saves)} "
                               f"refused saves, then returned {jammed.returned!r} as if it had succeeded."],
                 "After the last attempt, raise (e.g. `etags.RetriesExhausted`): the caller must learn that the "
                 "deposit did not happen.")
    if len(jammed.saves) != 4:
        return v(False, did + [f"With another writer in the way every time, your deposit gave up after "
                               f"{len(jammed.saves)} attempts; `max_attempts` was 4."],
                 "Make exactly `max_attempts` attempts before giving up.")
    did.append(f"With another writer in the way every time and `max_attempts` = 4: 4 refused saves, then your "
               f"deposit raised `{type(jammed.raised).__name__}`, and the balance holds only the other writer's "
               "deposits.")
    return v(True, did)


# --- lesson 04: one attempt, run by the writers harness ------------------------------------------------------

_FLAGS = {  # what an attempt did wrong -> the sentence (with the count) and what to change, most telling first
    "no-etag": ("{n} of your saves carried no ETag: the sidecar had nothing to compare, so saves based on old "
                "reads went through.",
                "Save with the ETag you read (`etag=state.etag`) under first-write."),
    "last-write": ("{n} of your saves said `last-write`, which tells the store to ignore the ETag (Redis does).",
                   "Save under first-write (`concurrency=\"first-write\"`)."),
    "other-etag": ("{n} of your saves carried an ETag other than the one read in the same attempt.",
                   "Send the ETag of this attempt's read."),
    "several-saves": ("{n} of your attempts saved more than once: they retried on their own.",
                      "Make one read and one save; the harness does the retrying (and the backing off)."),
    "swallowed": ("{n} times a save was refused and your attempt returned as if it had saved: the harness counted "
                  "those as acknowledged.",
                  "Let the refusal (`ETagMismatch`) escape: the harness counts the conflict and tries again."),
    "no-read": ("{n} of your attempts saved without reading first.", "Read the counter, then save it + 1."),
    "no-save": ("{n} of your attempts returned without saving.", "Save the counter + 1 after reading it."),
}


def check_attempt(attempt: Callable[..., Any], lab: Session, metrics: Metrics | None = None, *, writers: int = 8,
                  operations: int = 5, seed: int = 7) -> Verdict:
    """Run ``attempt(client, store, key)`` as the attempt of ``run_writers``: ``writers`` writers over the session's
    sidecars, ``operations`` increments each of one fresh counter. Every save is recorded (which ETag, which
    concurrency, after which read); then the lost-update checker reads the history and the counter."""
    return _checked("attempt", "attempt", metrics,
                    lambda: _check_attempt(attempt, lab, writers=writers, operations=operations, seed=seed))


def _check_attempt(attempt: Callable[..., Any], lab: Session, *, writers: int, operations: int, seed: int) -> Verdict:
    v = _verdicts("attempt", "attempt")
    flags: Counter[str] = Counter()
    lock = threading.Lock()
    crashed: list[BaseException] = []
    store = lab.store_name

    def one(client: StateClient, task: WriterTask) -> AttemptOutcome:
        own = cast(_RecordingClient, client)
        own.begin()
        try:
            attempt(client, store, task.key)
        except NotImplementedError:
            raise AbortRun("not written") from None
        except DaprError as exc:
            sent = own.saves[-1].etag if own.saves else None
            read = own.reads[-1] if own.reads else None
            if isinstance(exc, SidecarUnavailable):
                return AttemptOutcome(UNKNOWN if isinstance(exc, SidecarTimeout) else ERROR, None, read, str(exc))
            if is_save_conflict(exc, had_etag=sent not in (None, "")):
                return AttemptOutcome(CONFLICT, exc.status or 409, read)
            return AttemptOutcome(UNKNOWN if exc.status >= 500 else ERROR, exc.status, read, str(exc))
        except Exception as exc:  # noqa: BLE001 - the learner's bug ends the run and becomes the verdict
            crashed.append(exc)
            raise AbortRun("crashed") from None
        found = _attempt_flags(own)
        if found:
            with lock:
                flags.update(found)
        return AttemptOutcome(OK, 204, own.reads[-1] if own.reads else None)

    config = WritersConfig(writers=writers, operations=operations, seed=seed, store=store, max_attempts=30,
                           base=0.001, cap=0.02, timeout=5.0)
    result = run_writers(lab.endpoints, config, attempt=one, client_factory=lambda ep: _RecordingClient(ep),
                         together=True, deadline=30.0)
    if result.fatal == "not written":
        raise NotImplementedError
    if crashed:
        return v(False, [f"Your attempt raised {_raised(crashed[0])}; the run stopped there."],
                 f"Fix the line the error points at. {STUCK}", result=result)
    sidecars = len(lab.endpoints)
    did = [f"{writers} writers × {operations} increments of one counter through {sidecars} "
           f"sidecar{'' if sidecars == 1 else 's'}: {result.acknowledged} acknowledged, {result.conflicts} refused "
           f"(409) and tried again by the harness" + (f", {result.gave_up} given up" if result.gave_up else "")
           + (", stopped at the deadline" if result.stopped_early else "") + "."]
    if result.findings:
        did.append("The checker: " + " ".join(result.sentences()[:2]))
    else:
        did.append(f"The checker: {result.sentences()[0]}")
    problems = [name for name in _FLAGS if flags[name]]
    if problems:
        did += [_FLAGS[name][0].format(n=flags[name]) for name in problems]
        return v(False, did, _FLAGS[problems[0]][1], result=result)
    if result.findings or result.lost_updates or not result.acknowledged:
        return v(False, did, "Read, then save the value read + 1 with that read's ETag under first-write.",
                 result=result)
    return v(True, did + ["Every save carried the ETag of its own read, under first-write."], result=result)


def _attempt_flags(client: _RecordingClient) -> list[str]:
    """What one attempt that returned normally did wrong (see ``_FLAGS``)."""
    if not client.saves:
        return ["no-save"]
    found = []
    if not client.reads:
        found.append("no-read")
    if len(client.saves) > 1:
        found.append("several-saves")
    if client.saves[-1].status != 204:  # refused, and the attempt returned as if saved
        found.append("swallowed")
    last = client.saves[-1]
    if last.etag in (None, ""):
        found.append("no-etag")
    elif last.etag != last.read:
        found.append("other-etag")
    if last.concurrency == LAST_WRITE:
        found.append("last-write")
    return found


# --- lesson 05: a backoff, drawn from and run by real writers ---------------------------------------------------

DRAWS = 200  # seeds per retry number when the check draws from a backoff
RETRIES = 10  # retry numbers 1..RETRIES are drawn
SLOW_DRAWS = 2.0  # seconds: a backoff whose draws take longer in all (or one call half that) is sleeping itself


def check_backoff(backoff: Callable[..., Any], lab: Session, metrics: Metrics | None = None,
                  against: Comparison | WritersConfig | None = None) -> Verdict:
    """Draw from ``backoff(attempt, rng)`` (random? replayable from ``rng``? growing? capped? full jitter?), then
    run real writers with it: the configuration of ``against`` (a ``Comparison`` of built-in policies, shown beside
    the learner's run, or a ``WritersConfig``; default ``WritersConfig()``). Base and cap come from it too."""
    return _checked("backoff", "backoff", metrics, lambda: _check_backoff(backoff, lab, against))


def _check_backoff(backoff: Callable[..., Any], lab: Session, against: Comparison | WritersConfig | None) -> Verdict:
    v = _verdicts("backoff", "backoff")
    if isinstance(against, Comparison) and against.results:
        config = next(iter(against.results.values())).config
    else:
        config = against if isinstance(against, WritersConfig) else WritersConfig(store=lab.store_name)
    problem, seen = _backoff_problem(backoff, config.base, config.cap)
    if problem:
        return v(False, [problem[0]], problem[1])
    result = run_writers(lab.endpoints, replace(config, policy="yours"), backoff=backoff, deadline=120.0)
    run = (f"With it, {config.writers} writers × {config.operations} increments needed "
           f"{result.attempts_per_success:.2f} attempts per success, {result.lost_updates} lost"
           + (f", {result.gave_up} given up" if result.gave_up else "") + ".")
    table = ""
    if isinstance(against, Comparison):
        rows = [{"policy": p, **{k: x for k, x in r.summary().items() if k != "policy"}}
                for p, r in against.results.items()]
        rows.append({"policy": "your backoff", **{k: x for k, x in result.summary().items() if k != "policy"}})
        table = key_table(rows, ("policy", "attempts per success", "conflicts", "lost updates", "wall time s"),
                          caption="The same writers: the built-in policies above, and yours")
        run += " The table puts your run beside the built-in policies (one run each: read the numbers, not a rank)."
    if result.lost_updates or result.findings or result.stopped_early:
        return v(False, [*seen, run], "A backoff only says how long to wait; if writers lost updates or ran out of "
                 "time, look at how long your waits are.", table=table, result=result)
    return v(True, [*seen, run], table=table, result=result)


def _backoff_problem(backoff: Callable[..., Any], base: float, cap: float) -> tuple[tuple[str, str] | None, list[str]]:
    """Draw from the backoff and judge the draws: (what is wrong and what to change, or None), what was seen."""
    draws: dict[int, list[float]] = {}
    started = time.perf_counter()
    for attempt in [*range(1, RETRIES + 1), 20, 40]:
        values: list[float] = []
        for seed in range(DRAWS if attempt <= RETRIES else 20):
            t0 = time.perf_counter()
            value = backoff(attempt, random.Random(seed))
            now = time.perf_counter()
            if now - t0 > SLOW_DRAWS / 4 or now - started > SLOW_DRAWS:
                calls = sum(map(len, draws.values())) + len(values) + 1
                return ((f"Drawing {calls} waits from your backoff took {now - started:.1f} s: it sleeps itself.",
                         "Return the number of seconds; the loop does the sleeping."), [])
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                return ((f"For retry {attempt} your backoff returned `{_short(repr(value), 40)}`.",
                         "Return the seconds to wait: a number, 0 or more."), [])
            values.append(float(value))
        draws[attempt] = values
    again = [backoff(3, random.Random(seed)) for seed in range(20)]
    if again != draws[3][:20]:
        i = next(i for i, (a, b) in enumerate(zip(again, draws[3][:20], strict=True)) if a != b)
        return ((f"Two writers with the same seed got different waits at retry 3 ({draws[3][i]:.4f} s and "
                 f"{again[i]:.4f} s): your randomness does not come from `rng` (the `random` module? the clock?).",
                 "Draw every random number from `rng`, the writer's own seeded generator, so a run can be replayed."),
                [])
    longest = {a: max(vals) for a, vals in draws.items()}
    over = [a for a, m in longest.items() if m > cap * (1 + 1e-9)]
    if over:
        return ((f"At retry {over[0]} your backoff waited up to {longest[over[0]]:.4g} s, beyond `cap` = {cap} s.",
                 "Never wait longer than `cap`, however many retries."), [])
    if all(len(set(vals)) == 1 for vals in draws.values()):
        if len({vals[0] for vals in draws.values()}) == 1:
            return ((f"Your backoff waits {draws[1][0]:.4g} s whatever the retry and the draw: a constant, with "
                     "no jitter and no growth.",
                     "Draw the wait at random from `rng`, between 0 and a bound that grows with each retry."), [])
        return ((f"Your backoff waits exactly {draws[1][0]:.4g}, {draws[2][0]:.4g}, {draws[3][0]:.4g} … s at "
                 "retries 1, 2, 3: it grows, but without jitter, so writers that collided retry in step.",
                 "Make the wait a random draw from `rng` between 0 and that growing bound."), [])
    if longest[1] < 0.4 * cap and longest[5] < 2.5 * longest[1]:
        return ((f"Your longest waits do not grow with the retry number: {longest[1]:.4g} s at retry 1, "
                 f"{longest[5]:.4g} s at retry 5.",
                 "Let the bound double with every retry, from `base`, until it reaches `cap`."), [])
    floor = {a: min(draws[a]) / longest[a] for a in range(1, RETRIES + 1) if longest[a] > 0}  # 200 draws each
    high = [a for a, ratio in floor.items() if ratio > 0.1]
    if high:
        return ((f"At retry {high[0]} your backoff never waits less than {floor[high[0]]:.0%} of its longest wait: "
                 "that is not full jitter, which draws the whole wait at random, from 0.",
                 "Draw the wait uniformly between 0 and the bound."), [])
    if not 0.45 * base <= longest[1] <= 2.2 * base:
        return ((f"At retry 1 your waits reach {longest[1]:.4g} s; with `base` = {base} s the bound should start at "
                 "about base (or twice base, with base · 2^attempt).", "Start the bound from `base`."), [])
    top = next((a for a in range(1, RETRIES + 1) if longest[a] >= 0.9 * cap), None)
    seen = ["Replayable: the same seed gives the same waits; different seeds give different ones.",
            f"The longest wait grows from {longest[1] * 1000:.1f} ms at retry 1"
            + (f" to the cap, {cap * 1000:g} ms, by retry {top}" if top else
               f" to {longest[RETRIES] * 1000:.1f} ms at retry {RETRIES}")
            + "; the draws spread from 0 up to that bound: full jitter."]
    return None, seen


# --- lesson 06: the SDK, an ETag and first-write ---------------------------------------------------------------


class _SdkRecorder:
    """A ``DaprClient`` stand-in: ``save_state`` calls are recorded (their arguments by name), everything else and
    the calls themselves go to the real client."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.saves: list[dict[str, Any]] = []

    def save_state(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = inspect.signature(self._client.save_state).bind(*args, **kwargs)
            self.saves.append(dict(bound.arguments))
        except TypeError:
            pass  # the real call below raises it, with the SDK's own message
        return self._client.save_state(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def check_sdk_save(save_if_unchanged: Callable[..., Any], d: Any, lab: Session,
                   metrics: Metrics | None = None) -> Verdict:
    """Call ``save_if_unchanged(d, store, key, value, etag)`` with the current ETag (True, saved), a stale one
    (False, nothing written) and a store that does not exist (not a conflict: the error must come through); every
    save must carry the ETag and must not say ``last_write`` (with no option the ETag is checked, so
    ``StateOptions(concurrency=Concurrency.first_write)`` is the explicit form of a right answer, not the only one)."""
    return _checked("sdk_save", "save_if_unchanged", metrics, lambda: _check_sdk_save(save_if_unchanged, d, lab))


def _grpc_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    try:
        return str(code().name) if callable(code) else ""
    except Exception:  # noqa: BLE001 - not a gRPC error after all
        return ""


def _sdk_why(recorder: _SdkRecorder, concurrency: Any) -> str:
    """What the learner's last save carried that explains a wrong outcome: no ETag, or last-write."""
    sent = recorder.saves[-1] if recorder.saves else {}
    if not sent.get("etag"):
        return " Your save carried no ETag."
    if getattr(sent.get("options"), "concurrency", None) == concurrency.last_write:
        return " Your save said `last_write`, which tells Redis to ignore the ETag."
    return ""


def _check_sdk_save(save_if_unchanged: Callable[..., Any], d: Any, lab: Session) -> Verdict:
    from dapr.clients.grpc._state import Concurrency

    v = _verdicts("sdk_save", "save_if_unchanged")
    store = lab.store_name
    current, stale = _fresh("ticket"), _fresh("ticket")
    recorder = _SdkRecorder(d)

    def value(key: str) -> str:
        return bytes(d.get_state(store, key).data).decode("utf-8", "replace")

    try:
        d.save_state(store, current, "open")
        try:
            saved = save_if_unchanged(recorder, store, current, "assigned", d.get_state(store, current).etag)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as what the learner's code did
            return v(False, [f"With the current ETag your function raised {_raised(exc)}."],
                     "With the ETag just read, the save goes through: call `d.save_state(store, key, value, "
                     "etag=etag, options=...)`.")
        if value(current) != "assigned" or saved is not True:
            what = "saved `assigned`" if value(current) == "assigned" else f"left `{value(current)}`"
            return v(False, [f"With the current ETag your function {what} and returned `{saved!r}`."
                             + _sdk_why(recorder, Concurrency)],
                     "Save with that ETag and return `True` when the save went through.")
        did = ["With the current ETag: saved, returned `True`."]
        d.save_state(store, stale, "open")
        old = d.get_state(store, stale).etag
        d.save_state(store, stale, "taken")  # another writer, since that read
        try:
            refused = save_if_unchanged(recorder, store, stale, "assigned", old)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - a conflict that escaped
            return v(False, [*did, f"With a stale ETag your function let {_raised(exc)} escape."],
                     "Catch `DaprGrpcError`; when `err.code()` is `grpc.StatusCode.ABORTED` (a stale ETag), return "
                     "`False`.")
        if value(stale) != "taken":
            return v(False, [*did, f"With a stale ETag your save went through and overwrote `taken`, the newer value "
                             f"(it returned `{refused!r}`)." + _sdk_why(recorder, Concurrency)],
                     "Pass the ETag (`etag=etag`) and `StateOptions(concurrency=Concurrency.first_write)`.")
        if refused is not False:
            return v(False, [*did, f"With a stale ETag nothing was written, but your function returned `{refused!r}`."],
                     "Return `False` when the sidecar refuses the ETag.")
        did.append("With a stale ETag: refused, returned `False`, and the newer value stayed.")
        try:
            other = save_if_unchanged(recorder, "no-such-store", _fresh("ticket"), "x", "1")
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - the right outcome: an error that is not a conflict came through
            code = _grpc_code(exc)
            did.append("For a store that does not exist your function let the error through"
                       + (f" (`{code}`)" if code else "") + ": it is not a conflict.")
        else:
            return v(False, [*did, f"For a store that does not exist your function returned `{other!r}`, as if the "
                             "ETag were stale; the sidecar answered `INVALID_ARGUMENT`."],
                     "Return `False` only for `grpc.StatusCode.ABORTED`; let any other error through (`raise`).")
    finally:
        _cleanup(lab, [current, stale])
    mine = [s for s in recorder.saves if s.get("store_name") == store]
    if any(not s.get("etag") for s in mine):
        return v(False, [*did, "But a save carried no ETag: without one the sidecar cannot tell a stale save from a "
                         "fresh one (here the store refused for another reason)."],
                 "Pass the ETag you were given in every save: `etag=etag`.")
    if any(getattr(s.get("options"), "concurrency", None) == Concurrency.last_write for s in mine):
        return v(False, [*did, "But your save said `last_write`: on Redis that makes the sidecar ignore the ETag, so "
                         "a stale save overwrites (this store happened to check it anyway)."],
                 "Drop `last_write`; `StateOptions(concurrency=Concurrency.first_write)` says what you mean.")
    if all(getattr(s.get("options"), "concurrency", None) == Concurrency.first_write for s in mine):
        did.append("Every save carried the ETag and `StateOptions(concurrency=first_write)`.")
    else:
        did.append("Every save carried the ETag, with no concurrency option: the sidecar checks an ETag unless a "
                   "save says `last_write`. `StateOptions(concurrency=Concurrency.first_write)` would say so in "
                   "the code.")
    return v(True, did)
