"""Watching what learner code sends: a recording ``StateClient`` and the HTTP exchanges a check heard."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from statelab.client import Reply, StateClient
from statelab.lab.learner_code import token

if TYPE_CHECKING:

    from statelab.session import Session

# --- watching what learner code sends ----------------------------------------------------------------


@dataclass
class Call:
    """One Dapr state API call as a recording client saw it."""

    kind: str  # "get", "save", "delete", "transaction", "bulk" or "other"
    keys: list[str]
    status: int | None
    etag_read: str | None = None  # GET: the ETag answered
    etags: dict[str, str | None] = field(default_factory=dict)  # save/transaction/delete: key -> ETag sent
    concurrency: dict[str, str | None] = field(default_factory=dict)  # key -> concurrency option sent
    values: dict[str, Any] = field(default_factory=dict)  # save/transaction upserts: key -> value sent
    started: float = 0.0  # time.perf_counter() when the request went out
    ended: float = 0.0  # ... and when its answer was in


def _describe_call(method: str, path: str, params: dict | None, body: Any, headers: dict | None,
                   resp: Reply | requests.Response) -> Call:
    parts = [unquote(p) for p in path.split("/")]
    # ['', 'v1.0', 'state', store, key?]
    rest = parts[4:] if len(parts) > 4 and parts[2] == "state" else []
    status = resp.status_code
    if method == "GET" and rest:
        return Call("get", [rest[0]], status, etag_read=resp.headers.get("ETag"))
    if method == "DELETE" and rest:
        etag = (headers or {}).get("If-Match") or None
        return Call("delete", [rest[0]], status, etags={rest[0]: etag},
                    concurrency={rest[0]: (params or {}).get("concurrency")})
    if method in ("POST", "PUT") and rest == ["bulk"]:
        return Call("bulk", list((body or {}).get("keys", [])), status)
    if method in ("POST", "PUT") and rest == ["transaction"]:
        call = Call("transaction", [], status)
        for op in (body or {}).get("operations", []):
            req = op.get("request", {})
            key = req.get("key", "")
            call.keys.append(key)
            call.etags[key] = req.get("etag")
            call.concurrency[key] = (req.get("options") or {}).get("concurrency")
            if op.get("operation") == "upsert":
                call.values[key] = req.get("value")
        return call
    if method in ("POST", "PUT") and not rest and isinstance(body, list):
        call = Call("save", [], status)
        for item in body:
            key = item.get("key", "")
            call.keys.append(key)
            call.etags[key] = item.get("etag")
            call.concurrency[key] = (item.get("options") or {}).get("concurrency")
            call.values[key] = item.get("value")
        return call
    return Call("other", [], status)


class RecordingClient(StateClient):
    """A ``StateClient`` that keeps every state call, and can let "someone else" write right after a read.

    ``interpose(key, action)`` runs ``action()`` once, right after the first read of ``key`` returns (a get,
    or a bulk get that includes it): the deterministic way to put a competing write between a learner's read
    and their write.
    """

    def __init__(self, endpoint: str, *, api_token: str = "", timeout: float = 10.0) -> None:
        super().__init__(endpoint, api_token=api_token, timeout=timeout)
        self.calls: list[Call] = []
        self.interposed: list[str] = []  # keys whose competing write has run
        self._after_read: dict[str, Callable[[], None]] = {}

    def interpose(self, key: str, action: Callable[[], None]) -> None:
        self._after_read[key] = action

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                headers: dict | None = None, data: bytes | None = None) -> Reply:
        started = time.perf_counter()
        resp = super().request(method, path, params=params, json_body=json_body, headers=headers, data=data)
        call = _describe_call(method, path, params, json_body, headers, resp)
        call.started, call.ended = started, time.perf_counter()
        self.calls.append(call)
        if call.kind in ("get", "bulk") and resp.status_code in (200, 204):
            for key in call.keys:  # a bulk get reads several keys at once: the same as reading each
                action = self._after_read.pop(key, None)
                if action is not None:
                    action()
                    self.interposed.append(key)
        return resp

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def __enter__(self) -> RecordingClient:
        return self


def recording_client(session: Session, endpoint: str | None = None) -> RecordingClient:
    return RecordingClient(endpoint or session.endpoint, api_token=token(session), timeout=session.client.timeout)


@dataclass
class Exchange:
    """One HTTP exchange made with ``requests`` (by learner code), as it went over the wire."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any
    status: int
    error_code: str
    response_headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def exchange_of(request: requests.PreparedRequest, resp: requests.Response) -> Exchange:
    raw = request.body.decode("utf-8", "replace") if isinstance(request.body, bytes) else str(request.body or "")
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    try:
        answer = resp.json() if resp.content else None
    except ValueError:
        answer = None
    code = str(answer.get("errorCode", "")) if isinstance(answer, dict) else ""
    headers = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in request.headers.items()}
    return Exchange(request.method or "", request.url or "", headers, body, resp.status_code, code, dict(resp.headers))
