"""Readable views of raw HTTP exchanges for lessons: what came back, without the noise.

``show(resp)`` returns an ``Exchange`` that renders as a few lines (request, status, the headers that
matter for the state API, the body pretty-printed). It never prints; the notebook cell displays it.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import requests

_INTERESTING = ("etag", "content-type", "content-length")


@dataclass
class Exchange:
    method: str
    url: str
    status: int
    reason: str
    headers: dict[str, str]
    body: str

    def text(self) -> str:
        lines = [f"{self.method} {self.url}", f"→ {self.status} {self.reason}"]
        lines += [f"  {k}: {v}" for k, v in self.headers.items()]
        if self.body:
            lines += ["  " + line for line in self.body.splitlines()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"


def html_table(headers: Iterable[object], rows: Iterable[Iterable[object]], caption: str = "", *,
               escape: bool = True) -> str:
    """A plain HTML table for ``_repr_html_``; ``escape=False`` when cells are already HTML."""
    esc = (lambda v: html.escape(str(v))) if escape else str
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    cap = f"<caption style='caption-side:top;text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def key_table(rows: Sequence[Mapping[str, object]], key_columns: Sequence[str], caption: str = "") -> str:
    """The columns a reader needs first, in a table that fits a notebook; every column one click further.

    ``key_columns`` missing from the rows are skipped. The full table sits in a collapsed ``<details>`` whose
    body scrolls sideways rather than widening the page.
    """
    if not rows:
        return ""
    columns = list(rows[0].keys())
    keys = [c for c in key_columns if c in columns]
    short = html_table(keys, [[row.get(k, "") for k in keys] for row in rows], caption)
    if len(keys) == len(columns):
        return short
    full = html_table(columns, [[row.get(k, "") for k in columns] for row in rows])
    return (short + f"<details><summary>all {len(columns)} columns</summary>"
            f"<div style='overflow-x:auto;max-width:100%'>{full}</div></details>")


def show(resp: requests.Response) -> Exchange:
    headers = {
        k: v for k, v in resp.headers.items() if k.lower() in _INTERESTING or k.lower().startswith("metadata.")
    }
    try:
        body = json.dumps(resp.json(), indent=2, ensure_ascii=False) if resp.content else ""
    except ValueError:
        body = resp.text
    req = resp.request
    return Exchange(req.method or "", req.url or "", resp.status_code, resp.reason or "", headers, body)


@dataclass
class Source:
    """Code or a resource file shown in the notebook, highlighted ("show me the code", a Component YAML)."""

    name: str
    path: str  # relative to the checkout, e.g. statelab/lessons/etags.py
    first_line: int
    text: str
    language: str = "python"  # a pygments lexer name: "python", "yaml"

    def __repr__(self) -> str:
        where = f", line {self.first_line}" if self.first_line > 1 else ""
        return f"# {self.path}{where}\n{self.text}"

    def _repr_html_(self) -> str:
        line = f", line {self.first_line}" if self.first_line > 1 else ""
        where = f"<p style='margin:0'><code>{html.escape(self.path)}</code>{line}</p>"
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import get_lexer_by_name
        except ImportError:  # pygments comes with JupyterLab; plain text otherwise
            return where + f"<pre>{html.escape(self.text)}</pre>"
        return where + highlight(self.text, get_lexer_by_name(self.language), HtmlFormatter(noclasses=True))


def show_file(path: str | os.PathLike[str], language: str = "yaml") -> Source:
    """A whole file (a Component or Resiliency YAML, an app), shown like ``show_code``; a relative ``path`` is
    taken from the checkout's root."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    full = Path(path) if Path(path).is_absolute() else root / path
    shown = str(full.relative_to(root)) if full.is_relative_to(root) else str(full)
    return Source(full.name, shown, 1, full.read_text(encoding="utf-8").rstrip(), language)


def show_code(obj: object) -> Source:
    """The source of ``obj`` (a function, method or class), to read in the notebook beside what it did."""
    import inspect
    from pathlib import Path

    target = inspect.unwrap(obj)  # type: ignore[arg-type]  # inspect.unwrap accepts any callable-like object
    lines, first = inspect.getsourcelines(target)
    file = Path(inspect.getsourcefile(target) or "?")
    root = Path(__file__).resolve().parents[1]
    path = str(file.resolve().relative_to(root)) if file.resolve().is_relative_to(root) else str(file)
    return Source(getattr(target, "__qualname__", str(target)), path, first, "".join(lines).rstrip())
