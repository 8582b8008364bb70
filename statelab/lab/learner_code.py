"""Calling the learner's functions safely: catching what they raise, naming their own line, fresh keys."""

from __future__ import annotations

import linecache
import os
import traceback
import uuid
from typing import TYPE_CHECKING, Any

import requests

from statelab.client import StateClient
from statelab.errors import StackError

if TYPE_CHECKING:

    from statelab.session import Session

# --- calling learner code ----------------------------------------------------------------------------

_OWN_FILES = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(requests.__file__))


def name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def call(fn: Any, *args: Any) -> tuple[Any, Exception | None]:
    """``fn(*args)``: its result, or the exception it raised (never raised here)."""
    if not callable(fn):
        return None, TypeError(f"expected a function, got {type(fn).__name__} ({fn!r:.60})")
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - the learner's bug becomes a hint, never a traceback
        return None, exc


def your_line(exc: BaseException) -> str:
    """`` (at `line`)`` for the last traceback frame in the learner's code, if there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith(_OWN_FILES) and "site-packages" not in frame.filename:
            line = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
            if line:
                return f" (at `{line}`)"
    return ""


def raised(fn: Any, exc: Exception, task: str) -> str:
    """The hint for a learner function that raised: the TODO stub, or where and what."""
    name = name_of(fn)
    if isinstance(exc, NotImplementedError):
        return f"`{name}()` is still the TODO stub (it raises NotImplementedError). {task}"
    if isinstance(exc, TypeError) and not callable(fn):
        return f"{exc}. {task}"
    return f"`{name}()` raised {type(exc).__name__}: {short(str(exc), 160)}{your_line(exc)}. {task}"


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` is the handout's placeholder ``...``: a learner's own answer (None included) never is."""
    return value is Ellipsis


_ARTICLE = {"int": "an int", "str": "a str", "float": "a float", "bool": "a bool", "dict": "a dict", "list": "a list",
            "tuple": "a tuple", "set": "a set", "NoneType": "None"}


def described(value: Any, width: int = 60) -> str:
    """A value as a hint quotes it, with its type: ``409 (an int)``, ``'409' (a str)``, ``None``."""
    kind = type(value).__name__
    if value is None:
        return "None"
    article = _ARTICLE.get(kind) or (f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}")
    return f"{short(repr(value), width)} ({article})"


def short(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def fresh_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def token(session: Session) -> str:
    return session.client.headers.get("dapr-api-token", "")


def client_for(session: Session, endpoint: str | None = None) -> StateClient:
    """A client of its own (one per thread), with the session's API token."""
    return StateClient(endpoint or session.endpoint, api_token=token(session), timeout=session.client.timeout)


def current_etag(client: StateClient, store: str, key: str) -> str:
    """The ETag of a key a check has just saved (a check prepares the store before calling learner code)."""
    state = client.get(store, key)
    if state is None or not state.etag:
        raise StackError(f"the sidecar lost {key!r} right after saving it, or gave it no ETag")
    return state.etag


def value_of(client: StateClient, store: str, key: str) -> object:
    """The value stored under ``key`` as a check reads it back (None when the key is missing)."""
    state = client.get(store, key)
    return state.value if state is not None else None
