"""An app beside its sidecar: ``statelab run -- <command>`` as ``dapr run`` starts one, with real processes on both
runtimes, and the stack options it stands on (a resources folder of one's own; no store of its own)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from helpers import ROOT, daprd_binary, free_port_base, make_stack, process_gone, wait_until

from statelab import local
from statelab.local import Stack
from statelab.local.probes import free_ports

ORDER_APP = ROOT / "apps" / "order_processor.py"
STARTED = re.compile(r"statelab run: started .*http://127\.0\.0\.1:(?P<port>\d+) .*logs in (?P<run_dir>[^;]+);")
APP_ENV = ("APP_ID", "APP_PROTOCOL", "APP_PORT", "DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "DAPR_HTTP_ENDPOINT",
           "DAPR_GRPC_ENDPOINT", "DAPR_API_TOKEN", "DAPR_METRICS_PORT")
SHOW_ENV = textwrap.dedent(f"""
    import json, os, urllib.request
    env = {{k: os.environ[k] for k in {APP_ENV!r} if k in os.environ}}
    with urllib.request.urlopen(os.environ["DAPR_HTTP_ENDPOINT"] + "/v1.0/healthz") as resp:
        env["healthz"] = resp.status
    print(json.dumps(env))
""")


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run folders, and the record of any `statelab up`, in this test's folder."""
    monkeypatch.setenv("STATELAB_HOME", str(tmp_path / "home"))


@pytest.fixture(params=["statelab", "daprd"])
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with statelab's sidecar and once with a real daprd (skipped without one, as elsewhere)."""
    if request.param == "daprd":
        monkeypatch.setenv("STATELAB_DAPRD", daprd_binary())
    return str(request.param)


def run_base() -> int:
    """A random first port for ``statelab run`` whose whole layout is free: HTTP, the run's Redis (+5), gRPC (+50) and
    daprd's internal gRPC (+100)."""
    return free_ports(lambda base: (base, base + 5, base + 50, base + 100), first=20000, step=10, randomly=True)


def statelab_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``statelab run`` on a random free block of ports, its stdout (the app's) and stderr (its own lines) apart."""
    argv = [sys.executable, "-m", "statelab", "run", "--dapr-http-port", str(run_base()), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env, cwd=ROOT)


def started(done: subprocess.CompletedProcess[str]) -> re.Match[str]:
    found = STARTED.search(done.stderr)
    assert found, done.stderr
    return found


def assert_all_stopped(run_dir: Path, port: int) -> None:
    pids = [p["pid"] for p in json.loads((run_dir / "processes.json").read_text())]
    assert pids and all(process_gone(pid) for pid in pids)
    assert local.port_is_free(port)


def test_the_app_gets_dapr_runs_environment_and_all_it_started_stops_after(runtime: str) -> None:
    import os

    stale = {**os.environ, "DAPR_HTTP_ENDPOINT": "http://127.0.0.1:1", "DAPR_GRPC_ENDPOINT": "127.0.0.1:1"}
    done = statelab_run("--app-id", "orders", "--runtime", runtime, "--", sys.executable, "-c", SHOW_ENV, env=stale)
    assert done.returncode == 0, done.stderr
    line = started(done)
    port = int(line["port"])
    env = json.loads(done.stdout)
    assert env == {
        "APP_ID": "orders", "APP_PROTOCOL": "http",
        "DAPR_HTTP_PORT": str(port), "DAPR_GRPC_PORT": str(port + 50),
        "DAPR_HTTP_ENDPOINT": f"http://127.0.0.1:{port}", "DAPR_GRPC_ENDPOINT": f"127.0.0.1:{port + 50}",  # not the stale ones
        "healthz": 204,
    }
    assert f" {runtime} sidecar (orders) on redis " in done.stderr
    assert done.stderr.rstrip().endswith("the app exited with code 0; stopped the local stack")
    assert_all_stopped(Path(line["run_dir"]), port)


def test_the_apps_exit_code_is_passed_on(runtime: str) -> None:
    done = statelab_run("--runtime", runtime, "--store", "sqlite", "--", sys.executable, "-c", "raise SystemExit(3)")
    assert done.returncode == 3
    assert "the app exited with code 3" in done.stderr
    assert_all_stopped(Path(started(done)["run_dir"]), int(started(done)["port"]))


def test_state_the_app_wrote_outlives_its_sidecar(runtime: str, tmp_path: Path) -> None:
    """As with `dapr run --resources-path` on dapr init's Redis: the app's sidecar goes, the store and its orders stay."""
    with make_stack(tmp_path / "store", sidecars=1, replicas=0) as store:
        resources = tmp_path / "resources"
        resources.mkdir()
        (resources / "statestore.yaml").write_text(yaml.safe_dump(store.store_component()))
        done = statelab_run("--runtime", runtime, "--resources-path", str(resources), "--",
                            sys.executable, str(ORDER_APP))
        assert done.returncode == 0, done.stderr
        assert "deleted order-3" in done.stdout
        assert f"on the store its components name ({resources})" in done.stderr
        url = f"{store.endpoint}/v1.0/state/statestore"
        assert requests.get(f"{url}/order-1").json() == {"orderId": 1, "item": "coffee", "qty": 1}
        assert requests.get(f"{url}/order-2").json()["qty"] == 2
        assert requests.get(f"{url}/order-3").status_code == 204
        assert_all_stopped(Path(started(done)["run_dir"]), int(started(done)["port"]))
        assert store.running  # the store it used is not its to stop


@pytest.mark.slow  # the app gets up to APP_STOP_GRACE_SECONDS to go
def test_ctrl_c_is_passed_to_the_app_and_then_the_stack_stops() -> None:
    app = "import time; print('ready', flush=True); time.sleep(120)"
    argv = [sys.executable, "-m", "statelab", "run", "--dapr-http-port", str(run_base()), "--",
            sys.executable, "-c", app]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)  # what a Ctrl-C in the terminal sends it (the app has a session of its own)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT  # the app died of the SIGINT passed on to it
    assert "KeyboardInterrupt" in stderr
    line = STARTED.search(stderr)
    assert line, stderr
    assert_all_stopped(Path(line["run_dir"]), int(line["port"]))


@pytest.fixture
def up_stack() -> Iterator[Stack]:
    base = free_port_base(8)
    stack = local.up(store="redis", replicas=0, sidecars=1, http_port=base, grpc_port=base + 4, redis_port=base + 2)
    try:
        yield stack
    finally:
        local.down()


def test_attach_runs_the_app_beside_the_running_stack_and_leaves_it_running(up_stack: Stack) -> None:
    done = statelab_run("--attach", "--", sys.executable, str(ORDER_APP))
    assert done.returncode == 0, done.stderr
    assert f"sidecar {up_stack.endpoint}" in done.stdout
    assert "statelab run: using the running local stack" in done.stderr
    assert "the local stack of `statelab up` keeps running" in done.stderr
    status = local.status()
    assert status is not None and status["running"]
    assert requests.get(f"{up_stack.endpoint}/v1.0/state/statestore/order-2").json()["qty"] == 2


def test_attach_without_a_running_stack_starts_nothing_and_says_so() -> None:
    done = statelab_run("--attach", "--", sys.executable, "-c", "print('never')")
    assert done.returncode == 1
    assert "no stack of `statelab up` is running" in done.stderr
    assert done.stdout == ""


def test_a_command_that_cannot_start_is_127_and_the_stack_still_stops() -> None:
    done = statelab_run("--", "statelab-no-such-program")
    assert done.returncode == 127
    assert "cannot start statelab-no-such-program" in done.stderr
    assert_all_stopped(Path(started(done)["run_dir"]), int(started(done)["port"]))


def test_without_a_command_it_explains_and_starts_nothing() -> None:
    done = statelab_run()
    assert done.returncode == 2
    assert "give the app's command after --" in done.stderr
    assert "started" not in done.stderr


# --- the stack underneath: a resources folder of one's own ------------------------------------------------------


RESILIENCY = {"apiVersion": "dapr.io/v1alpha1", "kind": "Resiliency", "metadata": {"name": "store-policy"},
              "spec": {"policies": {"retries": {"again": {"policy": "constant", "duration": "100ms", "maxRetries": 2}}},
                       "targets": {"components": {"statestore": {"outbound": {"retry": "again"}}}}}}


def test_a_resources_folder_is_pointed_at_the_stacks_own_store_and_other_resources_pass_unchanged(tmp_path: Path) -> None:
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "orders.yaml").write_text((local.components_source() / "redis" / "statestore.yaml").read_text()
                                           .replace("name: statestore", "name: orders"))
    (resources / "resiliency.yaml").write_text(yaml.safe_dump(RESILIENCY))
    with make_stack(tmp_path, sidecars=1, replicas=0, resources_path=resources) as stack:
        loaded = stack.run_dir / "components" / "redis"  # type: ignore[operator]
        orders = yaml.safe_load((loaded / "orders.yaml").read_text())
        host = {m["name"]: m["value"] for m in orders["spec"]["metadata"]}["redisHost"]
        assert host == f"127.0.0.1:{stack.redis_port}"  # localhost:6379 in the source folder
        assert yaml.safe_load((loaded / "resiliency.yaml").read_text()) == RESILIENCY
        url = f"{stack.endpoint}/v1.0/state/orders"
        assert requests.post(url, json=[{"key": "k", "value": 1}]).status_code == 204
        log = stack.run_dir / "sidecar-0.log"  # type: ignore[operator]
        assert wait_until(lambda: "Resiliency store-policy is not applied" in log.read_text(), timeout=5)


def test_a_stack_without_a_store_of_its_own_loads_the_folder_as_written(tmp_path: Path) -> None:
    with make_stack(tmp_path / "store", sidecars=0, replicas=0) as store:
        resources = tmp_path / "resources"
        resources.mkdir()
        component = store.store_component("shared", keyPrefix="name")
        (resources / "shared.yaml").write_text(yaml.safe_dump(component))
        with make_stack(tmp_path / "app", sidecars=1, resources_path=resources, start_store=False) as app:
            assert app.redis_replicas == 0 and all(local.port_is_free(p) for p in (app.redis_port, app.redis_port + 1))
            assert "on the store its components name" in app.describe()
            requests.post(f"{app.endpoint}/v1.0/state/shared", json=[{"key": "k", "value": 1}]).raise_for_status()
        import redis

        assert redis.Redis.from_url(store.redis_url()).hget("shared||k", "data") == b"1"


def test_no_store_of_its_own_needs_a_resources_folder() -> None:
    with pytest.raises(ValueError, match="start_store=False needs a resources_path"):
        Stack(start_store=False)
