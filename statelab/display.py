"""Readable views of raw HTTP exchanges for lessons: what came back, without the noise.

``show(resp)`` returns an ``Exchange`` that renders as a few lines (request, status, the headers that
matter for the state API, the body pretty-printed). It never prints; the notebook cell displays it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
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
