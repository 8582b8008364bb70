"""Lesson 06: a save with the Dapr Python SDK, an ETag and first-write."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from statelab.lessons.exercises.verdict import Verdict, checked, cleanup, fresh, grpc_code, raised, verdicts

if TYPE_CHECKING:
    from statelab.metrics import Metrics
    from statelab.session import Session


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
    return checked("sdk_save", "save_if_unchanged", metrics, lambda: _check_sdk_save(save_if_unchanged, d, lab))


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

    v = verdicts("sdk_save", "save_if_unchanged")
    store = lab.store_name
    current, stale = fresh("ticket"), fresh("ticket")
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
            return v(False, [f"With the current ETag your function raised {raised(exc)}."],
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
            return v(False, [*did, f"With a stale ETag your function let {raised(exc)} escape."],
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
            other = save_if_unchanged(recorder, "no-such-store", fresh("ticket"), "x", "1")
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - the right outcome: an error that is not a conflict came through
            code = grpc_code(exc)
            did.append("For a store that does not exist your function let the error through"
                       + (f" (`{code}`)" if code else "") + ": it is not a conflict.")
        else:
            return v(False, [*did, f"For a store that does not exist your function returned `{other!r}`, as if the "
                             "ETag were stale; the sidecar answered `INVALID_ARGUMENT`."],
                     "Return `False` only for `grpc.StatusCode.ABORTED`; let any other error through (`raise`).")
    finally:
        cleanup(lab, [current, stale])
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
