"""Lab 04: transfers between two accounts in one transaction."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statelab.client import LAST_WRITE, StateClient
from statelab.display import html_table
from statelab.errors import (
    DaprError,
    MalformedRequest,
    StoreNotFound,
    TransactionFailed,
)
from statelab.history import CONFLICT, ERROR, OK, Attempt
from statelab.lab.learner_code import call, described, fresh_key, is_placeholder, raised
from statelab.lab.recording import RecordingClient, recording_client
from statelab.lab.results import CheckResult, failed, md, passed
from statelab.writers import AbortRun, AttemptOutcome, WritersConfig, WriterTask, progress_bar, run_writers

if TYPE_CHECKING:

    from statelab.lab.checker import Checker
    from statelab.session import Session

# --- lab 04: transfers between two accounts ------------------------------------------------------------------

TRANSFER_TASK = ("Write `transfer(client, store, src, dst, amount)`: one try of a transfer. Read both balances, then "
                 "write both new balances so that they change together or not at all, and not at all if either changed "
                 "since your read; let errors propagate.")
CONFLICT_TASK = ("Write `is_conflict(exc)`: True for the error a transaction with a stale ETag raises (lesson 03's "
                 "matrix has its row: it is not a 409), False for errors a retry cannot fix.")
TRANSFER_RUNS = 3  # the concurrent transfers run again (fresh accounts) when they hardly conflicted, at most this often
KNOWN_ON_REDIS = {"status": 500, "debit_applied": True, "credit_applied": False}  # docs/dapr-behaviour.md §7, §12


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
                                   "expected 70 and 130 (`src` gives `amount`, `dst` receives it).")
    txs = [c for c in rc.calls if c.kind == "transaction"]
    if not txs or not {accounts.alice, accounts.bob} <= set(txs[-1].keys):
        saves = [c for c in rc.calls if c.kind == "save"]
        seen = (f"your transfer made {len(saves)} separate save{'s' if len(saves) != 1 else ''}"
                + (f" and {len(txs)} transaction{'s' if len(txs) != 1 else ''} without both keys" if txs else ""))
        return failed("transfer", f"The two balances were not written in one `client.transaction`: {seen}. A failure "
                                   "or a refusal between two saves leaves one balance changed and not the other, and "
                                   "money appears or vanishes. Send both upserts in one transaction.")
    missing = [who for who, key in (("alice", accounts.alice), ("bob", accounts.bob)) if not txs[-1].etags.get(key)]
    if missing:
        which = ("Each of the two upserts (alice's and bob's) carries" if len(missing) == 2
                 else f"The upsert of {missing[0]} carries")
        return failed("transfer", f"{which} no ETag: the store cannot refuse a transaction based on an old balance, so "
                                   "a transfer made between your reads and your transaction would be overwritten. Pass "
                                   "the ETag of each balance you read to its `upsert`.")
    if any(txs[-1].concurrency.get(k) == LAST_WRITE for k in txs[-1].keys):
        return failed("transfer", "An upsert sends its ETag but says `last-write`, which means \"overwrite whatever "
                                   "is there\": Redis then ignores the ETag (SQLite and in-memory check it anyway). "
                                   "Leave concurrency out, or say `first-write`.")
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
    txs = [c for c in rc.calls if c.kind == "transaction"]
    refused = [c for c in txs if c.status not in (200, 204)]
    if exc is None and refused and txs[-1].status in (200, 204):
        return failed("transfer", f"Bob got a deposit between your reads and your transaction; the store refused it "
                                   f"(stale ETag), and your `transfer()` read again and sent another transaction by "
                                   f"itself ({len(txs)} in one call; alice {a}, bob {b}). That transfer went through, "
                                   "but retrying is the loop's job: it asks `is_conflict()` whether the error is worth "
                                   "a retry, bounds the attempts and waits between them. A retry inside `transfer` "
                                   "retries every failure, with no pause and no bound. Make one try, and let the error "
                                   "propagate.")
    if exc is None:
        what = ("the store refused the transaction (stale ETag), but `transfer()` returned normally" if refused else
                "the transaction should have been refused (stale ETag), but `transfer()` returned normally")
        return failed("transfer", f"Bob got a deposit between your reads and your transaction; {what} (alice {a}, bob "
                                   f"{b}), so its caller would count a transfer that never happened. Let the error "
                                   "propagate.")
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
            returned = repr(got) if isinstance(got, bool) else (f"{described(got)}, which counts as {bool(got)} "
                                                                 "(return True or False)")
            say = "True: retry" if want else "False: do not retry"
            return failed("is_conflict", f"For {what} `is_conflict()` returned {returned}; it should say {say}, "
                                          f"because {why}.")
    return passed("is_conflict", "A stale ETag inside a transaction answers 500 ERR_STATE_TRANSACTION, not 409, and "
                                  "your `is_conflict()` says to retry it; it says not to retry a wrong store name, a "
                                  "malformed request or a bug.")


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
    flags: TransferFlags = field(default_factory=lambda: TransferFlags())  # what the learner's transfers sent
    not_retried: int = 0  # transfers given up because `is_conflict()` said the error was not worth a retry

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


@dataclass
class TransferFlags:
    """What the learner's transfers did, counted over a concurrent run (from the recording clients)."""

    refused: int = 0  # transactions the store refused (stale ETag, or any failure)
    swallowed: int = 0  # transfers that returned normally although their last transaction was refused
    retried_inside: int = 0  # transfers that sent another transaction by themselves after a refused one
    split: int = 0  # transfers that wrote the balances with separate saves, not one transaction
    no_etag: int = 0  # transactions with an upsert that carried no ETag
    last_write: int = 0  # transactions with an upsert that said last-write

    def causes(self) -> list[str]:
        out = []
        if self.split:
            out.append(f"{self.split} transfers wrote the two balances with separate saves, not one transaction")
        if self.no_etag:
            out.append(f"{self.no_etag} transactions had an upsert without an ETag")
        if self.last_write:
            out.append(f"{self.last_write} transactions had an upsert that said last-write")
        if self.swallowed:
            out.append(f"{self.swallowed} transfers returned normally although their transaction was refused, so they "
                       "were counted as done")
        return out


def _amount(seed: int, writer: int, op: int) -> int:
    """How much transfer ``op`` of ``writer`` moves: drawn once per transfer, the same on every retry."""
    return random.Random(f"lab04/{seed}/{writer}/{op}").randint(1, 20)


def run_transfers(session: Session, transfer: Any, is_conflict: Any, workers: int, transfers: int, seed: int,
                   progress: bool, max_attempts: int = 40) -> tuple[TransferRun, str | None]:
    """``workers`` threads each making ``transfers`` random transfers with retries; (run, fatal hint or None).

    ``statelab.writers.run_writers`` runs them: each operation picks the account to debit (one of the run's two
    keys) and an amount, and calls the learner's ``transfer`` until it returns; a refusal is retried, with full
    jitter, while the learner's ``is_conflict`` says so.
    """
    from tqdm.auto import tqdm

    accounts = Accounts.open(session)
    store = session.store_name
    flags = TransferFlags()
    lock = threading.Lock()

    def one_transfer(client: StateClient, task: WriterTask) -> AttemptOutcome:
        assert isinstance(client, RecordingClient)
        dst = accounts.bob if task.key == accounts.alice else accounts.alice
        mark = len(client.calls)
        _, exc = call(transfer, client, store, task.key, dst, _amount(seed, task.writer, task.op))
        calls = client.since(mark)
        txs = [c for c in calls if c.kind == "transaction"]
        refused = [c for c in txs if c.status not in (200, 204)]
        with lock:
            flags.refused += len(refused)
            if any(c.kind == "save" for c in calls):
                flags.split += 1
            if txs and exc is None and txs[-1].status not in (200, 204):
                flags.swallowed += 1
            if refused and txs[-1].status in (200, 204):
                flags.retried_inside += 1
            flags.no_etag += sum(any(not c.etags.get(k) for k in c.keys) for c in txs)
            flags.last_write += sum(any(c.concurrency.get(k) == LAST_WRITE for k in c.keys) for c in txs)
        if exc is None:
            return AttemptOutcome(OK)
        if not isinstance(exc, DaprError):
            raise AbortRun(raised(transfer, exc, TRANSFER_TASK))
        retry, err = call(is_conflict, exc)
        if err is not None:
            raise AbortRun(raised(is_conflict, err, CONFLICT_TASK))
        return AttemptOutcome(CONFLICT if retry else ERROR, exc.status or None, None, type(exc).__name__, bool(retry))

    config = WritersConfig(writers=workers, operations=transfers, max_attempts=max_attempts, seed=seed,
                           store=store, policy="full-jitter", base=0.002, cap=0.05)  # backoff: full jitter, 2-50 ms
    with tqdm(total=workers * transfers, desc="transfers", disable=not progress) as bar:
        result = run_writers(session.endpoint, config, progress=progress_bar(bar), attempt=one_transfer,
                             client_factory=lambda e: recording_client(session, e),
                             keys=[accounts.alice, accounts.bob], check=lambda *_: [], together=True)
    attempts = result.history.attempts
    last: dict[tuple[int, int], Attempt] = {(a.writer, a.op): a for a in attempts}  # by start: the last one wins
    gave_up = [a for a in last.values() if a.outcome == ERROR or (a.outcome == CONFLICT and a.attempt == max_attempts)]
    acknowledged = [("a->b" if a.key == accounts.alice else "b->a", _amount(seed, a.writer, a.op))
                    for a in result.history.acknowledged()]
    run = TransferRun(session.store_type.removeprefix("state."), workers, transfers,
                      (accounts.opening, accounts.opening), accounts.balances(), acknowledged,
                      sum(a.outcome == CONFLICT and a.attempt < max_attempts for a in attempts), result.gave_up,
                      Counter(a.detail for a in gave_up), flags, sum(a.outcome == ERROR for a in gave_up))
    return run, (result.fatal or None)


def check_total_conserved(ck: Checker, transfer: Any, is_conflict: Any, workers: int, transfers: int) -> CheckResult:
    session = ck._store_session("sqlite")
    if session is None:
        return failed("total_conserved", "This check needs a store with atomic transactions (SQLite or in-memory) and "
                                          "could not start one here; run the lab with the local stack.")
    for fn, task in ((transfer, TRANSFER_TASK), (is_conflict, CONFLICT_TASK)):
        if not callable(fn):
            return failed("total_conserved", f"Expected a function, got {type(fn).__name__}. {task}")
    wanted = workers // 2  # released together, the first round alone refuses most workers
    seen: list[int] = []
    for _ in range(TRANSFER_RUNS):
        run, fatal = run_transfers(session, transfer, is_conflict, workers, transfers, ck.seed, ck.progress)
        if found := _transfer_problem(run, fatal):
            return found
        seen.append(run.flags.refused)
        if run.flags.refused >= wanted:
            break
    else:
        return failed("total_conserved", f"Your transfers hardly conflicted: {TRANSFER_RUNS} runs of {workers} workers "
                                          f"released together had {', '.join(map(str, seen))} refused transactions, so "
                                          "nothing here showed that your code survives a conflict. Does your `transfer` "
                                          "make workers wait for each other (a lock, a sleep)? Other app instances would "
                                          "not share that lock. Make one read of each balance and one transaction per "
                                          "try, and run the check again.", [run.sentence()], run)
    tries = f" (after {len(seen)} runs: the earlier ones had too few conflicts to prove anything)" if len(seen) > 1 else ""
    return passed("total_conserved", f"{workers} workers, released together, made {len(run.acknowledged)} concurrent "
                                      f"transfers on {run.store_type}: the total is {run.total_after} before and after, "
                                      "and both balances are exactly what the acknowledged transfers add up to; "
                                      f"{run.flags.refused} transactions were refused for a stale ETag and retried by the "
                                      f"loop{tries}.", [run.sentence()], run)


def _transfer_problem(run: TransferRun, fatal: str | None) -> CheckResult | None:
    """The failure a concurrent transfer run shows, if any (None: nothing wrong was seen in this run)."""
    if fatal:
        return failed("total_conserved", fatal, data=run)
    causes = run.flags.causes()
    cause = (" What your transfers sent: " + "; ".join(causes) + ".") if causes else ""
    if run.total_after != run.total_before:
        return failed("total_conserved", f"Money appeared or vanished: the total was {run.total_before} and is now "
                                          f"{run.total_after}.{cause} Both balances of a transfer must change in one "
                                          "transaction, each upsert carrying the ETag read for it, and a refusal must "
                                          "reach the caller.", [run.sentence()], run)
    if run.final != run.expected:
        return failed("total_conserved", f"The total holds, but the balances {run.final} are not what the acknowledged "
                                          f"transfers add up to {run.expected}: some transfers that were reported done "
                                          f"did not happen, or overwrote another.{cause}", [run.sentence()], run)
    if causes:
        return failed("total_conserved", "The total held this time, but not thanks to your code: " + "; ".join(causes) +
                                          ". This store checked what it could; with more contention, or on another "
                                          "store, those transfers lose or create money.", [run.sentence()], run)
    if run.not_retried:
        errors = ", ".join(f"{n}× {name}" for name, n in run.failures.items())
        return failed("total_conserved", f"{run.gave_up} transfers gave up ({errors}): your `is_conflict()` said not to "
                                          "retry them. A stale ETag inside a transaction answers 500 "
                                          "ERR_STATE_TRANSACTION (`TransactionFailed`), not 409: does `is_conflict()` "
                                          "say True for it?", [run.sentence()], run)
    if run.gave_up:
        return failed("total_conserved", f"{run.gave_up} transfers gave up after every allowed attempt was refused: "
                                          "does each attempt read both balances afresh before its transaction?",
                       [run.sentence()], run)
    if run.flags.retried_inside:
        return failed("total_conserved", f"{run.flags.retried_inside} calls of your `transfer()` sent another "
                                          "transaction by themselves after a refused one: your `transfer` retries "
                                          "inside. The total held, but the loop never saw those conflicts, so it could "
                                          "not ask `is_conflict()`, bound the attempts nor wait between them. Make one "
                                          "try, and let the error propagate.", [run.sentence()], run)
    return None


ON_REDIS_KEYS = ("status", "debit_applied", "credit_applied")


def check_redis_transaction(ck: Checker, transfer: Any, on_redis: Any) -> CheckResult:
    shape = "`{\"status\": ..., \"debit_applied\": ..., \"credit_applied\": ...}`"
    if is_placeholder(on_redis):
        return failed("redis_transaction", f"`on_redis` is still the placeholder `...`: predict {shape} for the transfer "
                                            "described above, before running the check.")
    if not isinstance(on_redis, dict):
        return failed("redis_transaction", f"`on_redis` is {described(on_redis)}, but the question has three parts: "
                                            f"predict a dict {shape} (the status, and whether each half was applied).")
    if missing := [k for k in ON_REDIS_KEYS if k not in on_redis]:
        return failed("redis_transaction", f"`on_redis` has no {', '.join(f'`{k}`' for k in missing)}: predict all "
                                            f"three, {shape}.")
    if isinstance(on_redis["status"], bool) or not isinstance(on_redis["status"], int):
        return failed("redis_transaction", f"`status` is {described(on_redis['status'])}: write the HTTP status as a "
                                            "number, e.g. 404 rather than \"404\".")
    if texts := [k for k in ON_REDIS_KEYS[1:] if not isinstance(on_redis[k], bool)]:
        return failed("redis_transaction", f"`{texts[0]}` is {described(on_redis[texts[0]])}: write True or False.")
    session = ck._store_session("redis")
    if session is None:
        wrong = [k for k in ON_REDIS_KEYS if on_redis[k] != KNOWN_ON_REDIS[k]]
        known = "On Redis the transaction answers 500, the debit is applied and the credit is not"
        if wrong:
            return failed("redis_transaction", "Not measured here: no Redis store (it needs the local stack or a sidecar "
                                                f"on state.redis). But your prediction is not what Redis does: {known} "
                                                "(docs/dapr-behaviour.md §12). You predicted " +
                                                ", ".join(f"{k}={on_redis[k]!r}" for k in wrong) + ".")
        return passed("redis_transaction", "Not measured here: no Redis store (it needs the local stack or a sidecar on "
                                            f"state.redis). Your prediction matches what Redis does: {known}.")
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
                       ", ".join(f"{k}={on_redis.get(k)!r}" for k in wrong) + ". docs/dapr-behaviour.md §12: on Redis a "
                       "transaction is a MULTI/EXEC batch of scripts; read what happens when one of them fails.",
                       data=measured)
    return passed("redis_transaction", f"Right: {facts}. Redis runs the transaction as MULTI/EXEC, one script per "
                                        "operation, without rollback: bob's script refuses the stale ETag, alice's "
                                        "succeeds, and daprd reports the whole transaction as failed (500 "
                                        "ERR_STATE_TRANSACTION). The 30 are gone, and a retry would debit alice again. "
                                        "On Redis keep values that must change together in one key (one save with "
                                        "one ETag), or use a store with atomic transactions.", data=measured)
