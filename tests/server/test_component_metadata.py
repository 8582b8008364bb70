"""Component metadata names match case-insensitively, as daprd matches them (``REDISHOST`` sets ``redisHost``)."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path

import pytest
import redis

from statelab.errors import ComponentError
from statelab.server.components import Component, Metadata, key_prefix, load_components
from statelab.server.stores import open_store
from statelab.server.stores.base import SetRequest


def _component(folder: Path, store_type: str, metadata: dict[str, str]) -> Component:
    """Write one Component YAML with these ``spec.metadata`` entries and load it as the sidecar does."""
    entries = "".join(f"  - name: {name}\n    value: {value!r}\n" for name, value in metadata.items())
    (folder / "statestore.yaml").write_text(
        textwrap.dedent(f"""\
            apiVersion: dapr.io/v1alpha1
            kind: Component
            metadata:
              name: statestore
            spec:
              type: {store_type}
              version: v1
              metadata:
            """)
        + entries
    )
    (component,) = load_components(folder, "myapp")
    return component


def _save_and_read(component: Component, key: str, value: object) -> bytes | None:
    async def main() -> bytes | None:
        store = open_store(component)
        await store.init()
        try:
            await store.set(SetRequest(key, value))
            item = await store.get(key)
            return None if item is None else item.data
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_metadata_name_is_found_whatever_its_case() -> None:
    meta = Metadata({"REDISHOST": "localhost:6379", "keyprefix": "name"})
    assert meta["redisHost"] == meta.get("redishost") == "localhost:6379"
    assert "KeyPrefix" in meta and "redisPassword" not in meta
    assert list(meta) == ["REDISHOST", "keyprefix"]  # iteration keeps the names as written


def test_the_exact_spelling_wins_over_another_spelling_of_the_same_name() -> None:
    meta = Metadata({"TABLENAME": "upper", "tableName": "exact"})
    assert meta["tableName"] == "exact"
    assert meta["tablename"] == "upper"  # no exact match: the first spelling in the YAML


def test_a_component_made_from_a_plain_dict_matches_names_case_insensitively() -> None:
    component = Component("statestore", "state.sqlite", metadata={"CONNECTIONSTRING": "x.db"})
    assert component.metadata["connectionString"] == "x.db"
    assert component.meta("connectionstring") == "x.db"


def test_a_sqlite_component_with_names_in_other_cases_loads_and_stores(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    component = _component(tmp_path, "state.sqlite", {
        "ConnectionString": str(db),
        "TABLENAME": "lesson_state",
        "busytimeout": "3s",
        "KeyPrefix": "NAME",
        # Dapr's aliases of timeout and cleanupInterval: accepted as before.
        "timeoutInSeconds": "30",
        "cleanupIntervalInSeconds": "3600",
    })
    assert key_prefix(component, "myapp") == "statestore||"
    assert _save_and_read(component, "statestore||k", {"n": 1}) == b'{"n":1}'
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT key, value FROM lesson_state").fetchall() == [("statestore||k", '{"n":1}')]


def test_the_sqlite_url_alias_works_in_any_case(tmp_path: Path) -> None:
    db = tmp_path / "aliased.db"
    component = _component(tmp_path, "state.sqlite", {"URL": str(db)})
    assert _save_and_read(component, "k", "v") == b'"v"'
    assert db.exists()


def test_a_sqlite_component_without_any_spelling_of_connection_string_is_refused(tmp_path: Path) -> None:
    component = _component(tmp_path, "state.sqlite", {"tableName": "state"})
    with pytest.raises(ComponentError, match="missing connection string"):
        open_store(component)


def test_a_redis_component_with_names_in_other_cases_loads_and_applies_them(tmp_path: Path, stacks) -> None:
    stack = stacks["redis"]
    component = _component(tmp_path, "state.redis", {
        "REDISHOST": f"127.0.0.1:{stack.redis_port}",
        "redispassword": stack.redis_password or "",
        "TTLINSECONDS": "600",  # the store-wide default TTL: observable on the key in Redis
    })
    key = "myapp||metadata-case"
    assert _save_and_read(component, key, 7) == b"7"
    with redis.Redis.from_url(stack.redis_url(0)) as direct:
        assert 0 < direct.ttl(key) <= 600
        direct.delete(key)
