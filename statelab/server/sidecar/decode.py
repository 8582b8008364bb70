"""Request bodies decoded the way daprd's Go structs decode them.

Go matches JSON field names case-insensitively, turns ``null`` into the zero value, and refuses a
value of the wrong JSON kind with ``json: cannot unmarshal <kind> into Go struct field ...``. The
messages are advisory (they vary with Go versions); what matters is that the same bodies are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DecodeError(ValueError):
    pass


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _fields(obj: dict, known: tuple[str, ...]) -> dict[str, Any]:
    """Map an object's keys onto a struct's field names, case-insensitively (the last match wins)."""
    lowered = {name.lower(): name for name in known}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = lowered.get(key.lower())
        if name is not None:
            out[name] = value
    return out


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecodeError(f"json: cannot unmarshal {_kind(value)} into Go struct field {where} of type string")
    return value


def _optional_string(value: Any, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_kind(value)} into Go struct field {where} of type map[string]string"
        )
    return {k: _string(v, where) for k, v in value.items()}


@dataclass
class StateItem:
    """One item of a save body or a transaction operation's ``request`` (``state.SetRequest``)."""

    key: str = ""
    value: Any = None
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    concurrency: str = ""
    consistency: str = ""


_ITEM_FIELDS = ("key", "value", "etag", "metadata", "options", "contentType")


def state_item(obj: Any, struct: str = "SetRequest") -> StateItem:
    if obj is None:
        return StateItem()
    if not isinstance(obj, dict):
        raise DecodeError(f"json: cannot unmarshal {_kind(obj)} into Go value of type state.{struct}")
    f = _fields(obj, _ITEM_FIELDS)
    item = StateItem(
        key=_string(f.get("key"), f"{struct}.key"),
        value=f.get("value"),
        etag=_optional_string(f.get("etag"), f"{struct}.etag"),
        metadata=_string_map(f.get("metadata"), f"{struct}.metadata"),
    )
    _optional_string(f.get("contentType"), f"{struct}.contentType")
    options = f.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise DecodeError(
                f"json: cannot unmarshal {_kind(options)} into Go struct field {struct}.options "
                "of type state.SetStateOption"
            )
        o = _fields(options, ("concurrency", "consistency"))
        item.concurrency = _string(o.get("concurrency"), f"{struct}.options.concurrency")
        item.consistency = _string(o.get("consistency"), f"{struct}.options.consistency")
    return item


def save_items(body: Any) -> list[StateItem]:
    """The save route's ``[]state.SetRequest``."""
    if body is None:
        return []
    if not isinstance(body, list):
        raise DecodeError(f"json: cannot unmarshal {_kind(body)} into Go value of type []state.SetRequest")
    return [state_item(obj) for obj in body]


@dataclass
class BulkGet:
    keys: list[str] = field(default_factory=list)
    parallelism: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


def bulk_get(body: Any) -> BulkGet:
    if body is None:
        return BulkGet()
    if not isinstance(body, dict):
        raise DecodeError(f"json: cannot unmarshal {_kind(body)} into Go value of type http.BulkGetRequest")
    f = _fields(body, ("keys", "parallelism", "metadata"))
    keys = f.get("keys")
    if keys is not None and not isinstance(keys, list):
        raise DecodeError(
            f"json: cannot unmarshal {_kind(keys)} into Go struct field BulkGetRequest.keys of type []string"
        )
    parallelism = f.get("parallelism")
    if parallelism is not None:
        if not isinstance(parallelism, float) or not parallelism.is_integer() or abs(parallelism) > 2**63:
            raise DecodeError(
                f"json: cannot unmarshal {_kind(parallelism)} into Go struct field "
                "BulkGetRequest.parallelism of type int"
            )
    return BulkGet(
        keys=[_string(k, "BulkGetRequest.keys") for k in keys or []],
        parallelism=int(parallelism or 0),
        metadata=_string_map(f.get("metadata"), "BulkGetRequest.metadata"),
    )


@dataclass
class TransactionOp:
    operation: str
    request: dict  # decoded into a StateItem once the operation type is known, as daprd does


@dataclass
class Transaction:
    operations: list[TransactionOp] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def transaction(body: Any) -> Transaction:
    if body is None:
        return Transaction()
    if not isinstance(body, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_kind(body)} into Go value of type state.TransactionalStateRequest"
        )
    f = _fields(body, ("operations", "metadata"))
    ops = f.get("operations")
    if ops is not None and not isinstance(ops, list):
        raise DecodeError(
            f"json: cannot unmarshal {_kind(ops)} into Go struct field "
            "TransactionalStateRequest.operations of type []state.TransactionalStateOperation"
        )
    out = Transaction(metadata=_string_map(f.get("metadata"), "TransactionalStateRequest.metadata"))
    for op in ops or []:
        if op is None:
            op = {}
        if not isinstance(op, dict):
            raise DecodeError(
                f"json: cannot unmarshal {_kind(op)} into Go value of type state.TransactionalStateOperation"
            )
        of = _fields(op, ("operation", "request"))
        name = _string(of.get("operation"), "TransactionalStateOperation.operation")
        request = of.get("request")
        if request is not None and not isinstance(request, dict):
            raise DecodeError(
                f"json: cannot unmarshal {_kind(request)} into Go struct field "
                "TransactionalStateOperation.request of type map[string]interface {}"
            )
        out.operations.append(TransactionOp(name, request or {}))
    return out
