"""JSON read and written the way daprd's Go code does it.

daprd decodes request bodies with Go's streaming ``encoding/json`` decoder: only the first JSON value
is read (trailing bytes are ignored), every number becomes a float64, ``NaN`` is not JSON. The stores
then re-encode the value: in-memory and SQLite with ``encoding/json`` (sorted keys, ``<>&`` escaped,
shortest float text), Redis with json-iterator's "fastest" config (document order, no HTML escaping,
floats rounded to six decimals). Reproducing this keeps what a learner reads back identical to daprd.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any


class GoJSONError(ValueError):
    """A body Go's decoder would reject; the message imitates Go's wording."""


# Nesting accepted in a request body. Go allows 10000 levels; Python's recursion limit (1000 frames, shared
# with the decoder, the store encoders and the bulk response) does not, and where it ran out depended on the
# call site: a value accepted by a save could fail later as an internal error. One explicit limit, well
# inside the recursion limit, keeps every path consistent (README: "differs on purpose").
MAX_DEPTH = 512


def _too_deep(value: Any) -> bool:
    """True if ``value`` nests lists/objects more than MAX_DEPTH levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))
    return False


def _parse_number(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise GoJSONError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _reject_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


_decoder = json.JSONDecoder(
    parse_float=_parse_number, parse_int=_parse_number, parse_constant=_reject_constant
)


def _ends_before_the_cut(text: str, start: int) -> bool:
    """True if the JSON value at ``start`` ends inside ``text`` (with a byte after it: a number or a literal
    at the very end might go on in the part that was cut off)."""
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return False
    return end < len(text)


def loads(body: bytes, *, cut: bool = False) -> Any:
    """Decode the first JSON value of ``body`` as Go's ``json.Decoder`` does (trailing bytes ignored).

    ``cut``: ``body`` is only the first part of a longer request, cut at the size limit. daprd's decoder
    reads through a size-limited stream, so the request is fine when its first value ends inside that
    part, and "stream too large" when reading it runs into the limit.
    """
    text = body.decode("utf-8", errors="replace")
    start = 0
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    if start == len(text):
        raise GoJSONError("stream too large" if cut else "EOF")
    if cut and not _ends_before_the_cut(text, start):
        # Go scans the whole first value before decoding it, so it runs into the limit first.
        raise GoJSONError("stream too large")
    try:
        value, _ = _decoder.raw_decode(text, start)
    except GoJSONError:
        raise
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise GoJSONError("unexpected EOF") from None
        raise GoJSONError(f"invalid character {text[exc.pos]!r} looking for beginning of value") from None
    except RecursionError:
        raise GoJSONError("exceeded max depth") from None
    # Counting brackets (strings included) is a cheap bound: fewer than MAX_DEPTH cannot nest deeper.
    if isinstance(value, (list, dict)) and body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise GoJSONError("exceeded max depth")
    return value


def go_quote(text: str) -> str:
    """``text`` as Go's ``strconv.Quote`` writes it (what ``%q`` puts in strconv's error messages)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _scrub(text: str) -> str:
    # Lone surrogates (from "\ud800" escapes) cannot be UTF-8 encoded; Go writes U+FFFD for them.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def go_float(value: float) -> str:
    """Format a float64 as ``encoding/json`` does: shortest digits, exponent only outside [1e-6, 1e21)."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    r = repr(value)
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa, _, exp = r.partition("e")
        sign = exp[0]
        digits = exp[1:].lstrip("0") or "0"
        if sign == "-" and len(digits) == 1:
            return f"{mantissa}e-{digits}"
        return f"{mantissa}e{sign}{digits.zfill(2)}"
    text = format(Decimal(r), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def jsoniter_float(value: float) -> str:
    """Format a float64 as json-iterator's ``ConfigFastest`` does (at most six decimals)."""
    sign = ""
    if value < 0:
        sign, value = "-", -value
    if value > 0x4FFFFFF:
        return sign + go_float(value)
    scaled = int(value * 1_000_000 + 0.5)
    whole, frac = divmod(scaled, 1_000_000)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def _encode(value: Any, out: list[str], *, sort: bool, float_text: Callable[[float], str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        items = sorted(value.items()) if sort else value.items()
        for i, (k, v) in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _encode(v, out, sort=sort, float_text=float_text)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out, sort=sort, float_text=float_text)
        out.append("]")
    elif isinstance(value, bool) or value is None:
        out.append("true" if value is True else "false" if value is False else "null")
    elif isinstance(value, (int, float)):
        out.append(float_text(float(value)))
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def dumps_go(value: Any, *, sort_keys: bool = True) -> bytes:
    """Encode as Go's ``encoding/json``: compact, HTML characters escaped, map keys sorted.

    ``sort_keys=False`` is for what Go marshals from structs, whose fields keep declaration order.
    """
    out: list[str] = []
    _encode(value, out, sort=sort_keys, float_text=go_float)
    text = "".join(out)
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return _scrub(text).encode("utf-8")


def dumps_jsoniter(value: Any) -> bytes:
    """Encode as json-iterator's ``ConfigFastest`` (Dapr's Redis store): document order, no HTML escaping."""
    out: list[str] = []
    _encode(value, out, sort=False, float_text=jsoniter_float)
    return _scrub("".join(out)).encode("utf-8")


def dumps(value: Any) -> bytes:
    """Compact JSON for bodies daprd builds from Go structs (errors, bulk results, metadata)."""
    return dumps_go(value, sort_keys=False)
