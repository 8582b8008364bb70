"""The local stack: real redis-server and sidecar processes on random free ports in a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml
from helpers import free_port_base, process_gone, wait_until
from helpers import make_stack as helpers_make_stack

from statelab import local
from statelab.errors import StackError
from statelab.local import Stack


def make_stack(tmp_path: Path, **kwargs: object) -> Stack:
    """A Stack on fresh ports in tmp_path/run (not started)."""
    return helpers_make_stack(**{"run_dir": tmp_path / "run", **kwargs})  # type: ignore[arg-type]


@pytest.fixture
def redis_stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis primary with one replica, no sidecar."""
    with make_stack(tmp_path, sidecars=0, replicas=1) as stack:
        yield stack


@pytest.fixture
def full_stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis primary with one replica and two sidecars."""
    with make_stack(tmp_path, sidecars=2, replicas=1) as stack:
        yield stack


# --- Redis ---


def test_replica_follows_the_primary(redis_stack: Stack) -> None:
    primary = redis.Redis.from_url(redis_stack.redis_url(0))
    replica = redis.Redis.from_url(redis_stack.redis_url(1))
    primary.set("greeting", "hello")
    assert primary.wait(1, 2000) == 1  # the write reached the one replica
    assert replica.get("greeting") == b"hello"
    assert replica.info("replication")["role"] == "slave"


def test_stopped_replica_catches_up_when_started_again(redis_stack: Stack) -> None:
    primary = redis.Redis.from_url(redis_stack.redis_url(0))
    redis_stack.stop_replica(0)
    assert local.port_is_free(redis_stack.redis_port + 1)
    primary.set("written-while-down", "1")
    redis_stack.start_replica(0)
    assert redis.Redis.from_url(redis_stack.redis_url(1)).get("written-while-down") == b"1"


def test_primary_restart_without_aof_loses_everything_replicas_included(redis_stack: Stack) -> None:
    redis.Redis.from_url(redis_stack.redis_url(0)).set("k", "v")
    redis_stack.restart_redis_primary()
    assert redis.Redis.from_url(redis_stack.redis_url(0)).get("k") is None
    assert redis.Redis.from_url(redis_stack.redis_url(1)).get("k") is None  # resynced from the empty primary


def test_primary_restart_with_aof_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with make_stack(tmp_path, sidecars=0, replicas=1, appendonly=True) as stack:
        redis.Redis.from_url(stack.redis_url(0)).set("k", "v")
        stack.restart_redis_primary(signal.SIGKILL)
        assert redis.Redis.from_url(stack.redis_url(0)).get("k") == b"v"
        assert redis.Redis.from_url(stack.redis_url(1)).get("k") == b"v"


def test_redis_urls_name_primary_then_replicas(tmp_path: Path) -> None:
    stack = Stack(redis_port=7000, replicas=2, run_dir=tmp_path)
    assert [stack.redis_url(i) for i in range(3)] == [
        "redis://127.0.0.1:7000",
        "redis://127.0.0.1:7001",
        "redis://127.0.0.1:7002",
    ]
    with pytest.raises(IndexError):
        stack.redis_url(3)


def test_missing_redis_server_is_a_stack_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StackError, match="redis-server not found"):
        local.find_redis_server()


# --- ports and components ---


def test_busy_sidecar_port_fails_fast_and_starts_nothing(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, sidecars=2, replicas=1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.http_port + 1))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(StackError, match=f"port {stack.http_port + 1} is already in use"):
            stack.start()
        assert time.monotonic() - started < 2
    assert local.port_is_free(stack.redis_port)  # Redis was not started either
    assert stack.pids == {}


def test_busy_redis_port_fails_fast(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, sidecars=0, replicas=1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.redis_port))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(StackError, match=f"port {stack.redis_port} is already in use"):
            stack.start()
        assert time.monotonic() - started < 2


def test_overlapping_sidecar_and_redis_ports_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Stack(sidecars=2, http_port=6379, redis_port=6380)


def test_second_stack_on_the_same_ports_is_told_about_the_first(redis_stack: Stack, tmp_path: Path) -> None:
    twin = Stack(sidecars=0, replicas=1, redis_port=redis_stack.redis_port, run_dir=tmp_path / "twin")
    with pytest.raises(StackError, match="by a stack started in this process"):
        twin.start()


def test_sqlite_component_points_into_the_run_dir(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, store="sqlite", sidecars=0)
    with stack:
        assert stack.run_dir is not None
        component = yaml.safe_load((stack.run_dir / "components" / "sqlite" / "statestore.yaml").read_text())
    values = {item["name"]: item["value"] for item in component["spec"]["metadata"]}
    assert values["connectionString"] == str(stack.run_dir / "state.db")
    assert component["metadata"]["name"] == "statestore"


def test_redis_component_points_at_the_stack_primary(redis_stack: Stack) -> None:
    assert redis_stack.run_dir is not None
    component = yaml.safe_load((redis_stack.run_dir / "components" / "redis" / "statestore.yaml").read_text())
    values = {item["name"]: item["value"] for item in component["spec"]["metadata"]}
    assert values["redisHost"] == f"127.0.0.1:{redis_stack.redis_port}"


def test_old_default_run_dirs_are_pruned_but_live_ones_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATELAB_HOME", str(tmp_path / "home"))
    runs = tmp_path / "home" / "runs"
    week_ago = time.time() - 7 * 24 * 3600
    for n in range(local.KEEP_RUN_DIRS + 5):
        old = runs / f"old-{n:02d}"
        old.mkdir(parents=True)
        (old / "processes.json").write_text('[{"name": "redis-0", "pid": 1, "port": 1, "start_time": -1}]')
        os.utime(old, (week_ago + n, week_ago + n))
    live = runs / "old-00"  # the oldest, but its process (this test) still runs
    me = {"name": "sidecar-0", "pid": os.getpid(), "port": 1, "start_time": local.proc_start_time(os.getpid())}
    (live / "processes.json").write_text(json.dumps([me]))
    os.utime(live, (week_ago, week_ago))
    with make_stack(tmp_path, sidecars=0, replicas=0, run_dir=None) as stack:
        assert stack.run_dir is not None and stack.run_dir.parent == runs
    remaining = sorted(p.name for p in runs.iterdir())
    assert len(remaining) == local.KEEP_RUN_DIRS + 1  # the kept newest, the new one, and the live one
    assert "old-00" in remaining and "old-01" not in remaining


# --- sidecars ---


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for sys.executable, so a sidecar can be made to fail on purpose."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_sidecar_that_exits_is_reported_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "echo 'cannot load components'; exit 3"))
    stack = make_stack(tmp_path, store="in-memory", sidecars=1)
    with pytest.raises(StackError, match="exited with code 3") as raised:
        stack.start()
    assert "cannot load components" in str(raised.value)
    assert stack.pids == {}


def test_sidecar_that_never_answers_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "echo 'stuck'; exec sleep 60"))
    stack = make_stack(tmp_path, store="in-memory", sidecars=1, start_timeout=1.0)
    with pytest.raises(StackError, match="was not healthy within 1 s"):
        stack.start()
    assert stack.pids == {}


def test_all_sidecars_answer_healthz(full_stack: Stack) -> None:
    assert full_stack.endpoints == [f"http://127.0.0.1:{full_stack.http_port + i}" for i in range(2)]
    assert all(local.healthz(full_stack.http_port + i) for i in range(2))


def test_sidecar_killed_with_sigkill_is_restarted_healthy(full_stack: Stack) -> None:
    old_pid = full_stack.pids["sidecar-1"]
    full_stack.kill_sidecar(1)
    assert process_gone(old_pid)
    assert not local.healthz(full_stack.http_port + 1)
    full_stack.start_sidecar(1)
    assert full_stack.pids["sidecar-1"] != old_pid
    assert local.healthz(full_stack.http_port + 1)


def test_sidecar_restarted_from_a_short_lived_thread_outlives_the_thread(full_stack: Stack) -> None:
    full_stack.kill_sidecar(0)
    restarter = threading.Thread(target=full_stack.start_sidecar, args=(0,))
    restarter.start()
    restarter.join()
    time.sleep(0.5)  # a child tied to the thread that forked it (PR_SET_PDEATHSIG) would be gone by now
    assert local.healthz(full_stack.http_port)


def test_stop_leaves_no_process_and_frees_every_port(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, sidecars=2, replicas=1).start()
    pids = list(stack.pids.values())
    assert len(pids) == 4
    stack.stop()
    assert all(process_gone(pid) for pid in pids)
    assert all(local.port_is_free(port) for port in stack.ports)
    stack.stop()  # idempotent


def test_sidecars_share_the_redis_primary_and_its_replica(full_stack: Stack) -> None:
    first, second = full_stack.endpoints
    saved = requests.post(f"{first}/v1.0/state/statestore", json=[{"key": "order-1", "value": {"qty": 3}}])
    assert saved.status_code == 204
    assert requests.get(f"{second}/v1.0/state/statestore/order-1").json() == {"qty": 3}
    primary = redis.Redis.from_url(full_stack.redis_url(0))
    assert primary.wait(1, 2000) == 1
    replica = redis.Redis.from_url(full_stack.redis_url(1))
    assert replica.hget("myapp||order-1", "version") == b"1"  # Dapr's layout: hash under appid||key


def test_sqlite_sidecars_share_the_database_file(tmp_path: Path) -> None:
    with make_stack(tmp_path, store="sqlite", sidecars=2) as stack:
        first, second = stack.endpoints
        requests.post(f"{first}/v1.0/state/statestore", json=[{"key": "k", "value": "v"}]).raise_for_status()
        assert requests.get(f"{second}/v1.0/state/statestore/k").json() == "v"
        assert stack.run_dir is not None and (stack.run_dir / "state.db").is_file()


def test_api_token_reaches_every_sidecar(tmp_path: Path) -> None:
    with make_stack(tmp_path, store="in-memory", sidecars=2, api_token="s3cret") as stack:
        for endpoint in stack.endpoints:
            assert requests.get(f"{endpoint}/v1.0/state/statestore/k").status_code == 401
            authorised = requests.get(f"{endpoint}/v1.0/state/statestore/k", headers={"dapr-api-token": "s3cret"})
            assert authorised.status_code == 204  # no such key


def test_sidecar_reads_acknowledged_writes_after_an_aof_primary_restart(tmp_path: Path) -> None:
    with make_stack(tmp_path, sidecars=1, replicas=0, appendonly=True) as stack:
        url = f"{stack.endpoint}/v1.0/state/statestore"
        requests.post(url, json=[{"key": "k", "value": "kept"}]).raise_for_status()
        stack.restart_redis_primary(signal.SIGKILL)
        assert requests.get(f"{url}/k").json() == "kept"


def test_env_points_programs_at_the_first_sidecar(tmp_path: Path) -> None:
    stack = Stack(http_port=4500, api_token="s3cret", run_dir=tmp_path)
    assert stack.env() == {
        "DAPR_HTTP_ENDPOINT": "http://127.0.0.1:4500",
        "DAPR_HTTP_PORT": "4500",
        "DAPR_GRPC_ENDPOINT": "127.0.0.1:4550",  # the gRPC block follows the HTTP one
        "DAPR_GRPC_PORT": "4550",
        "DAPR_API_TOKEN": "s3cret",
    }


# --- lifetime ---


OWNER = textwrap.dedent("""
    import sys, threading, time
    from statelab.local import Stack
    stack = Stack(sidecars=1, replicas=1, http_port=int(sys.argv[1]), redis_port=int(sys.argv[2]), run_dir=sys.argv[3])
    # Started from a thread that has ended by the time the owner dies, as from a Jupyter kernel's worker.
    starter = threading.Thread(target=stack.start)
    starter.start()
    starter.join()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    time.sleep(120)
""")


def test_children_die_when_the_owning_process_is_sigkilled(tmp_path: Path) -> None:
    http_port = free_port_base(3)
    redis_port = http_port + 1
    env = {**os.environ, "PYTHONPATH": str(local.paths.REPO)}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(http_port), str(redis_port), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == "ready\n"
        assert not local.port_is_free(redis_port)
        assert local.healthz(http_port)
    finally:
        owner.kill()
        owner.wait()
    ports = [http_port, redis_port, redis_port + 1]
    assert wait_until(lambda: all(local.port_is_free(port) for port in ports), timeout=5)


def test_up_records_the_stack_and_down_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATELAB_HOME", str(tmp_path / "home"))
    assert local.status() is None
    base = free_port_base(2)
    stack = local.up(sidecars=1, replicas=0, http_port=base, redis_port=base + 1)
    try:
        assert stack.run_dir is not None and stack.run_dir.parent == tmp_path / "home" / "runs"
        recorded = local.status()
        assert recorded is not None and recorded["running"] and recorded["endpoints"] == stack.endpoints
        with pytest.raises(StackError, match="already running"):
            local.up(sidecars=0, replicas=0, redis_port=free_port_base(1))
        stack.kill_sidecar(0)
        assert not local.status()["running"]  # type: ignore[index]
        stack.start_sidecar(0)  # the status file follows the new pid
        assert local.status()["running"]  # type: ignore[index]
    finally:
        assert local.down()
    assert local.status() is None
    assert all(local.port_is_free(port) for port in stack.ports)
    assert not local.down()


def test_a_session_on_the_recorded_stack_can_inject_faults_and_leaves_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ./scripts/lab gives the kernels: DAPR_HTTP_ENDPOINT of a `statelab up` stack, used as local."""
    from statelab.session import open_session

    monkeypatch.setenv("STATELAB_HOME", str(tmp_path / "home"))
    base = free_port_base(12)
    stack = local.up(store="redis", replicas=1, sidecars=2, http_port=base, redis_port=base + 4, grpc_port=base + 8)
    try:
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", stack.endpoint)
        session = open_session()
        assert session.local and not session.owns_stack
        assert session.endpoints == stack.endpoints
        session.client.save("statestore", "k", 1)
        assert session.peek("k")["fields"] == {"data": "1", "version": "1"}
        session.stack.stop_replica(0)
        session.stack.start_replica(0)
        session.stack.kill_sidecar(1)
        session.stack.start_sidecar(1)
        session.close()
        assert all(p["alive"] for p in local.status()["processes"])  # closing the session left it running
    finally:
        assert local.down()
