"""State stores, one module each, all implementing ``StateStore`` from ``base``."""

from __future__ import annotations

from statelab.errors import ComponentError
from statelab.server.components import Component
from statelab.server.stores.base import StateStore


def open_store(component: Component) -> StateStore:
    """A store object for a component (not yet initialised: call ``await store.init()``)."""
    if component.type == "state.in-memory":
        from statelab.server.stores.memory import MemoryStore

        return MemoryStore(component.metadata)
    if component.type == "state.sqlite":
        from statelab.server.stores.sqlite import SQLiteStore

        return SQLiteStore(component.metadata)
    if component.type == "state.redis":
        from statelab.server.stores.redis import RedisStore

        return RedisStore(component.metadata)
    raise ComponentError(f"state store type {component.type} is not available in statelab")


__all__ = ["StateStore", "open_store"]
