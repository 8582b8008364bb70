"""The verdict a check returns, and the helpers every exercise's check shares."""

from __future__ import annotations

import html
import re
import sysconfig
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statelab.errors import DaprError, SidecarUnavailable

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


def verdicts(exercise: str, function: str) -> Callable[..., Verdict]:
    """``v(passed, did, fix="", **more)``: a Verdict of this exercise, with less to type in each branch."""

    def make(passed: bool, did: list[str], fix: str = "", **more: Any) -> Verdict:
        return Verdict(exercise, function, passed, did, fix, **more)

    return make


def checked(exercise: str, function: str, metrics: Metrics | None, run: Callable[[], Verdict]) -> Verdict:
    """Run one check; whatever the learner's code raises becomes a ✗ verdict, recorded in ``metrics``."""
    try:
        verdict = run()
    except NotImplementedError:
        verdict = _not_written(exercise, function)
    except SidecarUnavailable as exc:
        verdict = Verdict(exercise, function, False, [f"The sidecar did not answer: {short(str(exc))}"],
                          "Run the setup cell again (it starts or finds the sidecar), then this one.")
    except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything; the notebook must go on
        if isinstance(exc, DaprError) and _learner_line(exc) is None:  # the check's own request to the sidecar
            verdict = Verdict(exercise, function, False, [f"The check's own request failed: {short(str(exc))}"],
                              "Run the setup cell again, then this one; if it keeps failing, look at the sidecar.")
        else:
            verdict = Verdict(exercise, function, False, [f"`{function}` raised {raised(exc)}."],
                              f"Read the error and the line it points at, fix your function and run both cells "
                              f"again. {STUCK}")
    if metrics is not None:
        metrics.record(f"exercise_{exercise}", verdict.passed,
                       note=f"the lesson's exercise: the learner's {function}, checked against the sidecar")
    return verdict


# Where a traceback leaves statelab and the libraries: that frame is the learner's line.
_PACKAGE = Path(__file__).resolve().parents[2]
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


def raised(exc: BaseException) -> str:
    """``TypeError: ...`` and, when the traceback shows it, the learner's line that raised it."""
    line = _learner_line(exc)
    where = f" at `{line}`" if line else ""
    code, details = grpc_code(exc), getattr(exc, "details", None)
    message = f"{code}: {details()}" if code and callable(details) else str(exc)  # not the RPC error's long repr
    return f"`{type(exc).__name__}: {short(message, 160)}`{where}"


def short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cleanup(lab: Session, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            lab.client.delete(lab.store_name, key)
        except DaprError:
            pass  # a tidy store is nice to have, not part of the verdict


def grpc_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    try:
        return str(code().name) if callable(code) else ""
    except Exception:  # noqa: BLE001 - not a gRPC error after all
        return ""
