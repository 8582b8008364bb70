"""SQLite writes under load: one writer thread, queued writes committed together (``GroupWriter``).

A group is one transaction with a savepoint per write, so a write that fails (an ETag mismatch) is
undone alone and its neighbours still commit; and nobody hears back before the COMMIT.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from statelab.errors import ETagMismatch, StoreError
from statelab.server.stores.base import SetRequest
from statelab.server.stores.sqlite import GroupWriter, SQLiteStore


def _connect(path: Path):  # noqa: ANN202 - a factory for GroupWriter
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        return conn

    return connect


def _insert(key: str, fail: bool = False):  # noqa: ANN202
    def write(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        if fail:
            raise ETagMismatch("")  # after writing: the savepoint must undo it
        return key

    return write


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "w.db"
    sqlite3.connect(db).execute("CREATE TABLE t (k TEXT PRIMARY KEY)").connection.close()
    return db


def _stored(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {k for (k,) in conn.execute("SELECT k FROM t")}


def test_queued_writes_commit_together_and_a_failed_one_is_undone_alone(path: Path) -> None:
    release = threading.Event()

    async def main() -> list[object]:
        writer = GroupWriter(_connect(path))
        # The first write holds the thread, so the next 30 queue up behind it and go as groups.
        first = writer.submit(lambda conn: release.wait(5) and "first")
        rest = [writer.submit(_insert(f"k{i}", fail=i % 5 == 0)) for i in range(30)]
        release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        stats = (writer.writes, writer.commits)
        writer.close()
        return [*results, stats]

    *results, (writes, commits) = asyncio.run(main())
    assert results[0] == "first"
    for i, result in enumerate(results[1:]):
        if i % 5 == 0:
            assert isinstance(result, ETagMismatch)
        else:
            assert result == f"k{i}"
    assert _stored(path) == {f"k{i}" for i in range(30) if i % 5}
    assert writes == 31 and commits < 5  # grouped: far fewer transactions than writes


def test_a_database_error_in_one_write_reaches_only_its_caller(path: Path) -> None:
    release = threading.Event()

    async def main() -> list[object]:
        writer = GroupWriter(_connect(path))
        hold = writer.submit(lambda conn: release.wait(5))
        dup_a = writer.submit(_insert("same"))
        dup_b = writer.submit(_insert("same"))  # UNIQUE constraint: sqlite3.IntegrityError
        other = writer.submit(_insert("other"))
        release.set()
        out = await asyncio.gather(hold, dup_a, dup_b, other, return_exceptions=True)
        writer.close()
        return out

    _, a, b, other = asyncio.run(main())
    assert a == "same" and other == "other"
    assert isinstance(b, StoreError) and "UNIQUE" in str(b)
    assert _stored(path) == {"same", "other"}


def test_a_transaction_of_its_own_is_never_put_in_a_group(path: Path) -> None:

    def own_transaction(conn: sqlite3.Connection) -> str:
        conn.execute("BEGIN IMMEDIATE")  # would fail inside a group's transaction
        conn.execute("INSERT INTO t (k) VALUES ('tx')")
        conn.execute("COMMIT")
        return "tx"

    async def main() -> list[object]:
        writer = GroupWriter(_connect(path))
        out = await asyncio.gather(
            *(writer.submit(_insert(f"a{i}")) for i in range(10)),
            writer.submit(own_transaction, alone=True),
            *(writer.submit(_insert(f"b{i}")) for i in range(10)),
        )
        writer.close()
        return out

    assert asyncio.run(main())[10] == "tx"
    assert len(_stored(path)) == 21


@pytest.mark.parametrize("count", [1, 200])
def test_close_waits_for_queued_writes(path: Path, count: int) -> None:

    async def main() -> None:
        writer = GroupWriter(_connect(path))
        futures = [writer.submit(_insert(f"k{i}")) for i in range(count)]
        writer.close()  # at once: the queued writes still go in before the thread stops
        assert len(_stored(path)) == count
        assert await asyncio.gather(*futures) == [f"k{i}" for i in range(count)]

    asyncio.run(main())
    assert len(_stored(path)) == count


def _open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process has open (the database, its -wal and -shm)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(f"{folder}{os.sep}"):
            found.append(target)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_store_close_closes_every_connection_also_those_of_its_worker_threads(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()

    async def main() -> list[str]:
        store = SQLiteStore({"connectionString": str(folder / "state.db")})
        await store.init()
        await asyncio.gather(*(store.set(SetRequest(f"k{i}", i)) for i in range(20)))  # the writer thread
        assert (await store.get("k1")).data == b"1"  # the event loop's reader
        # Several reads at once keep several pool threads busy, each opening its own connection.
        found = await asyncio.gather(*(store.bulk_get([f"k{i}", "missing"]) for i in range(20)))
        assert all(items[0].item is not None for items in found)
        assert _open_files_under(folder)
        await store.close()
        return _open_files_under(folder)

    gc.disable()  # a collection could close leaked connections behind close()'s back and hide the leak
    try:
        assert asyncio.run(main()) == []
    finally:
        gc.enable()


def test_a_store_opening_a_database_another_sidecar_holds_waits_instead_of_failing(tmp_path: Path) -> None:
    """Sidecars that share one SQLite file start together; one may hold the write lock (creating the tables,
    switching to WAL) longer than busyTimeout, as under load in CI. The others wait their turn: none fails its start
    with "database is locked"."""
    target = tmp_path / "state.db"
    holder = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another sidecar, busy with the file
    release = threading.Timer(0.8, lambda: holder.execute("COMMIT"))

    async def main() -> bytes | None:
        store = SQLiteStore({"connectionString": str(target), "busyTimeout": "100ms"})
        release.start()
        await store.init()  # 0.8 s of "locked", eight times its busyTimeout
        await store.set(SetRequest("k", 1))
        item = await store.get("k")
        await store.close()
        return item.data if item else None

    try:
        assert asyncio.run(main()) == b"1"
    finally:
        release.join()
        holder.close()
