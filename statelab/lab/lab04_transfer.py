"""Lab 04: transfers between two accounts in one transaction."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statelab.client import LAST_WRITE
from statelab.display import html_table
from statelab.errors import (
    DaprError,
    MalformedRequest,
    StoreNotFound,
    TransactionFailed,
)
from statelab.lab.learner_code import call, fresh_key, is_placeholder, raised, short
from statelab.lab.recording import recording_client
from statelab.lab.results import CheckResult, failed, md, passed
from statelab.writers import run_threads

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.session import Session

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
        accounts = cls(session, fresh_key("lab04-alice"), fresh_key("lab04-bob"), opening)
        for key in (accounts.alice, accounts.bob):
            session.client.save(session.store_name, key, opening)
        return accounts

    def balances(self) -> tuple[Any, Any]:
        states = self.session.client.get_bulk(self.session.store_name, [self.alice, self.bob])
        a, b = (s.value if s else None for s in states)
        return a, b


def ready_transfer(ck: Checker, transfer: Any, session: Session) -> CheckResult | None:
    """None if ``transfer`` works on ``session`` (one quiet transfer, ETags on both ops), else the failure."""
    accounts = Accounts.open(session)
    rc = recording_client(session)
    _, exc = call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    if exc is not None:
        return failed("transfer", raised(transfer, exc, TRANSFER_TASK))
    a, b = accounts.balances()
    if (a, b) != (70, 130):
        return failed("transfer", f"Transferring 30 from alice (100) to bob (100) left alice {a!r} and bob {b!r}; "
                                   "expected 70 and 130.")
    txs = [c for c in rc.calls if c.kind == "transaction"]
    if not txs or not {accounts.alice, accounts.bob} <= set(txs[-1].keys):
        return failed("transfer", "The two balances were not written in one `client.transaction`: with two separate "
                                   "saves, a failure between them loses or creates money.")
    missing = [who for who, key in (("alice", accounts.alice), ("bob", accounts.bob)) if not txs[-1].etags.get(key)]
    if missing:
        return failed("transfer", f"The upsert of {' and '.join(missing)} carries no ETag (`upsert(key, value, "
                                   "etag=state.etag)`): a transfer made in between would be overwritten.")
    if any(txs[-1].concurrency.get(k) == LAST_WRITE for k in txs[-1].keys):
        return failed("transfer", "An upsert says `last-write`, with which Redis ignores the ETag: leave concurrency "
                                   "out or say `first-write`.")
    return None


def check_transfer(ck: Checker, transfer: Any) -> CheckResult:
    session = ck._store_session("sqlite")
    if session is None:
        return failed("transfer", "This check needs a store with atomic transactions (SQLite or in-memory) and could "
                                   "not start one here; run the lab with the local stack.")
    if problem := ready_transfer(ck, transfer, session):
        return problem
    # Someone deposits 10 into bob between this transfer's reads and its transaction.
    accounts = Accounts.open(session)
    other = session.client
    rc = recording_client(session)
    rc.interpose(accounts.bob, lambda: other.save(session.store_name, accounts.bob, 110))
    _, exc = call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    a, b = accounts.balances()
    if exc is None:
        return failed("transfer", f"Bob got a deposit between your reads and your transaction; the transaction should "
                                   f"be refused (stale ETag), but `transfer()` returned normally (alice {a}, bob {b}).")
    if (a, b) != (100, 110):
        return failed("transfer", f"After a refused transfer the balances should be untouched (alice 100, bob 110 "
                                   f"with the deposit); they are alice {a}, bob {b}.")
    kind = "SQLite" if session.store_type == "state.sqlite" else session.store_type
    return passed("transfer", f"One transaction moves 30 from alice to bob with both ETags; when bob's balance changes "
                               f"between your reads and your transaction, {kind} refuses the whole transaction "
                               f"({type(exc).__name__}) and neither balance moves.")


def check_is_conflict(ck: Checker, is_conflict: Any) -> CheckResult:
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
        got, err = call(is_conflict, exc)
        if err is not None:
            return failed("is_conflict", raised(is_conflict, err, CONFLICT_TASK))
        if bool(got) != want:
            return failed("is_conflict", f"For {what} `is_conflict()` returned {got!r}, but {why}.")
    return passed("is_conflict", "A stale ETag inside a transaction answers 500 ERR_STATE_TRANSACTION, not 409, and "
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
        return (f"<p>{md(self.sentence())}</p>" +
                html_table(("account", "opening", "what the acknowledged transfers add up to", "in the store"), rows))


def run_transfers(session: Session, transfer: Any, is_conflict: Any, workers: int, transfers: int, seed: int,
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
        with recording_client(session) as rc:
            for _ in range(transfers):
                way = rng.choice(("a->b", "b->a"))
                amount = rng.randint(1, 20)
                src, dst = (accounts.alice, accounts.bob) if way == "a->b" else (accounts.bob, accounts.alice)
                for number in range(1, max_attempts + 1):
                    if stop.is_set():
                        return
                    _, exc = call(transfer, rc, store, src, dst, amount)
                    if exc is None:
                        with lock:
                            acknowledged.append((way, amount))
                        break
                    if not isinstance(exc, DaprError):
                        with lock:
                            fatal.append(raised(transfer, exc, TRANSFER_TASK))
                        stop.set()
                        return
                    retry, err = call(is_conflict, exc)
                    if err is not None:
                        with lock:
                            fatal.append(raised(is_conflict, err, CONFLICT_TASK))
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
                fatal.append(f"The transfers could not run: {type(exc).__name__}: {short(str(exc), 160)}")
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


def check_total_conserved(ck: Checker, transfer: Any, is_conflict: Any, workers: int, transfers: int) -> CheckResult:
    session = ck._store_session("sqlite")
    if session is None:
        return failed("total_conserved", "This check needs a store with atomic transactions (SQLite or in-memory) and "
                                          "could not start one here; run the lab with the local stack.")
    for fn, task in ((transfer, TRANSFER_TASK), (is_conflict, CONFLICT_TASK)):
        if not callable(fn):
            return failed("total_conserved", f"Expected a function, got {type(fn).__name__}. {task}")
    run, fatal = run_transfers(session, transfer, is_conflict, workers, transfers, ck.seed, ck.progress)
    if fatal:
        return failed("total_conserved", fatal, data=run)
    if run.total_after != run.total_before:
        return failed("total_conserved", f"Money appeared or vanished: the total was {run.total_before} and is now "
                                          f"{run.total_after}. Both upserts of a transfer must carry the ETags read for "
                                          "it, in one transaction.", [run.sentence()], run)
    if run.final != run.expected:
        return failed("total_conserved", f"The total holds, but the balances {run.final} are not what the acknowledged "
                                          f"transfers add up to {run.expected}: some transfer overwrote another.",
                       [run.sentence()], run)
    if run.gave_up:
        errors = ", ".join(f"{n}× {name}" for name, n in run.failures.items())
        return failed("total_conserved", f"{run.gave_up} transfers gave up ({errors}). A stale ETag inside a "
                                          "transaction answers 500 ERR_STATE_TRANSACTION (`TransactionFailed`): "
                                          "does `is_conflict()` say True for it?", [run.sentence()], run)
    return passed("total_conserved", f"{workers} workers made {len(run.acknowledged)} concurrent transfers on "
                                      f"{run.store_type}: the total is {run.total_after} before and after, and both "
                                      f"balances are exactly what the acknowledged transfers add up to; "
                                      f"{run.retried} transactions were refused for a stale ETag and retried.",
                   [run.sentence()], run)


ON_REDIS_KEYS = ("status", "debit_applied", "credit_applied")


def check_redis_transaction(ck: Checker, transfer: Any, on_redis: Any) -> CheckResult:
    if is_placeholder(on_redis) or not isinstance(on_redis, dict) or not set(ON_REDIS_KEYS) <= set(on_redis):
        return failed("redis_transaction", "`on_redis` is still the placeholder: predict "
                                            "`{\"status\": ..., \"debit_applied\": ..., \"credit_applied\": ...}` for "
                                            "the transfer described above, before running the check.")
    session = ck._store_session("redis")
    if session is None:
        return passed("redis_transaction", "Not measured: no Redis store here (it needs the local stack or a sidecar "
                                            "on state.redis). On Redis the transaction answers 500, the debit is applied "
                                            "and the credit is not.")
    if problem := ready_transfer(ck, transfer, session):
        return failed("redis_transaction", "This question is about your ETag-guarded transfer, which is not ready on "
                                            "Redis yet: " + problem.message)
    accounts = Accounts.open(session)
    rc = recording_client(session)
    rc.interpose(accounts.bob, lambda: session.client.save(session.store_name, accounts.bob, 110))
    _, exc = call(transfer, rc, session.store_name, accounts.alice, accounts.bob, 30)
    a, b = accounts.balances()
    measured = {"status": exc.status if isinstance(exc, DaprError) else 204,
                "debit_applied": a == 70, "credit_applied": b == 140}
    wrong = [k for k in ON_REDIS_KEYS if on_redis.get(k) != measured[k]]
    facts = (f"the transaction answered {measured['status']}, alice has {a} (debit "
             f"{'applied' if measured['debit_applied'] else 'not applied'}), bob has {b} (credit "
             f"{'applied' if measured['credit_applied'] else 'not applied'})")
    if wrong:
        return failed("redis_transaction", f"Not what happened: {facts}. You predicted " +
                       ", ".join(f"{k}={on_redis.get(k)!r}" for k in wrong) + ". dapr-state-api.md §6: on Redis a "
                       "transaction is a MULTI/EXEC batch of scripts; read what happens when one of them fails.",
                       data=measured)
    return passed("redis_transaction", f"Right: {facts}. Redis runs the transaction as MULTI/EXEC, one script per "
                                        "operation, without rollback: bob's script refuses the stale ETag, alice's "
                                        "succeeds, and daprd reports the whole transaction as failed (500 "
                                        "ERR_STATE_TRANSACTION). The 30 are gone, and a retry would debit alice again. "
                                        "On Redis keep values that must change together in one key (one save with "
                                        "one ETag), or use a store with atomic transactions.", data=measured)
