"""Lab 01: fix the how-to page's snippets (save, get, delete, the ETag flow)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from statelab.client import LAST_WRITE
from statelab.lab.learner_code import call, current_etag, described, fresh_key, raised, short, your_line
from statelab.lab.recording import Exchange, exchange_of
from statelab.lab.results import CheckResult, failed, passed

if TYPE_CHECKING:

    from statelab.lab.checker import Checker

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


def _item(ex: Exchange | None) -> dict | None:
    """The first item of a save's JSON array, if the exchange was one."""
    if ex is None or not isinstance(ex.body, list):
        return None
    return next((i for i in ex.body if isinstance(i, dict)), None)


def check_save(ck: Checker, save: Any) -> CheckResult:
    key, value = fresh_key("lab01-save"), {"item": "coffee", "qty": 2}
    with ck._watching_http() as wire:
        out, exc = call(save, ck.url, key, value)
    if exc is not None:
        return failed("save", raised(save, exc, SAVE_TASK))
    stored = ck.session.client.get(ck.store, key)
    posts = [e for e in wire if e.method in ("POST", "PUT")]
    last = posts[-1] if posts else None
    if stored is None:
        if isinstance(out, requests.Response) and last is None:
            last = exchange_of(out.request, out)
        return failed("save", f"Nothing was saved under `{key}`. " + _explain_refusal(last, ck.store))
    if stored.value != value:
        return failed("save", f"The store holds {short(json.dumps(stored.value))} under `{key}`, not "
                               f"{json.dumps(value)}: put the value into the item as it is.")
    if last is not None and isinstance(last.body, list):
        options = next((i.get("options") or {} for i in last.body if isinstance(i, dict) and i.get("key") == key), {})
        if options.get("consistency") != "strong":
            where = " (a `consistency` header is ignored)" if last.header("consistency") else ""
            return failed("save", "Saved, but not with strong consistency, which the page asks for" + where +
                                   ": put `\"options\": {\"consistency\": \"strong\"}` into the item.")
    if last is None:
        return passed("save", f"`{key}` holds {json.dumps(value)}. (The request did not go through `http`, so the check "
                               "could not see how it was sent: send with `http` to have strong consistency checked too.)")
    return passed("save", f"`{key}` holds {json.dumps(value)}: your {last.method} sent a JSON array with one item, "
                           f"answered {last.status}, with `options.consistency` strong inside the item.")


def check_get(ck: Checker, get: Any) -> CheckResult:
    client = ck.session.client
    key, value = fresh_key("lab01-get"), {"item": "tea", "qty": 1}
    client.save(ck.store, key, value)
    etag = current_etag(client, ck.store, key)
    with ck._watching_http() as wire:
        out, exc = call(get, ck.url, key)
    if exc is not None:
        return failed("get", raised(get, exc, GET_TASK))
    if isinstance(out, list) and len(out) == 2:
        out = tuple(out)
    if not (isinstance(out, tuple) and len(out) == 2):
        what = f"the response itself ({out!r})" if isinstance(out, requests.Response) else described(out)
        return failed("get", f"`get()` returned {what}; return a tuple `(value, etag)`: the body of the answer and its "
                              "`ETag` header, when the status is 200.")
    got, got_etag = out
    if got != value:
        if isinstance(got, str) and got == json.dumps(value, separators=(",", ":")):
            return failed("get", "The value came back as text: return `resp.json()`, not `resp.text`.")
        return failed("get", f"`get()` returned {short(repr(got))} as the value of `{key}`; the store holds "
                              f"{json.dumps(value)} (the body of the 200 answer).")
    if got_etag != etag:
        return failed("get", f"`get()` returned {got_etag!r} as the ETag; the store's ETag is {etag!r}: return the "
                              "`ETag` header of the answer.")
    gets = [e for e in wire if e.method == "GET"]
    if gets and gets[-1].query.get("consistency") not in (None, ["strong"]):
        return failed("get", f"The read asked for `consistency={gets[-1].query['consistency'][0]}`; the page wants "
                              "strong: `params={\"consistency\": \"strong\"}`.")
    if gets and "consistency" not in gets[-1].query:
        if gets[-1].header("consistency"):
            return failed("get", "`consistency` went as an HTTP header, as on the docs page, and the sidecar ignores "
                                  "it there: pass `params={\"consistency\": \"strong\"}` (a query parameter).")
        return failed("get", "The read did not ask for strong consistency: pass `params={\"consistency\": \"strong\"}`.")
    missing = fresh_key("lab01-missing")
    out, exc = call(get, ck.url, missing)
    if exc is not None:
        return failed("get", f"Reading a key that does not exist raised {type(exc).__name__}: {short(str(exc))}"
                              f"{your_line(exc)}. A missing key answers 204 with an empty body and no ETag header: "
                              "look at `resp.status_code` before reading them, and return `(None, None)`.")
    if out not in ((None, None), [None, None]):
        return failed("get", f"For a key that does not exist `get()` returned {short(repr(out))}; return "
                              "`(None, None)` (the sidecar answers 204, no body, no ETag).")
    where = ("`consistency=strong` went in the query string, where the sidecar reads it." if gets else
             "(The read did not go through `http`, so the check could not see whether it asked for strong consistency.)")
    return passed("get", "`get()` returns the value and its ETag on 200, and `(None, None)` on 204 for a missing key; "
                          + where)


def check_delete(ck: Checker, delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = fresh_key("lab01-delete")
    client.save(store, key, "v1")
    with ck._watching_http() as wire:
        out, exc = call(delete, ck.url, key)
    if exc is not None:
        return failed("delete", raised(delete, exc, DELETE_TASK))
    if client.get(store, key) is not None:
        deletes = [e for e in wire if e.method == "DELETE"]
        if not deletes:
            return failed("delete", f"`delete(url, {key!r})` left the key in the store: no DELETE request went through "
                                     "`http`. " + DELETE_TASK)
        request = deletes[-1]
        why = (f" to `{urlsplit(request.url).path}`, not to `url/key`"
               if not urlsplit(request.url).path.endswith("/" + key)
               else f", answered {request.status} {request.error_code}".rstrip())
        return failed("delete", f"`delete(url, {key!r})` left the key in the store: your DELETE went{why}. " + DELETE_TASK)
    if out is not True:
        return failed("delete", f"The key is gone, but `delete()` returned {out!r}: return True when the sidecar "
                                 "answers 204.")
    client.save(store, key, "v1")
    stale = current_etag(client, store, key)
    client.save(store, key, "v2")  # someone else saves: `stale` is now old
    with ck._watching_http() as wire:
        out, exc = call(delete, ck.url, key, stale)
    after = client.get(store, key)
    deletes = [e for e in wire if e.method == "DELETE"]
    if after is None:
        sent = deletes[-1].header("If-Match") if deletes else None
        elsewhere = (" (an ETag in the query string is ignored)" if deletes and any("etag" in k.lower()
                                                                                   for k in deletes[-1].query) else "")
        why = (f"it sent no `If-Match` header{elsewhere}, so the sidecar deleted whatever was there: send the ETag "
               "as `headers={\"If-Match\": etag}`" if deletes and not sent
               else "send the ETag in an `If-Match` header")
        return failed("delete", f"A delete with a stale ETag removed `{key}`, which someone had saved again after "
                                 f"that ETag was read: {why}.")
    if exc is not None:
        return failed("delete", f"A delete with a stale ETag raised {type(exc).__name__}{your_line(exc)}: the "
                                 "sidecar answers 409 there, which is expected. Return False instead of raising.")
    if out is not False:
        return failed("delete", f"The sidecar refused the stale delete (409), but `delete()` returned {out!r}: "
                                 "return False on 409, so the caller knows nothing was deleted.")
    current = after.etag
    out, exc = call(delete, ck.url, key, current)
    if exc is not None or out is not True or client.get(store, key) is not None:
        return failed("delete", "With the current ETag the delete should go through (204) and return True; "
                                 f"it returned {out!r}" + (f" and raised {type(exc).__name__}" if exc else "") + ".")
    return passed("delete", "`delete()` removes a key (204 → True); with a stale ETag in `If-Match` the sidecar "
                             "answers 409, the newer value stays, and `delete()` says so (False); with the current "
                             "ETag it deletes.")


def check_etag_flow(ck: Checker, get: Any, update: Any, delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = fresh_key("lab01-k1")
    client.save(store, key, "Some Data")
    out, exc = call(get, ck.url, key)
    if exc is not None or not (isinstance(out, (tuple, list)) and len(out) == 2) or not out[1]:
        return failed("etag_flow", "This flow starts with your `get()`, which does not return `(value, etag)` "
                                    "yet: make its check pass first.")
    etag = out[1]
    with ck._watching_http() as wire:
        ok, exc = call(update, ck.url, key, "New Data", etag)
    if exc is not None:
        return failed("etag_flow", raised(update, exc, UPDATE_TASK))
    state = client.get(store, key)
    posts = [e for e in wire if e.method in ("POST", "PUT")]
    last = posts[-1] if posts else None
    item = _item(last)
    if item is not None:
        if item.get("etag") != etag:
            ignored = " (an `If-Match` header is ignored on a save)" if last is not None and last.header("If-Match") else ""
            sent = ("no ETag" if not item.get("etag") else
                    f"the ETag {short(repr(item.get('etag')), 40)}, not the one it was given ({etag!r})")
            return failed("etag_flow", f"`update()` saved an item with {sent}{ignored}, so the sidecar cannot tell a "
                                        "stale update from a current one: it would overwrite a newer version it never "
                                        "saw. Put the `etag` argument into the item: `\"etag\": etag`.")
        if (item.get("options") or {}).get("concurrency") == LAST_WRITE:
            return failed("etag_flow", "`update()` sends `\"concurrency\": \"last-write\"`, which says \"overwrite "
                                        "whatever is there\": Redis then ignores the ETag, so a stale update goes "
                                        "through (SQLite and in-memory check it anyway). Say `first-write`, or leave "
                                        "concurrency out.")
    if state is not None and state.value == "New Data" and ok is not True:
        return failed("etag_flow", f"`update()` with the ETag just read saved \"New Data\", but returned {ok!r}: return "
                                    "True when the sidecar answers 204, so the caller knows it worked.")
    if state is None or state.value != "New Data":
        why = _explain_refusal(last, store) if (last is None or last.status != 204) else ""
        return failed("etag_flow", f"`update()` with the ETag just read should save \"New Data\" and return True; it "
                                    f"returned {ok!r} and the store holds {short(repr(state.value if state else None))}. "
                                    + (why or UPDATE_TASK))
    with ck._watching_http() as wire:
        ok, exc = call(update, ck.url, key, "Newer Data", etag)  # the same ETag again: stale now
    state = client.get(store, key)
    if state is None or state.value != "New Data":
        item = _item(next((e for e in reversed(wire) if e.method in ("POST", "PUT")), None))
        why = (f"the item carried the ETag {item.get('etag')!r}, not the stale one `update()` was given: use the `etag` "
               "argument, do not read a fresh one" if item is not None and item.get("etag") not in (None, etag) else
               "the ETag must go in the item, without `last-write`, so the sidecar can refuse it (409)")
        return failed("etag_flow", "A second `update()` with the now stale ETag changed the value to "
                                    f"{short(repr(state.value if state else None))}: {why}.")
    if exc is not None:
        return failed("etag_flow", f"With a stale ETag the sidecar answers 409 and `update()` raised "
                                    f"{type(exc).__name__}{your_line(exc)}: that is the expected answer, not an error. "
                                    "Look at the status and return False.")
    if ok is not False:
        return failed("etag_flow", f"The stale update was refused (409), but `update()` returned {ok!r}: return False "
                                    "so the caller knows to re-read.")
    out, exc = call(get, ck.url, key)
    new_etag = out[1] if exc is None and isinstance(out, (tuple, list)) and len(out) == 2 else None
    if not new_etag or new_etag == etag:
        return failed("etag_flow", "After the update, `get()` should return the new version's ETag.")
    gone, exc = call(delete, ck.url, key, new_etag)
    if exc is not None or gone is not True or client.get(store, key) is not None:
        return failed("etag_flow", "The last step, `delete()` with the current ETag, should delete the key and "
                                    "return True: make the `delete` check pass first.")
    return passed("etag_flow", "The page's flow works: read the ETag, save with it (204 → True), the same ETag again "
                                "is stale (409 → False, nothing changed), read the new ETag, delete with it (204).")
