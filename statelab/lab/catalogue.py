"""The catalogue of lab answers: what learners actually write, and what each check must say to it.

Every ``Answer`` is one learner's answer to one check of one lab: a short title in an instructor's words, the
learner's code (small functions, written as a learner would, defining the names the check takes), the verdict
the check must give (``passes``) and the words its message must contain (``hint``). Names an answer does not
define come from the lab's own answer (``REFERENCE``: the lab notebooks' solution cells, word for word), so an
answer that gets only ``max_attempts`` wrong is just ``max_attempts = "20"``.

Most answers are wrong in a way learners really are wrong (no ETag, last-write, a swallowed 409, a retry
inside ``attempt``, a backoff without jitter or cap, check-then-act, a non-transactional transfer, strong where
eventual suffices…); some are right in a way the lab's answer is not (an ETag without a concurrency option, a
bulk read, a ``False`` instead of an exception). ``stores`` says where a verdict holds: everywhere, except lab
05's measurements, which only Redis with a replica can make.

``tests/labs/test_catalogue.py`` runs every answer through the real ``Checker`` against real sidecars, on
every store (``run``): a wrong answer that passes, a right one that fails, or a message without its words is a
failing test. The instructor guide (``labs/INSTRUCTOR.md``) is generated from this module
(``python -m statelab.lab.guide``), so what it says the checker answers is what the tests hold it to.
"""

from __future__ import annotations

import linecache
import re
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.lab.results import CheckResult

STORES = ("in-memory", "sqlite", "redis")


def _code(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


@dataclass(frozen=True)
class Answer:
    """One learner answer to one check, the verdict the check must give it and the words its message must contain."""

    lab: str  # the lab notebook's name, e.g. "02_increment_lab"
    check: str  # the Checker method, e.g. "attempt"
    title: str  # what the answer does, e.g. "sends the ETag but with explicit last-write"
    code: str  # the learner's code; names it does not define come from the lab's answer (REFERENCE)
    passes: bool  # ✓ or ✗
    hint: tuple[str, ...]  # what the check's message must contain, word for word
    stores: tuple[str, ...] = STORES  # the stores on which this verdict holds

    @property
    def mark(self) -> str:
        return "✓" if self.passes else "✗"

    @property
    def id(self) -> str:
        """A stable, readable id: ``02-attempt-sends-the-etag-but-with-explicit-last-write``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")
        return f"{self.lab[:2]}-{self.check}-{slug}"


# --- the labs' own answers, word for word from their solution cells -----------------------------------------------

REFERENCE: dict[str, dict[str, str]] = {
    "01_fix_the_docs_lab": {
        "save": _code('''
            # ✏️ save one item: a JSON array, strong consistency in the item's options; return the response
            def save(url, key, value):
                return http.post(url, json=[{"key": key, "value": value, "options": {"consistency": "strong"}}])
        '''),
        "get": _code('''
            # ✏️ read a key: (value, etag) on 200, (None, None) on 204; consistency=strong as a query parameter
            def get(url, key):
                resp = http.get(f"{url}/{key}", params={"consistency": "strong"})
                return (resp.json(), resp.headers["ETag"]) if resp.status_code == 200 else (None, None)
        '''),
        "delete": _code('''
            # ✏️ delete a key, with If-Match when an etag is given; True on 204, False on 409
            def delete(url, key, etag=None):
                resp = http.delete(f"{url}/{key}", headers={"If-Match": etag} if etag else {})
                return resp.status_code == 204
        '''),
        "update": _code('''
            # ✏️ save one item with its etag and first-write; True on 204, False on 409 (stale etag)
            def update(url, key, value, etag):
                item = {"key": key, "value": value, "etag": etag, "options": {"concurrency": "first-write"}}
                return http.post(url, json=[item]).status_code == 204
        '''),
    },
    "02_increment_lab": {
        "attempt": _code('''
            # ✏️ one attempt: read the counter and its ETag, save +1 with that ETag and first-write
            def attempt(client, store, key):
                state = client.get(store, key) or State(key, 0, None)  # a missing counter starts at 0
                client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
        '''),
        "backoff": _code('''
            # ✏️ seconds to wait before retry number `attempt`: exponential, capped, with full jitter from `rng`
            def backoff(attempt, rng):
                return rng.uniform(0, min(0.1, 0.002 * 2**attempt))
        '''),
        "max_attempts": _code('''
            # ✏️ how many attempts one increment may make before it gives up (and says so)
            max_attempts = 30
        '''),
    },
    "03_safe_delete_lab": {
        "safe_delete": _code('''
            # ✏️ delete `key` only if it is still at version `etag`; let ETagMismatch reach the caller
            def safe_delete(client, store, key, etag):
                client.delete(store, key, etag=etag)
        '''),
        "create_if_absent": _code('''
            # ✏️ create `key` only if nobody has it; let the store's refusal reach the caller
            def create_if_absent(client, store, key, value):
                client.save(store, key, value, concurrency="first-write")
        '''),
        "loser_status": _code('''
            # ✏️ the status a losing creator gets back, per store
            loser_status = {"redis": 500, "sqlite": 409, "in-memory": 409}
        '''),
    },
    "04_transfer_lab": {
        "transfer": _code('''
            # ✏️ one attempt: read both balances, then ONE transaction with two upserts, each with the ETag you read
            def transfer(client, store, src, dst, amount):
                a, b = client.get(store, src), client.get(store, dst)
                client.transaction(store, [upsert(src, a.value - amount, etag=a.etag), upsert(dst, b.value + amount, etag=b.etag)])
        '''),
        "is_conflict": _code('''
            # ✏️ which failures mean "an account changed: re-read and try again"?
            def is_conflict(exc):
                return isinstance(exc, TransactionFailed)
        '''),
        "on_redis": _code('''
            # ✏️ your prediction for Redis, before running the check
            on_redis = {"status": 500, "debit_applied": True, "credit_applied": False}
        '''),
    },
    "05_consistency_lab": {
        "timings": _code('''
            # ✏️ measure `samples` strong and eventual saves, keep the result in `timings`
            timings = consistency.measure_saves(lab, samples=samples, seed=seed, progress=interactive)
        '''),
        "strong_save_fails_when_replica_down": _code('''
            # ✏️ predict: with the replica stopped, does a strong save fail? True or False
            strong_save_fails_when_replica_down = False
        '''),
        "page_views": _code('''
            # ✏️ (level, reason) for page_views
            page_views = ("eventual", f"losing a few views is fine, and strong would add {timings.extra_p50_ms:+.2f} ms to every save")
        '''),
        "replica_report": _code('''
            # ✏️ (level, reason) for replica_report
            replica_report = ("strong", f"the report reads the replica, and only strong waits for it: {timings.stale['strong']} stale reads after strong")
        '''),
        "own_reads": _code('''
            # ✏️ (level, reason) for own_reads
            own_reads = ("eventual", "the sidecar reads the primary whatever we ask for, so strong changes nothing we read back")
        '''),
    },
}

# What each check takes, in the order its Checker method takes it (``choice`` takes them as keywords).
INPUTS: dict[str, tuple[str, ...]] = {
    "save": ("save",), "get": ("get",), "delete": ("delete",), "etag_flow": ("get", "update", "delete"),
    "attempt": ("attempt",), "backoff": ("backoff",), "increment": ("attempt", "backoff", "max_attempts"),
    "safe_delete": ("safe_delete",), "create_if_absent": ("create_if_absent",), "loser_status": ("loser_status",),
    "transfer": ("transfer",), "is_conflict": ("is_conflict",), "total_conserved": ("transfer", "is_conflict"),
    "redis_transaction": ("transfer", "on_redis"),
    "measurement": ("timings",), "replica_down": ("strong_save_fails_when_replica_down",),
    "choice": ("page_views", "replica_report", "own_reads"),
}

# The smallest runs that still contend: at least MIN_WRITERS (8) writers released together, a few operations each.
QUICK: dict[str, dict[str, int]] = {
    "increment": {"writers": 8, "operations": 5},
    "total_conserved": {"workers": 8, "transfers": 5},
    "create_if_absent": {"creators": 8},
}


def reference(lab: str, check: str, title: str = "the lab's answer", *, hint: tuple[str, ...] = (),
              stores: tuple[str, ...] = STORES) -> Answer:
    """The lab's own answer to ``check``, as a right answer of the catalogue."""
    code = "\n\n".join(REFERENCE[lab][name] for name in INPUTS[check] if name in REFERENCE[lab])
    return Answer(lab, check, title, code, True, hint, stores)


# --- lab 01: fix the docs -----------------------------------------------------------------------------------------

L01 = "01_fix_the_docs_lab"
LAB01 = [
    reference(L01, "save", hint=("sent a JSON array with one item",)),
    Answer(L01, "save", "sends the body with data= and a Content-Type header", _code('''
        import json

        def save(url, key, value):
            body = json.dumps([{"key": key, "value": value, "options": {"consistency": "strong"}}])
            return http.post(url, data=body, headers={"Content-Type": "application/json"})
    '''), True, ("sent a JSON array with one item",)),
    Answer(L01, "save", "the handout's stub, untouched", _code('''
        def save(url, key, value):
            # TODO: your code here
            raise NotImplementedError("TODO: write save()")
    '''), False,
           ("`save()` is still the TODO stub",)),
    Answer(L01, "save", "passes the page's JSON text to json=", _code('''
        import json

        def save(url, key, value):
            state_req = json.dumps([{"key": key, "value": value, "options": {"consistency": "strong"}}])
            return http.post(url, json=state_req)
    '''), False, ("ERR_MALFORMED_REQUEST", "encodes it a second time", "pass the Python list itself")),
    Answer(L01, "save", "posts to the page's store name, redis-store", _code('''
        def save(url, key, value):
            dapr_state_url = url.replace("statestore", "redis-store")
            return http.post(dapr_state_url, json=[{"key": key, "value": value, "options": {"consistency": "strong"}}])
    '''), False, ("ERR_STATE_STORE_NOT_FOUND", "The store is called `statestore`")),
    Answer(L01, "save", "sends one item as a JSON object, not an array", _code('''
        def save(url, key, value):
            return http.post(url, json={"key": key, "value": value, "options": {"consistency": "strong"}})
    '''), False, ("ERR_MALFORMED_REQUEST", "JSON array of items")),
    Answer(L01, "save", "sends consistency as a header, as the page does", _code('''
        def save(url, key, value):
            return http.post(url, json=[{"key": key, "value": value}], headers={"consistency": "strong"})
    '''), False, ("not with strong consistency", "a `consistency` header is ignored")),
    Answer(L01, "save", "puts consistency in the query string instead of the item", _code('''
        def save(url, key, value):
            return http.post(url, json=[{"key": key, "value": value}], params={"consistency": "strong"})
    '''), False, ("not with strong consistency", "into the item")),
    Answer(L01, "save", "saves the value as JSON text", _code('''
        import json

        def save(url, key, value):
            item = {"key": key, "value": json.dumps(value), "options": {"consistency": "strong"}}
            return http.post(url, json=[item])
    '''), False, ("put the value into the item as it is",)),

    reference(L01, "get", hint=("`(None, None)` on 204", "query string")),
    Answer(L01, "get", "checks for 204 first and reads the etag header in lower case", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}", params={"consistency": "strong"})
            if resp.status_code == 204:
                return None, None
            return resp.json(), resp.headers["etag"]
    '''), True, ("`(None, None)` on 204",)),
    Answer(L01, "get", "sends consistency as a header, as the page does", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}", headers={"consistency": "strong"})
            return (resp.json(), resp.headers["ETag"]) if resp.status_code == 200 else (None, None)
    '''), False, ("as an HTTP header", "query parameter")),
    Answer(L01, "get", "reads the body and the ETag without looking at the status", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}", params={"consistency": "strong"})
            return resp.json(), resp.headers["ETag"]
    '''), False, ("Reading a key that does not exist raised", "answers 204 with an empty body",
                  "return `(None, None)`")),
    Answer(L01, "get", "returns resp.text", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}", params={"consistency": "strong"})
            return (resp.text, resp.headers["ETag"]) if resp.status_code == 200 else (None, None)
    '''), False, ("came back as text", "`resp.json()`")),
    Answer(L01, "get", "returns the value alone", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}", params={"consistency": "strong"})
            return resp.json() if resp.status_code == 200 else None
    '''), False, ("(a dict)", "return a tuple `(value, etag)`")),
    Answer(L01, "get", "does not ask for strong consistency", _code('''
        def get(url, key):
            resp = http.get(f"{url}/{key}")
            return (resp.json(), resp.headers["ETag"]) if resp.status_code == 200 else (None, None)
    '''), False, ("did not ask for strong consistency",)),

    reference(L01, "delete", hint=("stale ETag", "says so (False)")),
    Answer(L01, "delete", "always sends If-Match (requests drops a None header)", _code('''
        def delete(url, key, etag=None):
            resp = http.delete(f"{url}/{key}", headers={"If-Match": etag})
            return resp.status_code == 204
    '''), True, ("says so (False)",)),
    Answer(L01, "delete", "never sends the ETag", _code('''
        def delete(url, key, etag=None):
            return http.delete(f"{url}/{key}").status_code == 204
    '''), False, ("removed", "sent no `If-Match` header", "deleted whatever was there")),
    Answer(L01, "delete", "sends the ETag in the query string", _code('''
        def delete(url, key, etag=None):
            resp = http.delete(f"{url}/{key}", params={"etag": etag} if etag else {})
            return resp.status_code == 204
    '''), False, ("ETag in the query string is ignored", "If-Match")),
    Answer(L01, "delete", "returns True whatever the sidecar answers", _code('''
        def delete(url, key, etag=None):
            http.delete(f"{url}/{key}", headers={"If-Match": etag} if etag else {})
            return True
    '''), False, ("refused the stale delete (409)", "returned True", "return False on 409")),
    Answer(L01, "delete", "raises on the 409 (raise_for_status)", _code('''
        def delete(url, key, etag=None):
            resp = http.delete(f"{url}/{key}", headers={"If-Match": etag} if etag else {})
            resp.raise_for_status()
            return True
    '''), False, ("raised HTTPError", "Return False instead of raising")),
    Answer(L01, "delete", "returns the response", _code('''
        def delete(url, key, etag=None):
            return http.delete(f"{url}/{key}", headers={"If-Match": etag} if etag else {})
    '''), False, ("The key is gone, but `delete()` returned <Response [204]>", "return True")),

    reference(L01, "etag_flow", hint=("the same ETag again is stale",)),
    Answer(L01, "etag_flow", "update() sends the ETag with no concurrency option", _code('''
        def update(url, key, value, etag):
            return http.post(url, json=[{"key": key, "value": value, "etag": etag}]).status_code == 204
    '''), True, ("the same ETag again is stale",)),
    Answer(L01, "etag_flow", "update() leaves the ETag out of the item", _code('''
        def update(url, key, value, etag):
            item = {"key": key, "value": value, "options": {"concurrency": "first-write"}}
            return http.post(url, json=[item]).status_code == 204
    '''), False, ("saved an item with no ETag", "`\"etag\": etag`")),
    Answer(L01, "etag_flow", "update() sends the ETag as an If-Match header", _code('''
        def update(url, key, value, etag):
            item = {"key": key, "value": value, "options": {"concurrency": "first-write"}}
            return http.post(url, json=[item], headers={"If-Match": etag}).status_code == 204
    '''), False, ("an `If-Match` header is ignored on a save", "`\"etag\": etag`")),
    Answer(L01, "etag_flow", "update() sends the ETag but with explicit last-write", _code('''
        def update(url, key, value, etag):
            item = {"key": key, "value": value, "etag": etag, "options": {"concurrency": "last-write"}}
            return http.post(url, json=[item]).status_code == 204
    '''), False, ("last-write", "Redis then ignores the ETag", "Say `first-write`")),
    Answer(L01, "etag_flow", "update() returns True whatever the sidecar answers", _code('''
        def update(url, key, value, etag):
            item = {"key": key, "value": value, "etag": etag, "options": {"concurrency": "first-write"}}
            http.post(url, json=[item])
            return True
    '''), False, ("The stale update was refused (409)", "returned True", "return False")),
    Answer(L01, "etag_flow", "update() raises on the 409 (raise_for_status)", _code('''
        def update(url, key, value, etag):
            item = {"key": key, "value": value, "etag": etag, "options": {"concurrency": "first-write"}}
            resp = http.post(url, json=[item])
            resp.raise_for_status()
            return True
    '''), False, ("raised HTTPError", "return False")),
    Answer(L01, "etag_flow", "update() reads a fresh ETag instead of using the one it was given", _code('''
        def update(url, key, value, etag):
            _, current = get(url, key)  # make sure the ETag is fresh
            item = {"key": key, "value": value, "etag": current, "options": {"concurrency": "first-write"}}
            return http.post(url, json=[item]).status_code == 204
    '''), False, ("not the stale one `update()` was given", "use the `etag` argument")),
]

# --- lab 02: increment with retry and backoff ---------------------------------------------------------------------

L02 = "02_increment_lab"
_LOCKED_ATTEMPT = _code('''
    import threading

    lock = threading.Lock()

    def attempt(client, store, key):
        with lock:  # one writer at a time: no conflicts
            state = client.get(store, key) or State(key, 0, None)
            client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
''')
_RETRYING_ATTEMPT = _code('''
    from statelab.errors import ETagMismatch

    def attempt(client, store, key):
        while True:  # keep trying until it works
            state = client.get(store, key) or State(key, 0, None)
            try:
                client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
                return
            except ETagMismatch:
                continue
''')
_SWALLOWING_ATTEMPT = _code('''
    from statelab.errors import ETagMismatch

    def attempt(client, store, key):
        state = client.get(store, key) or State(key, 0, None)
        try:
            client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
        except ETagMismatch:
            pass  # someone else saved: fine
''')
_BLIND_ATTEMPT = _code('''
    def attempt(client, store, key):
        state = client.get(store, key) or State(key, 0, None)
        client.save(store, key, state.value + 1)
''')
_LAST_WRITE_ATTEMPT = _code('''
    def attempt(client, store, key):
        state = client.get(store, key) or State(key, 0, None)
        client.save(store, key, state.value + 1, etag=state.etag, concurrency="last-write")
''')
_NO_OPTION_ATTEMPT = _code('''
    def attempt(client, store, key):
        state = client.get(store, key) or State(key, 0, None)
        client.save(store, key, state.value + 1, etag=state.etag)
''')
LAB02 = [
    reference(L02, "attempt", hint=("with that ETag and `first-write`",)),
    Answer(L02, "attempt", "sends the ETag with no concurrency option", _NO_OPTION_ATTEMPT, True,
           ("with that ETag and no concurrency option", "an ETag is checked unless the save says last-write")),
    Answer(L02, "attempt", "creates a missing counter with its own first-write save", _code('''
        def attempt(client, store, key):
            state = client.get(store, key)
            if state is None:
                client.save(store, key, 1, concurrency="first-write")
            else:
                client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
    '''), True, ("starts a missing counter at 1",)),
    Answer(L02, "attempt", "the handout's stub, untouched", _code('''
        def attempt(client, store, key):
            # TODO: your code here
            raise NotImplementedError("TODO: write attempt()")
    '''), False,
           ("`attempt()` is still the TODO stub",)),
    Answer(L02, "attempt", "saves without the ETag", _BLIND_ATTEMPT, False,
           ("Your save carried no ETag", "Pass the ETag of the state you read")),
    Answer(L02, "attempt", "sends the ETag but with explicit last-write", _LAST_WRITE_ATTEMPT, False,
           ("says `concurrency=\"last-write\"`", "Redis then ignores the ETag", "Say `first-write`")),
    Answer(L02, "attempt", "swallows the 409", _SWALLOWING_ATTEMPT, False,
           ("the sidecar refuses yours (409)", "`attempt()` returned normally", "Let the `ETagMismatch` propagate")),
    Answer(L02, "attempt", "retries inside attempt until it works", _RETRYING_ATTEMPT, False,
           ("read again and saved again by itself", "retrying is the loop's job", "`max_attempts`",
            "Make one read and one save")),
    Answer(L02, "attempt", "turns the 409 into an error of its own", _code('''
        from statelab.errors import ETagMismatch

        def attempt(client, store, key):
            state = client.get(store, key) or State(key, 0, None)
            try:
                client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
            except ETagMismatch:
                raise RuntimeError("someone else saved first")
    '''), False, ("raised RuntimeError", "`ETagMismatch` (409) reach the caller unchanged")),
    Answer(L02, "attempt", "forgets that the counter may not exist yet", _code('''
        def attempt(client, store, key):
            state = client.get(store, key)
            client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
    '''), False, ("On a key that does not exist yet", "count it as 0")),
    Answer(L02, "attempt", "adds 1 twice (saves the new value + 1)", _code('''
        def attempt(client, store, key):
            state = client.get(store, key) or State(key, 0, None)
            new = state.value + 1
            client.save(store, key, new + 1, etag=state.etag, concurrency="first-write")
    '''), False, ("The counter went from 5 to 7", "adds exactly 1")),

    reference(L02, "backoff", hint=("Jittered, growing and capped",)),
    Answer(L02, "backoff", "equal jitter: half fixed, half random", _code('''
        def backoff(attempt, rng):
            half = min(0.1, 0.002 * 2**attempt) / 2
            return half + rng.uniform(0, half)
    '''), True, ("Jittered, growing and capped",)),
    Answer(L02, "backoff", "a constant wait", _code('''
        def backoff(attempt, rng):
            return 0.01
    '''), False, ("exactly the same time", "Add jitter")),
    Answer(L02, "backoff", "exponential and capped, but without jitter", _code('''
        def backoff(attempt, rng):
            return min(0.1, 0.002 * 2**attempt)
    '''), False, ("exactly the same time", "collide again", "Add jitter")),
    Answer(L02, "backoff", "jitter from the global random module", _code('''
        import random

        def backoff(attempt, rng):
            return random.uniform(0, min(0.1, 0.002 * 2**attempt))
    '''), False, ("same seeded `rng` gave different waits", "the `random` module", "Draw from `rng`")),
    Answer(L02, "backoff", "exponential with jitter but no cap", _code('''
        def backoff(attempt, rng):
            return rng.uniform(0, 0.002 * 2**attempt)
    '''), False, ("waits up to", "Cap the wait")),
    Answer(L02, "backoff", "counts in milliseconds", _code('''
        def backoff(attempt, rng):
            return rng.uniform(0, min(100, 2 * 2**attempt))
    '''), False, ("are these milliseconds?", "Cap the wait")),
    Answer(L02, "backoff", "jitter that never grows", _code('''
        def backoff(attempt, rng):
            return rng.uniform(0, 0.05)
    '''), False, ("The waits do not grow", "grow with each conflict")),
    Answer(L02, "backoff", "sleeps instead of returning the wait", _code('''
        import time

        def backoff(attempt, rng):
            time.sleep(rng.uniform(0, min(0.1, 0.002 * 2**attempt)))
    '''), False, ("returned None", "do not sleep in `backoff`")),
    Answer(L02, "backoff", "never waits", _code('''
        def backoff(attempt, rng):
            return 0
    '''), False, ("always returns 0",)),

    reference(L02, "increment", hint=("released together", "none lost", "conflicts were retried")),
    Answer(L02, "increment", "an attempt with the ETag and no concurrency option", _NO_OPTION_ATTEMPT, True,
           ("none lost", "conflicts were retried")),
    Answer(L02, "increment", "a tighter bound that still suffices", "max_attempts = 20", True, ("none lost",)),
    Answer(L02, "increment", "saves without the ETag", _BLIND_ATTEMPT, False, ("saves carried no ETag",)),
    Answer(L02, "increment", "sends the ETag but with explicit last-write", _LAST_WRITE_ATTEMPT, False,
           ("saves said last-write", "Redis")),
    Answer(L02, "increment", "swallows the 409", _SWALLOWING_ATTEMPT, False,
           ("returned normally although the sidecar refused their save", "count each of them as done",
            "Let `ETagMismatch` propagate")),
    Answer(L02, "increment", "retries inside attempt until it works", _RETRYING_ATTEMPT, False,
           ("your `attempt` retries inside", "`max_attempts`", "Make one read and one save per attempt")),
    Answer(L02, "increment", "serialises the writers with a lock", _LOCKED_ATTEMPT, False,
           ("hardly collided", "a lock", "Other app instances would not share that lock")),
    Answer(L02, "increment", "the handout's placeholder, untouched", "max_attempts = ...  # TODO: your answer", False,
           ("still the placeholder `...`",)),
    Answer(L02, "increment", "max_attempts = 0", "max_attempts = 0", False, ("allows no attempt at all",)),
    Answer(L02, "increment", "max_attempts = 1: never retries", "max_attempts = 1", False, ("never retries",)),
    Answer(L02, "increment", "max_attempts = 2: gives up under contention", "max_attempts = 2", False,
           ("gave up after 2 attempts", "allow more attempts")),
    Answer(L02, "increment", 'max_attempts = "20" (a string)', 'max_attempts = "20"', False,
           ("'20' (a str)", "whole number", "without quotes")),
    Answer(L02, "increment", "max_attempts = None: no bound", "max_attempts = None", False,
           ("`max_attempts` is None", "needs a bound")),
    Answer(L02, "increment", "max_attempts = 20.0 (a float)", "max_attempts = 20.0", False,
           ("20.0 (a float)", "whole number")),
    Answer(L02, "increment", "max_attempts in the millions: hardly a bound", "max_attempts = 10**6", False,
           ("hardly a bound",)),
]

# --- lab 03: safe delete and create-if-absent ---------------------------------------------------------------------

L03 = "03_safe_delete_lab"
_CHECK_THEN_ACT = _code('''
    def create_if_absent(client, store, key, value):
        if client.get(store, key) is not None:
            raise KeyError(f"{key} already exists")
        client.save(store, key, value)
''')
LAB03 = [
    reference(L03, "safe_delete", hint=("the caller was told (ETagMismatch reached the caller)",)),
    Answer(L03, "safe_delete", "returns False on a stale ETag instead of raising", _code('''
        from statelab.errors import ETagMismatch

        def safe_delete(client, store, key, etag):
            try:
                client.delete(store, key, etag=etag)
            except ETagMismatch:
                return False
            return True
    '''), True, ("the caller was told (it returned False)",)),
    Answer(L03, "safe_delete", "the handout's stub, untouched", _code('''
        def safe_delete(client, store, key, etag):
            # TODO: your code here
            raise NotImplementedError("TODO: write safe_delete()")
    '''), False,
           ("`safe_delete()` is still the TODO stub",)),
    Answer(L03, "safe_delete", "a plain delete: the ETag is ignored", _code('''
        def safe_delete(client, store, key, etag):
            client.delete(store, key)
    '''), False, ("deleted the cart anyway", "The delete carried no ETag", "`etag=etag`")),
    Answer(L03, "safe_delete", "check-then-delete: compares the ETag, then deletes without it", _code('''
        def safe_delete(client, store, key, etag):
            state = client.get(store, key)
            if state is None or state.etag != etag:
                return False  # changed since it was read
            client.delete(store, key)
    '''), False, ("reads the cart, compares, and then deletes without an ETag", "the cart was deleted anyway",
                  "Comparing first is a race", "`etag=etag`")),
    Answer(L03, "safe_delete", "swallows the 409", _code('''
        from statelab.errors import ETagMismatch

        def safe_delete(client, store, key, etag):
            try:
                client.delete(store, key, etag=etag)
            except ETagMismatch:
                pass  # changed since: leave it
    '''), False, ("refused the stale delete (409)", "returned None", "the caller would think the cart is gone")),
    Answer(L03, "safe_delete", "turns the 409 into an error of its own", _code('''
        from statelab.errors import ETagMismatch

        def safe_delete(client, store, key, etag):
            try:
                client.delete(store, key, etag=etag)
            except ETagMismatch:
                raise ValueError("the cart changed")
    '''), False, ("raised ValueError", "through unchanged")),
    Answer(L03, "safe_delete", "empties the cart instead of deleting it", _code('''
        def safe_delete(client, store, key, etag):
            client.save(store, key, None, etag=etag)
    '''), False, ("it is still there", "it sent no delete")),

    reference(L03, "create_if_absent", hint=("released together", "exactly one won")),
    Answer(L03, "create_if_absent", "reads first, but still creates with first-write", _code('''
        def create_if_absent(client, store, key, value):
            if client.get(store, key) is not None:
                raise KeyError(f"{key} already exists")
            client.save(store, key, value, concurrency="first-write")
    '''), True, ("exactly one won",)),
    Answer(L03, "create_if_absent", "returns False on 409 instead of raising", _code('''
        from statelab.errors import ETagMismatch

        def create_if_absent(client, store, key, value):
            try:
                client.save(store, key, value, concurrency="first-write")
            except ETagMismatch:
                return False  # someone has it (on Redis the 500 still reaches the caller)
            return True
    '''), True, ("exactly one won",)),
    Answer(L03, "create_if_absent", "a plain save", _code('''
        def create_if_absent(client, store, key, value):
            client.save(store, key, value)
    '''), False, ("replaced the first owner", "plain save (last-write-wins)", "`concurrency=\"first-write\"` and no ETag")),
    Answer(L03, "create_if_absent", "check-then-act: reads, then a plain save", _CHECK_THEN_ACT, False,
           ("checks whether the key exists and then saves", "Drop the read", "`concurrency=\"first-write\"` and no ETag")),
    Answer(L03, "create_if_absent", "first-write with the ETag it has just read", _code('''
        def create_if_absent(client, store, key, value):
            state = client.get(store, key)
            client.save(store, key, value, etag=state.etag if state else None, concurrency="first-write")
    '''), False, ("replaced the first owner", "carried the ETag it had just read", "no ETag")),
    Answer(L03, "create_if_absent", "serialises the creators with a lock", _code('''
        import threading

        lock = threading.Lock()

        def create_if_absent(client, store, key, value):
            with lock:  # one creator at a time
                client.save(store, key, value, concurrency="first-write")
    '''), False, ("no two of their saves were ever in flight at the same time", "tested nothing", "a lock")),
    Answer(L03, "create_if_absent", "swallows the refusal", _code('''
        from statelab.errors import DaprError

        def create_if_absent(client, store, key, value):
            try:
                client.save(store, key, value, concurrency="first-write")
            except DaprError:
                pass  # already there
    '''), False, ("returned None", "would believe it created the key")),

    reference(L03, "loser_status", hint=("Right",)),
    Answer(L03, "loser_status", "409 everywhere", 'loser_status = {"redis": 409, "sqlite": 409, "in-memory": 409}',
           False, ("predicted 409 for redis", "store matrix")),
    Answer(L03, "loser_status", "sqlite and redis swapped", 'loser_status = {"redis": 409, "sqlite": 500, "in-memory": 409}',
           False, ("predicted", "store matrix")),
    Answer(L03, "loser_status", "the handout's placeholder, untouched", "loser_status = ...  # TODO: your answer", False,
           ("still the placeholder `...`",)),
    Answer(L03, "loser_status", "a plain number, not a dict", "loser_status = 409", False,
           ("409 (an int)", "one status per store")),
    Answer(L03, "loser_status", "statuses as strings", 'loser_status = {"redis": "500", "sqlite": "409", "in-memory": "409"}',
           False, ("'500' (a str)", "as a number")),
    Answer(L03, "loser_status", "a store left out", 'loser_status = {"redis": 500, "sqlite": 409}', False,
           ("no prediction for in-memory",)),
    Answer(L03, "loser_status", "None", "loser_status = None", False, ("`loser_status` is None", "give a dict")),
]

# --- lab 04: transfers ------------------------------------------------------------------------------------------

L04 = "04_transfer_lab"
_BLIND_TRANSFER = _code('''
    def transfer(client, store, src, dst, amount):
        a, b = client.get(store, src), client.get(store, dst)
        client.transaction(store, [upsert(src, a.value - amount), upsert(dst, b.value + amount)])
''')
_SPLIT_TRANSFER = _code('''
    def transfer(client, store, src, dst, amount):
        a, b = client.get(store, src), client.get(store, dst)
        client.save(store, src, a.value - amount, etag=a.etag, concurrency="first-write")
        client.save(store, dst, b.value + amount, etag=b.etag, concurrency="first-write")
''')
_SWALLOWING_TRANSFER = _code('''
    def transfer(client, store, src, dst, amount):
        a, b = client.get(store, src), client.get(store, dst)
        try:
            client.transaction(store, [upsert(src, a.value - amount, etag=a.etag),
                                       upsert(dst, b.value + amount, etag=b.etag)])
        except TransactionFailed:
            pass  # someone else was quicker
''')
_RETRYING_TRANSFER = _code('''
    def transfer(client, store, src, dst, amount):
        while True:  # until it goes through
            a, b = client.get(store, src), client.get(store, dst)
            try:
                client.transaction(store, [upsert(src, a.value - amount, etag=a.etag),
                                           upsert(dst, b.value + amount, etag=b.etag)])
                return
            except TransactionFailed:
                continue
''')
_LOCKED_TRANSFER = _code('''
    import threading

    lock = threading.Lock()

    def transfer(client, store, src, dst, amount):
        with lock:  # one transfer at a time
            a, b = client.get(store, src), client.get(store, dst)
            client.transaction(store, [upsert(src, a.value - amount, etag=a.etag),
                                       upsert(dst, b.value + amount, etag=b.etag)])
''')
_ONLY_409 = _code('''
    from statelab.errors import ETagMismatch

    def is_conflict(exc):
        return isinstance(exc, ETagMismatch)
''')
LAB04 = [
    reference(L04, "transfer", hint=("refuses the whole transaction", "neither balance moves")),
    Answer(L04, "transfer", "reads both balances with one bulk get", _code('''
        def transfer(client, store, src, dst, amount):
            a, b = client.get_bulk(store, [src, dst])
            client.transaction(store, [upsert(src, a.value - amount, etag=a.etag), upsert(dst, b.value + amount, etag=b.etag)])
    '''), True, ("refuses the whole transaction",)),
    Answer(L04, "transfer", "the handout's stub, untouched", _code('''
        def transfer(client, store, src, dst, amount):
            # TODO: your code here
            raise NotImplementedError("TODO: write transfer()")
    '''), False,
           ("`transfer()` is still the TODO stub",)),
    Answer(L04, "transfer", "two separate saves, each with its ETag", _SPLIT_TRANSFER, False,
           ("not written in one `client.transaction`", "2 separate saves", "one transaction")),
    Answer(L04, "transfer", "a transaction without ETags", _BLIND_TRANSFER, False,
           ("Each of the two upserts (alice's and bob's) carries no ETag", "Pass the ETag of each balance")),
    Answer(L04, "transfer", "only the debit carries its ETag", _code('''
        def transfer(client, store, src, dst, amount):
            a, b = client.get(store, src), client.get(store, dst)
            client.transaction(store, [upsert(src, a.value - amount, etag=a.etag), upsert(dst, b.value + amount)])
    '''), False, ("The upsert of bob carries no ETag",)),
    Answer(L04, "transfer", "sends the ETags but with explicit last-write", _code('''
        def transfer(client, store, src, dst, amount):
            a, b = client.get(store, src), client.get(store, dst)
            client.transaction(store, [upsert(src, a.value - amount, etag=a.etag, concurrency="last-write"),
                                       upsert(dst, b.value + amount, etag=b.etag, concurrency="last-write")])
    '''), False, ("says `last-write`", "Redis then ignores the ETag")),
    Answer(L04, "transfer", "swallows the refused transaction", _SWALLOWING_TRANSFER, False,
           ("the store refused the transaction (stale ETag), but `transfer()` returned normally",
            "Let the error propagate")),
    Answer(L04, "transfer", "retries inside transfer until it works", _RETRYING_TRANSFER, False,
           ("sent another transaction by itself", "retrying is the loop's job", "Make one try")),
    Answer(L04, "transfer", "moves the money the wrong way", _code('''
        def transfer(client, store, src, dst, amount):
            a, b = client.get(store, src), client.get(store, dst)
            client.transaction(store, [upsert(src, a.value + amount, etag=a.etag), upsert(dst, b.value - amount, etag=b.etag)])
    '''), False, ("left alice 130 and bob 70", "expected 70 and 130")),

    reference(L04, "is_conflict", hint=("says to retry it",)),
    Answer(L04, "is_conflict", "matches the error code", _code('''
        def is_conflict(exc):
            return getattr(exc, "error_code", "") == "ERR_STATE_TRANSACTION"
    '''), True, ("says to retry it",)),
    Answer(L04, "is_conflict", "always True", _code('''
        def is_conflict(exc):
            return True
    '''), False, ("misspelt store name", "it should say False: do not retry", "retrying never fixes it")),
    Answer(L04, "is_conflict", "only ETagMismatch (a 409)", _ONLY_409, False,
           ("stale ETag (500 ERR_STATE_TRANSACTION)", "it should say True: retry")),
    Answer(L04, "is_conflict", "status == 409", _code('''
        def is_conflict(exc):
            return getattr(exc, "status", None) == 409
    '''), False, ("stale ETag (500 ERR_STATE_TRANSACTION)", "it should say True: retry")),
    Answer(L04, "is_conflict", "every Dapr error", _code('''
        from statelab.errors import DaprError

        def is_conflict(exc):
            return isinstance(exc, DaprError)
    '''), False, ("misspelt store name", "it should say False")),
    Answer(L04, "is_conflict", "any status from 500 up, without checking the type", _code('''
        def is_conflict(exc):
            return exc.status >= 500
    '''), False, ("raised AttributeError",)),
    Answer(L04, "is_conflict", "returns the status code, not True or False", _code('''
        def is_conflict(exc):
            return getattr(exc, "status", None)
    '''), False, ("400 (an int)", "return True or False")),

    reference(L04, "total_conserved", hint=("released together", "before and after", "refused for a stale ETag")),
    Answer(L04, "total_conserved", "is_conflict by error code", _code('''
        def is_conflict(exc):
            return getattr(exc, "error_code", "") == "ERR_STATE_TRANSACTION"
    '''), True, ("before and after",)),
    Answer(L04, "total_conserved", "a transaction without ETags", _BLIND_TRANSFER, False,
           ("had an upsert without an ETag",)),
    Answer(L04, "total_conserved", "two separate saves, each with its ETag", _SPLIT_TRANSFER, False,
           ("with separate saves, not one transaction",)),
    Answer(L04, "total_conserved", "retries only on 409", _ONLY_409, False,
           ("gave up", "said not to retry them", "`TransactionFailed`")),
    Answer(L04, "total_conserved", "swallows the refused transaction", _SWALLOWING_TRANSFER, False,
           ("returned normally although their transaction was refused",)),
    Answer(L04, "total_conserved", "retries inside transfer until it works", _RETRYING_TRANSFER, False,
           ("your `transfer` retries inside", "Make one try")),
    Answer(L04, "total_conserved", "serialises the transfers with a lock", _LOCKED_TRANSFER, False,
           ("hardly conflicted", "a lock")),

    reference(L04, "redis_transaction", hint=("Right", "MULTI/EXEC")),
    Answer(L04, "redis_transaction", "all or nothing, as on SQLite",
           'on_redis = {"status": 500, "debit_applied": False, "credit_applied": False}', False,
           ("Not what happened", "debit_applied=False")),
    Answer(L04, "redis_transaction", "a 409, as for a single save",
           'on_redis = {"status": 409, "debit_applied": False, "credit_applied": False}', False,
           ("Not what happened", "status=409")),
    Answer(L04, "redis_transaction", "the handout's placeholder, untouched", "on_redis = ...  # TODO: your answer", False,
           ("still the placeholder `...`",)),
    Answer(L04, "redis_transaction", "a plain status, not a dict", "on_redis = 500", False,
           ("500 (an int)", "three parts")),
    Answer(L04, "redis_transaction", "the status as a string",
           'on_redis = {"status": "500", "debit_applied": True, "credit_applied": False}', False,
           ("'500' (a str)", "as a number")),
    Answer(L04, "redis_transaction", "yes and no for the halves",
           'on_redis = {"status": 500, "debit_applied": "yes", "credit_applied": "no"}', False,
           ("'yes' (a str)", "write True or False")),
    Answer(L04, "redis_transaction", "forgets the credit", 'on_redis = {"status": 500, "debit_applied": True}', False,
           ("has no `credit_applied`",)),
]

# --- lab 05: choose a consistency level -------------------------------------------------------------------------

L05 = "05_consistency_lab"
_REASONS = {
    "page_views": "a few lost views are acceptable, and strong adds a replica round trip to every save",
    "replica_report": "the report reads the replica right after the save, and only strong waits for it",
    "own_reads": "the sidecar reads the primary anyway, so strong changes nothing we read back",
}


def _choices(**written: str) -> str:
    """Lab 05's three answers: the right ``(level, reason)``, except the names given as source in ``written``."""
    right = {"page_views": "eventual", "replica_report": "strong", "own_reads": "eventual"}
    return "\n".join(f"{name} = {written.get(name) or f'({level!r}, {_REASONS[name]!r})'}"
                     for name, level in right.items())


_REPLICATED = ("redis",)
_UNREPLICATED = ("in-memory", "sqlite")
LAB05 = [
    reference(L05, "measurement", "the lab's answer, on Redis with a replica", hint=("exactly one WAIT per strong save",),
              stores=_REPLICATED),
    Answer(L05, "measurement", "the lab's answer, on a store without replicas", REFERENCE[L05]["timings"], False,
           ("without replicas", "replicated store"), _UNREPLICATED),
    Answer(L05, "measurement", "the handout's placeholder, untouched", "timings = ...  # TODO: your answer", False,
           ("still the placeholder `...`",)),
    Answer(L05, "measurement", "too few samples", _code('''
        timings = consistency.measure_saves(lab, samples=10, seed=seed, progress=interactive)
    '''), False, ("Only 10 saves per mode", "at least 50")),
    Answer(L05, "measurement", "keeps only the median cost", _code('''
        timings = consistency.measure_saves(lab, samples=samples, seed=seed, progress=interactive).extra_p50_ms
    '''), False, ("(a float)", "not a number or a summary of it")),
    Answer(L05, "measurement", "a dict of medians typed in", 'timings = {"strong": 1.2, "eventual": 0.3}', False,
           ("(a dict)", "Keep what it returns")),
    Answer(L05, "measurement", "None", "timings = None", False, ("`timings` is None",)),

    reference(L05, "replica_down", "the lab's answer, measured", hint=("Right", "does not prove"), stores=_REPLICATED),
    Answer(L05, "replica_down", "the lab's answer, where there is no replica to stop",
           REFERENCE[L05]["strong_save_fails_when_replica_down"], True, ("Not measured here", "matches"), _UNREPLICATED),
    Answer(L05, "replica_down", "believes the docs: the strong save fails", "strong_save_fails_when_replica_down = True",
           False, ("predicted that it fails",)),
    Answer(L05, "replica_down", "the handout's placeholder, untouched",
           "strong_save_fails_when_replica_down = ...  # TODO: your answer", False, ("still the placeholder `...`",)),
    Answer(L05, "replica_down", "a string, not a bool", 'strong_save_fails_when_replica_down = "False"', False,
           ("'False' (a str)", "write True or False")),
    Answer(L05, "replica_down", "0 for False", "strong_save_fails_when_replica_down = 0", False,
           ("0 (an int)", "write True or False")),
    Answer(L05, "replica_down", "None", "strong_save_fails_when_replica_down = None", False,
           ("is None", "write True or False")),

    Answer(L05, "choice", "the right levels, with reasons", _choices(), True, ("page_views: eventual",)),
    Answer(L05, "choice", "pairs written as lists", _choices(
        page_views=f"['eventual', {_REASONS['page_views']!r}]", replica_report=f"['strong', {_REASONS['replica_report']!r}]",
        own_reads=f"['eventual', {_REASONS['own_reads']!r}]"), True, ("page_views: eventual",)),
    Answer(L05, "choice", "strong everywhere, to be safe", _choices(
        page_views="('strong', 'strong never loses a write, so it is the safe choice')",
        replica_report="('strong', 'strong never loses a write, so it is the safe choice')",
        own_reads="('strong', 'strong never loses a write, so it is the safe choice')"), False,
           ("You chose strong for `page_views`", "thousands of saves a second")),
    Answer(L05, "choice", "eventual for the replica report", _choices(
        replica_report="('eventual', 'we measured no stale replica reads after eventual saves')"), False,
           ("You chose eventual for `replica_report`", "reads the replica itself", "zero is luck")),
    Answer(L05, "choice", "strong for the service's own reads", _choices(
        own_reads="('strong', 'the cart must read back exactly what it saved')"), False,
           ("You chose strong for `own_reads`", "reads from the Redis primary")),
    Answer(L05, "choice", "the handout's placeholders, untouched", _choices(page_views="...  # TODO: your answer",
           replica_report="...  # TODO: your answer", own_reads="...  # TODO: your answer"), False,
           ("`page_views` is still the placeholder `...`",)),
    Answer(L05, "choice", "a level without a reason", _choices(page_views="'eventual'"), False,
           ("'eventual' (a str)", "write a pair `(level, reason)`")),
    Answer(L05, "choice", "a one-word reason", _choices(page_views="('eventual', 'cheaper')"), False, ("too short",)),
    Answer(L05, "choice", "Strong, capitalised",
           _choices(replica_report=f"('Strong', {_REASONS['replica_report']!r})"), False, ("lower case",)),
]

CATALOGUE: list[Answer] = LAB01 + LAB02 + LAB03 + LAB04 + LAB05


def by_lab() -> dict[str, list[Answer]]:
    """The catalogue per lab, in the labs' order, each lab's answers in the order of its checks."""
    from statelab.lab.checker import LABS

    return {lab: sorted((a for a in CATALOGUE if a.lab == lab), key=lambda a: checks.index(a.check))
            for lab, checks in LABS.items()}


# --- running an answer ------------------------------------------------------------------------------------------


def _run_source(source: str, namespace: dict[str, Any], name: str) -> None:
    """Run learner code as a notebook cell would: its lines are known to ``linecache``, so a hint can quote them."""
    filename = f"<catalogue {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # the catalogue's own learner code, never input


def namespace(check: Checker, *, samples: int = 50) -> dict[str, Any]:
    """What the lab notebook's setup cells leave for the learner's code: the session, the checker, the imports."""
    from statelab.client import State, upsert
    from statelab.errors import TransactionFailed
    from statelab.lessons import consistency

    ns: dict[str, Any] = {"lab": check.session, "check": check, "seed": check.seed, "interactive": False,
                          "store": check.session.store_type.removeprefix("state."), "samples": samples}
    if check.notebook == L01:
        ns.update(url=check.url, http=check.http())
    ns.update(State=State, upsert=upsert, TransactionFailed=TransactionFailed, consistency=consistency)
    return ns


def run(answer: Answer, check: Checker, *, sizes: dict[str, dict[str, int]] | None = None) -> CheckResult:
    """Run ``answer`` through ``check`` (a ``Checker`` of its lab) as a learner's notebook would, and return the verdict.

    The answer's code runs first; the names its check takes that it does not define come from the lab's answer.
    Concurrency checks run at ``QUICK`` sizes (``sizes`` overrides them).
    """
    if check.notebook != answer.lab:
        raise ValueError(f"{answer.id} is an answer to {answer.lab}, not to {check.notebook}")
    ns = namespace(check)
    _run_source(answer.code, ns, answer.id)
    for name in INPUTS[answer.check]:
        if name not in ns:
            _run_source(REFERENCE[answer.lab][name], ns, f"{answer.lab} {name}")
    values = [ns[name] for name in INPUTS[answer.check]]
    method = getattr(check, answer.check)
    if answer.check == "choice":
        return method(**dict(zip(INPUTS["choice"], values, strict=True)))
    return method(*values, **(QUICK if sizes is None else sizes).get(answer.check, {}))
