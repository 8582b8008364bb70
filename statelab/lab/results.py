"""What a check returns: a verdict with its explanation, and plain notes."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    pass

# --- results --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One check's verdict: ``message`` is the ✓ explanation when passed, the hint when not."""

    name: str
    passed: bool
    message: str
    details: list[str] = field(default_factory=list)
    data: Any = field(default=None, repr=False)  # what the check measured (e.g. a RunResult), for plots

    def text(self) -> str:
        mark = "✓" if self.passed else "✗"
        lines = [f"{mark} {self.name}: {self.message}"]
        lines += [f"    {d}" for d in self.details]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        colour, mark, word = ("#2a9d8f", "✓", "passed") if self.passed else ("#e76f51", "✗", "not yet")
        details = "".join(f"<li>{md(d)}</li>" for d in self.details)
        more = f"<ul style='margin:0.3em 0 0 0'>{details}</ul>" if details else ""
        return (
            f"<div style='border-left:6px solid {colour};padding:0.4em 0.8em;margin:0.3em 0'>"
            f"<b style='color:{colour}'>{mark} check <code>{html.escape(self.name)}</code> {word}</b><br>"
            f"{md(self.message)}{more}</div>"
        )


def md(text: str) -> str:
    """Escape, and render `backticked` parts as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def passed(name: str, message: str, details: Sequence[str] = (), data: Any = None) -> CheckResult:
    return CheckResult(name, True, message, list(details), data)


def failed(name: str, message: str, details: Sequence[str] = (), data: Any = None) -> CheckResult:
    return CheckResult(name, False, message, list(details), data)


@dataclass
class Note:
    """A plain sentence for a cell to show (a skipped step, a solo-mode notice)."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<p><i>{md(self.text)}</i></p>"
