"""Lab 03: a delete that only removes the version it read, and create-if-absent."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from statelab.client import FIRST_WRITE
from statelab.errors import (
    DaprError,
    ETagMismatch,
)
from statelab.lab.learner_code import call, current_etag, fresh_key, is_placeholder, raised, short, your_line
from statelab.lab.recording import recording_client
from statelab.lab.results import CheckResult, failed, passed
from statelab.writers import run_threads

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.lessons.etags import Trace
    from statelab.session import Session

# --- lab 03: safe delete and create-if-absent -----------------------------------------------------------

SAFE_DELETE_TASK = ("Write `safe_delete(client, store, key, etag)`: delete `key` only if it is still at version "
                    "`etag` (`client.delete(store, key, etag=etag)` sends it in `If-Match`); let `ETagMismatch` "
                    "reach the caller.")
CREATE_TASK = ("Write `create_if_absent(client, store, key, value)`: save with `concurrency=\"first-write\"` and no "
               "ETag, so the store refuses it when the key exists; let that error reach the caller.")


def check_safe_delete(ck: Checker, safe_delete: Any) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = fresh_key("lab03-cart")
    client.save(store, key, {"items": []})
    etag = current_etag(client, store, key)
    rc = recording_client(ck.session)
    _, exc = call(safe_delete, rc, store, key, etag)
    if exc is not None:
        return failed("safe_delete", raised(safe_delete, exc, SAFE_DELETE_TASK))
    if client.get(store, key) is not None:
        return failed("safe_delete", "With the current ETag, `safe_delete()` should delete the key; it is still there. "
                                      + SAFE_DELETE_TASK)
    # A reads (etag), B adds an item, A deletes with what it read.
    client.save(store, key, {"items": []})
    stale = current_etag(client, store, key)
    client.save(store, key, {"items": ["coffee"]})
    rc = recording_client(ck.session)
    out, exc = call(safe_delete, rc, store, key, stale)
    after = client.get(store, key)
    deletes = [c for c in rc.calls if c.kind == "delete" and key in c.keys]
    if after is None:
        sent = deletes[-1].etags.get(key) if deletes else None
        why = ("The delete carried no ETag: pass `etag=etag` to `client.delete`." if deletes and not sent else
               "Delete with the ETag you were given, and only with it.")
        return failed("safe_delete", "Someone added coffee to the cart after the ETag was read, and `safe_delete()` "
                                      f"deleted the cart anyway. {why}")
    if after.value != {"items": ["coffee"]}:
        return failed("safe_delete", f"The cart should still hold the coffee; it holds {short(repr(after.value))}.")
    if exc is None and out is not False:
        return failed("safe_delete", "The sidecar refused the stale delete (409) and the cart survived, but "
                                      "`safe_delete()` returned normally: the caller would think the cart is gone. "
                                      "Let `ETagMismatch` propagate (or return False).")
    if exc is not None and not isinstance(exc, ETagMismatch):
        return failed("safe_delete", f"On a stale ETag `safe_delete()` raised {type(exc).__name__}{your_line(exc)}; "
                                      "let the client's `ETagMismatch` (409) through unchanged.")
    aba = " (On Redis an ETag is a counter that restarts at 1 when a key is deleted and created again, so an ETag " \
          "from before a delete can match the new key: compare values too if keys are re-created.)" \
        if ck.session.store_type == "state.redis" else ""
    return passed("safe_delete", "With the ETag just read the cart is deleted; with a stale one the sidecar answers "
                                  f"409, the newer cart survives and the caller is told.{aba}")


def check_create_if_absent(ck: Checker, create: Any, creators: int) -> CheckResult:
    client, store = ck.session.client, ck.store
    key = fresh_key("lab03-job")
    _, exc = call(create, recording_client(ck.session), store, key, {"owner": "first"})
    if exc is not None:
        return failed("create_if_absent", raised(create, exc, CREATE_TASK))
    state = client.get(store, key)
    if state is None or state.value != {"owner": "first"}:
        return failed("create_if_absent", f"On a missing key `create_if_absent()` should create it; the store holds "
                                           f"{short(repr(state.value if state else None))}. " + CREATE_TASK)
    _, exc = call(create, recording_client(ck.session), store, key, {"owner": "second"})
    state = client.get(store, key)
    if state is None or state.value != {"owner": "first"}:
        return failed("create_if_absent", "A second `create_if_absent()` on the same key replaced the first owner: a "
                                           "plain save is last-write-wins. Save with `concurrency=\"first-write\"` and "
                                           "no ETag.")
    if exc is None:
        return failed("create_if_absent", "On a key that already exists `create_if_absent()` returned normally, so "
                                           "the caller would believe it created it. Let the sidecar's refusal reach "
                                           "the caller.")
    # Check-then-act: someone creates the key right after this creator's read (if it reads at all).
    key2 = fresh_key("lab03-job")
    rc = recording_client(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, {"owner": "other"}, concurrency=FIRST_WRITE))
    _, exc = call(create, rc, store, key2, {"owner": "me"})
    state = client.get(store, key2)
    if key2 in rc.interposed and state is not None and state.value == {"owner": "me"}:
        return failed("create_if_absent", "Your function checks whether the key exists and then saves: someone created "
                                           "it between the two, and your save overwrote theirs. Let the store decide "
                                           "in one request: first-write without an ETag.")
    # The race: `creators` threads released together.
    key3 = fresh_key("lab03-lock")
    gate = threading.Barrier(creators)
    outcomes: list[tuple[int, Exception | None, int | None]] = []
    lock = threading.Lock()

    def creator(i: int) -> None:
        try:
            with recording_client(ck.session) as own:
                gate.wait()
                _, err = call(create, own, store, key3, {"owner": f"creator-{i}"})
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
        return failed("create_if_absent", f"{creators} creators raced for one key and {len(winners)} were told they "
                                           "created it; exactly one must win.")
    if state is None or state.value != {"owner": f"creator-{winners[0]}"}:
        return failed("create_if_absent", f"creator-{winners[0]} was told it won, but the store holds "
                                           f"{short(repr(state.value if state else None))}.")
    return passed("create_if_absent", f"A missing key is created; an existing one is refused and kept; of {creators} "
                                       f"creators racing for one key exactly one won (creator-{winners[0]}), the "
                                       f"others got {', '.join(map(str, losers))}.")


LOSER_STATUS = {"redis": 500, "sqlite": 409, "in-memory": 409}  # first-write over a first-write key: docs/dapr-behaviour.md §12


def check_loser_status(ck: Checker, loser_status: Any) -> CheckResult:
    if is_placeholder(loser_status) or not isinstance(loser_status, dict):
        return failed("loser_status", "`loser_status` is still the placeholder: give a dict "
                                       "`{\"redis\": ..., \"sqlite\": ..., \"in-memory\": ...}` with the status each "
                                       "store answers a creator that loses the race.")
    own = ck.session.store_type.removeprefix("state.")
    measured = ck._last_race[0] if len(ck._last_race) == 1 else None
    if measured is None:  # no race seen yet: make two first-write creates of one key
        key = fresh_key("lab03-probe")
        ck.session.client.save(ck.store, key, 1, concurrency=FIRST_WRITE)
        try:
            ck.session.client.save(ck.store, key, 2, concurrency=FIRST_WRITE)
            measured = 204
        except DaprError as exc:
            measured = exc.status
    guess = loser_status.get(own)
    if own in LOSER_STATUS and guess != measured:
        return failed("loser_status", f"On this lab's store ({own}) the losers got {measured}, and you predicted "
                                       f"{guess!r}. Look at the statuses in the race above.")
    wrong = {s: loser_status.get(s) for s, want in LOSER_STATUS.items() if loser_status.get(s) != want}
    if wrong:
        store, guess = next(iter(wrong.items()))
        return failed("loser_status", f"For {store} you predicted {guess!r}. Lesson 03's store matrix shows what each "
                                       "store answers to first-write without an ETag on a key created with first-write.")
    return passed("loser_status", f"Right: here ({own}) the losers got {measured}. SQLite and in-memory answer 409; "
                                   "Redis answers 500 ERR_STATE_SAVE, because it marks keys created with first-write and "
                                   "refuses later writes without an ETag inside its script, and Dapr maps that to 409 "
                                   "only when the request carried an ETag. Code that treats only 409 as \"already "
                                   "exists\" breaks on Redis.")


def aba_delete(session: Session) -> Trace:
    """Delete with an ETag read before the key was deleted and created again (lab 03's "going further")."""
    from statelab.lessons.etags import Step, Trace

    client, store = session.client, session.store_name
    key = fresh_key("lab03-aba")
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
