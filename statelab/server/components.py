"""Dapr Component YAMLs: finding them in a resources folder and reading what a state store needs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from statelab.errors import ComponentError

log = logging.getLogger(__name__)

STATE_TYPES = ("state.in-memory", "state.sqlite", "state.redis")


class Metadata(Mapping[str, str]):
    """A component's ``spec.metadata``: names match case-insensitively, as in daprd.

    daprd decodes component metadata into each store's settings matching names case-insensitively
    (``REDISHOST`` sets ``redisHost``), so every store here reads its settings through this mapping.
    A name spelled exactly as asked wins over another spelling of it, as in daprd's decoder; between
    other spellings, the first in the YAML does (daprd leaves that choice to Go's map order).
    """

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self._lowered: dict[str, str] = {}
        for name, value in self._values.items():
            self._lowered.setdefault(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        return self._lowered[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)  # the names as written in the YAML

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Metadata({self._values!r})"


@dataclass
class Component:
    name: str
    type: str
    version: str = "v1"
    metadata: Mapping[str, str] = field(default_factory=Metadata)  # made a Metadata in __post_init__
    scopes: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, Metadata):
            self.metadata = Metadata(self.metadata)

    def meta(self, name: str, default: str = "") -> str:
        """A metadata value by name, matched case-insensitively as Dapr does."""
        return self.metadata.get(name, default)


def _documents(path: Path) -> list[dict]:
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ComponentError(f"cannot read component file {path}: {exc}") from None
    return [d for d in docs if isinstance(d, dict)]


def _component(doc: dict, source: str) -> Component | None:
    if doc.get("kind") != "Component" or not str(doc.get("apiVersion", "")).startswith("dapr.io/"):
        return None
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    name = str(meta.get("name") or "")
    ctype = str(spec.get("type") or "")
    if not name or not ctype:
        raise ComponentError(f"{source}: a Component needs metadata.name and spec.type")
    values: dict[str, str] = {}
    for entry in spec.get("metadata") or []:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ComponentError(f"{source}: spec.metadata entries need a name")
        if "secretKeyRef" in entry:
            raise ComponentError(f"{source}: secretKeyRef is not supported by the statelab sidecar")
        value = entry.get("value", "")
        values[str(entry["name"])] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return Component(
        name=name,
        type=ctype,
        version=str(spec.get("version") or "v1"),
        metadata=Metadata(values),
        scopes=[str(s) for s in doc.get("scopes") or []],
        source=source,
    )


def load_components(resources_path: str | os.PathLike, app_id: str) -> list[Component]:
    """All state-store components in the folder (``*.yaml``/``*.yml``), scoped to ``app_id``.

    Components of other building blocks are skipped with a log line; an unknown ``state.*`` type is
    an error, since a lesson would otherwise fail later with a confusing 400.
    """
    folder = Path(resources_path)
    if not folder.is_dir():
        raise ComponentError(f"resources path {folder} is not a folder")
    found: dict[str, Component] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        for doc in _documents(path):
            comp = _component(doc, str(path))
            if comp is None:
                if doc.get("kind") == "Resiliency":
                    log.warning("%s: Resiliency %s is not applied: statelab's sidecar has no resiliency policies "
                                "(a real daprd applies them; docs/fidelity.md)", path, (doc.get("metadata") or {}).get("name"))
                continue
            if comp.scopes and app_id not in comp.scopes:
                log.info("component %s is scoped to %s, not %s: skipped", comp.name, comp.scopes, app_id)
                continue
            if not comp.type.startswith("state."):
                log.warning("component %s of type %s skipped: only state stores are served", comp.name, comp.type)
                continue
            if comp.type not in STATE_TYPES:
                raise ComponentError(
                    f"{path}: state store type {comp.type} is not available in statelab "
                    f"(use one of {', '.join(STATE_TYPES)})"
                )
            if comp.name in found:
                raise ComponentError(f"{path}: a component named {comp.name} is already defined")
            found[comp.name] = comp
    return list(found.values())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None, default: float) -> float:
    """Seconds from a Dapr metadata duration: Go syntax (``500ms``, ``1m30s``) or a bare number of seconds."""
    if value is None or value == "":
        return default
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ComponentError(f"invalid duration {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def key_prefix(component: Component, app_id: str) -> str:
    """The prefix daprd puts before every key of this store (``keyPrefix`` metadata, default ``appid``)."""
    strategy = component.meta("keyPrefix", "appid").lower()
    if "||" in strategy:
        raise ComponentError(f"input key/keyPrefix '{strategy}' can't contain '||'")
    if strategy == "appid":
        return f"{app_id}||" if app_id else ""
    if strategy == "name":
        return f"{component.name}||"
    if strategy == "namespace":
        namespace = os.environ.get("NAMESPACE", "")
        if namespace and app_id:
            return f"{namespace}.{app_id}||"
        return f"{app_id}||" if app_id else ""
    if strategy == "none":
        return ""
    return f"{strategy}||"
