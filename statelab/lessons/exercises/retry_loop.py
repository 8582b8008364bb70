"""Lesson 03: the retry loop, run against a recording client and crowded by rival writers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statelab.client import LAST_WRITE, State, StateClient
from statelab.errors import DaprError
from statelab.lessons.exercises.verdict import STUCK, Verdict, checked, cleanup, fresh, raised, verdicts

if TYPE_CHECKING:
    from statelab.metrics import Metrics
    from statelab.session import Session


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


class RecordingClient(StateClient):
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


class _Crowded(RecordingClient):
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
    key = fresh("account")
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
        cleanup(lab, [key])
    return run


def check_retry_loop(deposit: Callable[..., Any], lab: Session, metrics: Metrics | None = None) -> Verdict:
    """Call ``deposit(client, store, key, amount, max_attempts, backoff)`` three times on fresh accounts of 100:
    alone; with another writer saving between its read and its save twice; and with one doing so every time."""
    return checked("retry_loop", "deposit", metrics, lambda: _check_retry_loop(deposit, lab))


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
    v = verdicts("retry_loop", "deposit")
    alone = _deposit_run(deposit, lab, rivals=0, max_attempts=5)
    if alone.raised is not None or alone.runaway:
        what = (f"raised {raised(alone.raised)}" if alone.raised is not None
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
                         f"({_statuses(crowded)}) and your deposit raised {raised(crowded.raised)}."],
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
