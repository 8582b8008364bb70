"""Lessons 01 and 02: saves sent as raw HTTP, checked through the request behind the learner's answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from statelab.lessons.exercises.verdict import Verdict, checked, cleanup, fresh, short, verdicts

if TYPE_CHECKING:
    from statelab.metrics import Metrics
    from statelab.session import Session


# --- what a raw HTTP answer shows of the request behind it (lessons 01 and 02) --------------------------------

_NOT_JSON = object()


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return short(text, limit)


def _state_url(lab: Session) -> str:
    return f"{lab.endpoint}/v1.0/state/{lab.store_name}"


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
            error = f"{data['errorCode']}: {short(str(data.get('message', '')))}"
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
    return checked("save", "save_orders", metrics, lambda: _check_save(save_orders, lab))


def _check_save(save_orders: Callable[..., Any], lab: Session) -> Verdict:
    tag = uuid.uuid4().hex[:6]
    orders = {f"order-{tag}-1": {"item": "tea", "qty": 1}, f"order-{tag}-2": {"item": "cake", "qty": 2}}
    try:
        answer = save_orders(_state_url(lab), json.loads(json.dumps(orders)))  # a copy: the check keeps its own
        states = {key: lab.client.get(lab.store_name, key) for key in orders}
    finally:
        cleanup(lab, orders)
    sent = _Sent.of(answer)
    stored = {key: state.value for key, state in states.items() if state is not None}
    right = [key for key, value in orders.items() if key in stored and stored[key] == value]
    v = verdicts("save", "save_orders")
    if len(right) == len(orders):
        if sent is None:
            return v(False, ["Both orders are saved: they read back as they were."],
                     f"Return the response of your request (your function returned `{short(repr(answer), 40)}`): "
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
        return v(False, [f"`{texts[0]}` reads back as the text `{short(stored[texts[0]], 60)}`, not as the JSON "
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
                         f"`{short(repr(answer), 40)}`, not the response, so the check cannot show what the sidecar "
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
    return checked("strong_save", "save", metrics, lambda: _check_strong_save(save, lab))


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
    key = fresh("strong")
    v = verdicts("strong_save", "save")
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
        cleanup(lab, [key])
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
