"""Lab 03: a delete that only removes the version it read, and create-if-absent."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statelab.client import FIRST_WRITE
from statelab.errors import (
    DaprError,
    ETagMismatch,
)
from statelab.lab.learner_code import (
    call,
    current_etag,
    described,
    fresh_key,
    is_placeholder,
    raised,
    short,
    your_line,
)
from statelab.lab.recording import Call, recording_client
from statelab.lab.results import CheckResult, failed, passed
from statelab.writers import run_threads

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.lessons.etags import Trace
    from statelab.session import Session

# --- lab 03: safe delete and create-if-absent -----------------------------------------------------------

SAFE_DELETE_TASK = ("Write `safe_delete(client, store, key, etag)`: delete `key` only if it is still at version "
                    "`etag`, in one request the store decides (how does a delete carry an ETag?); let the refusal "
                    "(`ETagMismatch`) reach the caller.")
CREATE_TASK = ("Write `create_if_absent(client, store, key, value)`: create `key` only if nobody has it, in one request "
               "the store decides (lesson 03's store matrix: which save does the store refuse when the key exists?); let "
               "that refusal reach the caller.")
RACE_RUNS = 3  # the creators' race is run again (fresh key) when their saves did not overlap, at most this often


def _told(exc: Exception | None, out: Any) -> str:
    """How a learner function told its caller that nothing happened: "" if it did not."""
    if exc is not None:
        return f"{type(exc).__name__} reached the caller"
    if out is False:
        return "it returned False"
    return ""


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
        deletes = [c for c in rc.calls if c.kind == "delete" and key in c.keys]
        what = ("it sent no delete through the `client` it was given" if not deletes else
                f"its delete answered {deletes[-1].status}")
        return failed("safe_delete", f"With the current ETag, `safe_delete()` should delete the key; it is still there "
                                      f"({what}). " + SAFE_DELETE_TASK)
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
        why = ("The delete carried no ETag: pass `etag=etag` to `client.delete`, so the store compares it (`If-Match`)."
               if deletes and not sent else "Delete with the ETag you were given, and only with it.")
        return failed("safe_delete", "Someone added coffee to the cart after the ETag was read, and `safe_delete()` "
                                      f"deleted the cart anyway. {why}")
    if after.value != {"items": ["coffee"]}:
        return failed("safe_delete", f"The cart should still hold the coffee; it holds {short(repr(after.value))}.")
    stale_told = _told(exc, out)
    if not stale_told:
        return failed("safe_delete", "The sidecar refused the stale delete (409) and the cart survived, but "
                                      f"`safe_delete()` returned {out!r}: the caller would think the cart is gone. Let "
                                      "`ETagMismatch` propagate (or return False).")
    if exc is not None and not isinstance(exc, ETagMismatch):
        return failed("safe_delete", f"On a stale ETag `safe_delete()` raised {type(exc).__name__}{your_line(exc)}; "
                                      "let the client's `ETagMismatch` (409) through unchanged, so the caller can tell "
                                      "\"changed since you read it\" from a real failure.")
    # Check-then-delete: the customer adds coffee right after this function's own read (if it reads at all).
    client.save(store, key, {"items": []})
    current = current_etag(client, store, key)
    rc = recording_client(ck.session)
    rc.interpose(key, lambda: client.save(store, key, {"items": ["tea"]}))
    call(safe_delete, rc, store, key, current)
    after = client.get(store, key)
    if key in rc.interposed and after is None:
        deletes = [c for c in rc.calls if c.kind == "delete" and key in c.keys]
        sent = deletes[-1].etags.get(key) if deletes else None
        how = "without an ETag" if not sent else "with the ETag it had just read, not the one it was given"
        return failed("safe_delete", "Your function reads the cart, compares, and then deletes "
                                      f"{how}: the customer added tea between your read and your delete, and the cart "
                                      "was deleted anyway. Comparing first is a race; send the ETag you were given with "
                                      "the delete (`etag=etag`), so the store compares in the same request.")
    aba = " (On Redis an ETag is a counter that restarts at 1 when a key is deleted and created again, so an ETag " \
          "from before a delete can match the new key: compare values too if keys are re-created.)" \
        if ck.session.store_type == "state.redis" else ""
    return passed("safe_delete", "With the ETag just read the cart is deleted; with a stale one the sidecar answered "
                                  f"409, the newer cart survived and the caller was told ({stale_told}).{aba}")


def _create_sent(calls: list[Call], key: str) -> str:
    """What a creator's save said, in the terms of the fix: "" when it was first-write without an ETag."""
    saves = [c for c in calls if c.kind in ("save", "transaction") and key in c.keys]
    if not saves:
        return "it sent no save"
    last = saves[-1]
    if last.concurrency.get(key) != FIRST_WRITE:
        read = any(c.kind == "get" and key in c.keys for c in calls[:calls.index(last)])
        return ("it read first and then saved with a plain save (last-write-wins)" if read
                else "its save was a plain save (last-write-wins)")
    if last.etags.get(key):
        return "its first-write save carried the ETag it had just read, so the store saw an up-to-date update, not a create"
    return ""


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
    rc = recording_client(ck.session)
    out, exc = call(create, rc, store, key, {"owner": "second"})
    state = client.get(store, key)
    if state is None or state.value != {"owner": "first"}:
        sent = _create_sent(rc.calls, key) or "its save went through"
        return failed("create_if_absent", "A second `create_if_absent()` on the same key replaced the first owner: "
                                           f"{sent}. Create with a save the store refuses when the key exists: "
                                           "`concurrency=\"first-write\"` and no ETag.")
    if not _told(exc, out):
        return failed("create_if_absent", f"On a key that already exists the store refused the save and the first owner "
                                           f"stayed, but `create_if_absent()` returned {out!r}, so the caller would "
                                           "believe it created the key. Let the sidecar's refusal reach the caller (or "
                                           "return False).")
    # Check-then-act: someone creates the key right after this creator's read (if it reads at all).
    key2 = fresh_key("lab03-job")
    rc = recording_client(ck.session)
    rc.interpose(key2, lambda: client.save(store, key2, {"owner": "other"}, concurrency=FIRST_WRITE))
    call(create, rc, store, key2, {"owner": "me"})
    state = client.get(store, key2)
    if key2 in rc.interposed:
        sent = _create_sent(rc.calls, key2)
        if state is not None and state.value == {"owner": "me"}:
            return failed("create_if_absent", "Your function checks whether the key exists and then saves: someone "
                                               "created it between the two, and your save overwrote theirs. Checking "
                                               "first is a race. Drop the read and let the store decide in one request: "
                                               "save with `concurrency=\"first-write\"` and no ETag.")
        if sent:
            return failed("create_if_absent", f"Your function checks whether the key exists and then saves, and {sent}. "
                                               "Someone created the key between your read and your save; this time the "
                                               "store refused your save only because the other creator used first-write "
                                               "(on Redis a plain save over a first-write key is refused), but against "
                                               "a plain save yours would have overwritten theirs. Drop the read and save "
                                               "with `concurrency=\"first-write\"` and no ETag: one request, and the "
                                               "store decides.")
    # The race: `creators` threads released together, again if their requests did not overlap.
    for _ in range(RACE_RUNS):
        race = _race(ck.session, create, creators)
        if race.overlapping >= 2:  # at least two creates in flight at once: a real race
            break
    ck._last_race = race.loser_statuses
    state = client.get(store, race.key)
    winners = race.winners
    if len(winners) != 1:
        causes = sorted({why for why in race.sent.values() if why})
        cause = f" Of the creators' saves: {'; '.join(causes)}." if causes else ""
        holds = short(repr(state.value if state else None))
        return failed("create_if_absent", f"{creators} creators, released together, raced for one key and "
                                           f"{len(winners)} were told they created it (the store holds {holds}); "
                                           f"exactly one must win.{cause} Create with one request the store refuses "
                                           "when the key exists (`concurrency=\"first-write\"`, no ETag) and let the "
                                           "refusal reach each loser.")
    if state is None or state.value != {"owner": f"creator-{winners[0]}"}:
        return failed("create_if_absent", f"creator-{winners[0]} was told it won, but the store holds "
                                           f"{short(repr(state.value if state else None))}: its create did not stick.")
    if race.overlapping < 2:
        return failed("create_if_absent", f"In {RACE_RUNS} races of {creators} creators released together, no two of "
                                           "their saves were ever in flight at the same time, so the race tested "
                                           "nothing. Does your function make creators wait for each other (a lock, a "
                                           "sleep)? Another app instance would not share that lock. Make one request "
                                           "per create.")
    statuses = ", ".join(f"{n}× {s}" for s, n in sorted(Counter(race.statuses).items())) or "no status"
    told = sorted({race.told[i] for i in race.told if i != winners[0]})
    return passed("create_if_absent", f"A missing key is created; an existing one is refused and kept; of {creators} "
                                       f"creators released together ({race.overlapping} of their saves in flight at "
                                       f"the same time) exactly one won (creator-{winners[0]}), the others got {statuses} and "
                                       f"were told ({'; '.join(told)}).")


@dataclass
class _Race:
    key: str
    winners: list[int]
    overlapping: int  # the most creators whose saves were in flight at one moment
    statuses: list[int]  # what the losers' last saves answered
    told: dict[int, str]  # creator -> how it was told it lost ("" for the winners)
    sent: dict[int, str]  # creator -> what its save said that a create should not ("" when right)

    @property
    def loser_statuses(self) -> list[int]:
        return sorted(set(self.statuses))


def _race(session: Session, create: Any, creators: int) -> _Race:
    """``creators`` threads, each with its own client, released by one barrier to create one fresh key."""
    key = fresh_key("lab03-lock")
    gate = threading.Barrier(creators)
    lock = threading.Lock()
    spans: dict[int, tuple[float, float]] = {}  # creator -> its last save, sent and answered
    told: dict[int, str] = {}
    sent: dict[int, str] = {}
    statuses: list[int] = []

    def creator(i: int) -> None:
        try:
            with recording_client(session) as own:
                gate.wait()
                out, err = call(create, own, session.store_name, key, {"owner": f"creator-{i}"})
                saves = [c for c in own.calls if c.kind in ("save", "transaction") and key in c.keys]
                status = saves[-1].status if saves else None
                what = _create_sent(own.calls, key)
        except Exception as exc:  # noqa: BLE001 - never a thread traceback on stderr
            out, err, status, what, saves = None, exc, None, "", []
        with lock:
            if saves:
                spans[i] = (saves[-1].started, saves[-1].ended)
            told[i] = _told(err, out)
            sent[i] = what
            if told[i] and status is not None:
                statuses.append(status)

    run_threads([threading.Thread(target=creator, args=(i,), daemon=True) for i in range(creators)], gate=gate)
    overlapping = max((sum(b <= t < e for b, e in spans.values()) for t, _ in spans.values()), default=0)
    winners = sorted(i for i, how in told.items() if not how)
    return _Race(key, winners, overlapping, statuses, told, sent)


LOSER_STATUS = {"redis": 500, "sqlite": 409, "in-memory": 409}  # first-write over a first-write key: docs/dapr-behaviour.md §12


def check_loser_status(ck: Checker, loser_status: Any) -> CheckResult:
    shape = "`{\"redis\": ..., \"sqlite\": ..., \"in-memory\": ...}`"
    if is_placeholder(loser_status):
        return failed("loser_status", f"`loser_status` is still the placeholder `...`: give a dict {shape} with the "
                                       "HTTP status each store answers a creator that loses the race.")
    if not isinstance(loser_status, dict):
        return failed("loser_status", f"`loser_status` is {described(loser_status)}, but the stores do not all answer "
                                       f"the same: give a dict {shape}, one status per store.")
    if missing := [s for s in LOSER_STATUS if s not in loser_status]:
        return failed("loser_status", f"`loser_status` has no prediction for {', '.join(missing)}: give one status per "
                                       f"store, {shape}.")
    if texts := [s for s in LOSER_STATUS if not isinstance(loser_status[s], int) or isinstance(loser_status[s], bool)]:
        return failed("loser_status", f"The prediction for {texts[0]} is {described(loser_status[texts[0]])}: write the "
                                       "HTTP status as a number, e.g. 404 rather than \"404\".")
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
    matrix = ("Lesson 03's store matrix has the row: first-write without an ETag, on a key that was created with "
              "first-write.")
    guess = loser_status.get(own)
    if own in LOSER_STATUS and guess != measured:
        return failed("loser_status", f"On this lab's store ({own}) the losers got {measured}, and you predicted "
                                       f"{guess!r} for {own}. {matrix}")
    wrong = {s: loser_status.get(s) for s, want in LOSER_STATUS.items() if loser_status.get(s) != want}
    if wrong:
        store, guess = next(iter(wrong.items()))
        return failed("loser_status", f"You predicted {guess!r} for {store}, but that is not what {store} answers a "
                                       f"losing creator. {matrix}")
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
