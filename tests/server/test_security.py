"""Who can reach the stack: loopback-only listeners, the Redis password of a shared stack, DAPR_API_TOKEN on
every route but the health checks, and JupyterLab on 127.0.0.1 with a token (``./scripts/lab``).

A workshop runs one instructor's stack for a room (``statelab up --shared``) on a machine others may log in
to; anything listening beyond 127.0.0.1, or a Redis without a password, would be open to all of them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from helpers import APP_ID, ROOT, STORE_NAME, free_port_base, make_stack, wait_until

from statelab import cli, local
from statelab.local import Stack

# --- what listens where (/proc/net/tcp{,6}) ------------------------------------------------------------------


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket on the machine: inode -> (local address, port)."""
    found: dict[int, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_addr, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = local_addr.split(":")
            raw = bytes.fromhex(hex_ip)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words)
            address = address.removeprefix("::ffff:")  # an IPv6 socket bound to an IPv4-mapped address
            found[inode] = (address, int(hex_port, 16))
    return found


def listeners_of(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every socket process ``pid`` listens on."""
    listening = _listening_sockets()
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[len("socket:[") : -1])
            if inode in listening:
                out.append(listening[inode])
    return sorted(out)


pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")


def test_sidecars_and_redis_listen_on_loopback_only(stacks: dict[str, Stack]) -> None:
    seen = {}
    for store, stack in stacks.items():
        for name, pid in stack.pids.items():
            sockets = listeners_of(pid)
            assert sockets, f"{store}/{name} (pid {pid}) listens on nothing?"
            seen[f"{store}/{name}"] = sockets
    assert {"redis/redis-0", "redis/redis-1", "redis/sidecar-0", "sqlite/sidecar-0"} <= set(seen)
    exposed = {name: s for name, s in seen.items() if any(address != "127.0.0.1" for address, _ in s)}
    assert exposed == {}, f"listening beyond 127.0.0.1: {exposed}"


def test_sidecar_listens_on_other_addresses_only_when_told(tmp_path: Path) -> None:
    port = free_port_base(1)
    cmd = [
        sys.executable, "-m", "statelab", "sidecar", "--app-id", APP_ID, "--dapr-http-port", str(port),
        "--resources-path", str(ROOT / "components" / "in-memory"), "--dapr-listen-addresses", "0.0.0.0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DAPR_API_TOKEN", None)
    with open(tmp_path / "sidecar.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: local.healthz(port), timeout=15), (tmp_path / "sidecar.log").read_text()
        assert listeners_of(proc.pid) == [("0.0.0.0", port)]
    finally:
        proc.terminate()
        proc.wait(10)


# --- the Redis password of a shared stack ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with make_stack(tmp_path_factory.mktemp("shared"), store="redis", replicas=1, shared=True) as stack:
        yield stack


def redis_answers(port: int, *commands: bytes) -> list[bytes]:
    """The first line Redis answers to each inline command (raw socket: redis-py retries failed AUTHs for seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as replies:
        out = []
        for command in commands:
            sock.sendall(command + b"\r\n")
            out.append(replies.readline().rstrip())
        return out


def test_shared_stack_redis_refuses_clients_without_the_password(shared_stack: Stack) -> None:
    assert shared_stack.redis_password and len(shared_stack.redis_password) >= 24
    for i in range(2):  # primary and replica
        port = shared_stack.redis_port + i
        ping, keys, config = redis_answers(port, b"PING", b"KEYS *", b"CONFIG GET requirepass")
        assert ping.startswith(b"-NOAUTH") and keys.startswith(b"-NOAUTH") and config.startswith(b"-NOAUTH")
        assert redis_answers(port, b"AUTH wrong", b"PING") == [
            b"-WRONGPASS invalid username-password pair or user is disabled.",
            b"-NOAUTH Authentication required.",
        ]
        with redis.Redis.from_url(shared_stack.redis_url(i)) as owner:
            assert owner.ping()


def test_shared_stack_sidecar_and_replica_use_the_password(shared_stack: Stack) -> None:
    key = f"shared-{time.monotonic_ns()}"
    resp = requests.post(f"{shared_stack.endpoint}/v1.0/state/{STORE_NAME}", json=[{"key": key, "value": {"n": 1}}])
    assert resp.status_code == 204, resp.text
    assert requests.get(f"{shared_stack.endpoint}/v1.0/state/{STORE_NAME}/{key}").json() == {"n": 1}
    with redis.Redis.from_url(shared_stack.redis_url(1)) as replica:
        assert wait_until(lambda: replica.hget(f"{APP_ID}||{key}", "data") == b'{"n":1}', timeout=5)


def test_shared_stack_keeps_the_password_out_of_sight(shared_stack: Stack) -> None:
    password = shared_stack.redis_password
    assert password is not None
    assert password not in shared_stack.describe()
    assert password not in shared_stack.redis_url(0, password=False)
    for name, pid in shared_stack.pids.items():  # `ps` shows command lines to every user
        assert password not in Path(f"/proc/{pid}/cmdline").read_text(), name
        assert password not in Path(f"/proc/{pid}/environ").read_text(errors="replace"), name
    assert shared_stack.run_dir is not None
    component = shared_stack.run_dir / "components" / "redis" / "statestore.yaml"
    holders = [component, shared_stack.run_dir / "redis-auth.conf"]
    assert f"value: {password}" in component.read_text()  # the sidecar's redisPassword
    for path in holders:
        assert password in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    others = [p for p in shared_stack.run_dir.rglob("*") if p.is_file() and p not in holders]
    assert [p for p in others if password.encode() in p.read_bytes()] == []


def test_shared_stack_restarted_primary_still_requires_the_password(tmp_path: Path) -> None:
    with make_stack(tmp_path, store="redis", replicas=0, redis_password='class-of-2026 "quoted"') as stack:
        stack.restart_redis_primary()
        assert redis_answers(stack.redis_port, b"PING")[0].startswith(b"-NOAUTH")
        key = f"after-restart-{time.monotonic_ns()}"
        resp = requests.post(f"{stack.endpoint}/v1.0/state/{STORE_NAME}", json=[{"key": key, "value": 1}])
        assert resp.status_code == 204, resp.text


def test_a_stack_that_is_not_shared_has_no_redis_password(stacks: dict[str, Stack]) -> None:
    stack = stacks["redis"]
    assert stack.redis_password is None and not stack.shared
    assert "@" not in stack.redis_url(0)


def test_statelab_up_shared_asks_for_a_shared_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = {}

    def fake_up(**kwargs: object) -> Stack:
        asked.update(kwargs)
        return Stack(store="redis", **{k: v for k, v in kwargs.items() if k != "store"})  # type: ignore[arg-type]

    monkeypatch.setattr(local, "up", fake_up)
    assert cli.main(["up", "--shared"]) == 0
    assert asked["shared"] is True
    assert cli.main(["up"]) == 0
    assert asked["shared"] is False


# --- DAPR_API_TOKEN ----------------------------------------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with make_stack(tmp_path_factory.mktemp("token"), store="in-memory", api_token=TOKEN) as stack:
        yield stack


# Every route the sidecar serves, plus daprd's fallback for anything else (docs/dapr-behaviour.md §1.1); the health
# GETs are exempt (§1.2).
ROUTES = [
    ("POST", f"/v1.0/state/{STORE_NAME}", b'[{"key":"tok","value":1}]'),
    ("PUT", f"/v1.0/state/{STORE_NAME}", b'[{"key":"tok","value":1}]'),
    ("GET", f"/v1.0/state/{STORE_NAME}/tok", b""),
    ("DELETE", f"/v1.0/state/{STORE_NAME}/tok", b""),
    ("POST", f"/v1.0/state/{STORE_NAME}/bulk", b'{"keys":["tok"]}'),
    ("PUT", f"/v1.0/state/{STORE_NAME}/bulk", b'{"keys":["tok"]}'),
    ("POST", f"/v1.0/state/{STORE_NAME}/transaction", b'{"operations":[]}'),
    ("PUT", f"/v1.0/state/{STORE_NAME}/transaction", b'{"operations":[]}'),
    ("POST", f"/v1.0-alpha1/state/{STORE_NAME}/query", b"{}"),
    ("PUT", f"/v1.0-alpha1/state/{STORE_NAME}/query", b"{}"),
    ("GET", "/v1.0/metadata", b""),
    ("PUT", "/v1.0/metadata/tok", b"v"),
    ("POST", "/v1.0/healthz", b""),  # only GET is exempt
    ("DELETE", "/v1.0/healthz/outbound", b""),
    ("GET", "/v1.0/invoke/other/method/x", b""),  # no route: daprd checks the token before the fallback
    ("GET", f"/v1.0/state/{STORE_NAME}", b""),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_api_token_is_required_on_every_route_but_the_health_checks(
    token_stack: Stack, method: str, path: str, body: bytes
) -> None:
    url = token_stack.endpoint + path
    for headers in ({}, {"dapr-api-token": "wrong"}, {"dapr-api-token": TOKEN.upper()}, {"dapr-api-token": ""}):
        resp = requests.request(method, url, data=body, headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.content == b"invalid api token\n"
    allowed = requests.request(method, url, data=body, headers={"DAPR-API-TOKEN": TOKEN})  # any header case
    assert allowed.status_code != 401, allowed.text


def test_a_refused_save_writes_nothing(token_stack: Stack) -> None:
    key = f"unauthorised-{time.monotonic_ns()}"
    resp = requests.post(f"{token_stack.endpoint}/v1.0/state/{STORE_NAME}", json=[{"key": key, "value": 1}])
    assert resp.status_code == 401
    got = requests.get(f"{token_stack.endpoint}/v1.0/state/{STORE_NAME}/{key}", headers={"dapr-api-token": TOKEN})
    assert got.status_code == 204


@pytest.mark.parametrize("path", ["/v1.0/healthz", "/v1.0/healthz/outbound"])
def test_health_checks_need_no_token(token_stack: Stack, path: str) -> None:
    assert requests.get(token_stack.endpoint + path).status_code == 204
    assert requests.get(token_stack.endpoint + path, headers={"dapr-api-token": "wrong"}).status_code == 204


# --- ./scripts/lab: JupyterLab on 127.0.0.1 with a token -------------------------------------------------------

LAB = ROOT / "scripts" / "lab"


def test_lab_script_binds_jupyter_to_loopback_and_sets_a_token() -> None:
    text = LAB.read_text() + (ROOT / "jupyter" / "jupyter_server_config.py").read_text()
    assert "--ip=127.0.0.1" in text
    assert '--IdentityProvider.token="$TOKEN"' in text
    assert "secrets.token_urlsafe" in text  # a random token unless JUPYTER_TOKEN is set
    for unsafe in (
        "--ip=0.0.0.0",
        "--ip='*'",
        "token=''",
        'token=""',
        "--NotebookApp.token",
        "disable_check_xsrf",
        'ip = "0.0.0.0"',
        "ip = '*'",
        ".token = ",
        "password_required = False",
        "allow_remote_access",
    ):
        assert unsafe not in text


def _stub_lab(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/lab in a fake checkout whose setup, statelab and jupyter only record how they were called."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(LAB, tmp_path / "scripts" / "lab")
    shutil.copytree(ROOT / "jupyter", tmp_path / "jupyter")  # the JupyterLab config the script passes
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    stubs = {
        tmp_path / "scripts" / "setup": "#!/bin/sh\nexit 0\n",
        bin_dir / "statelab": f'#!/bin/sh\necho "statelab $*" >> "{calls}"\n',
        bin_dir / "jupyter": f'#!/bin/sh\nfor a in "$@"; do echo "jupyter-arg $a" >> "{calls}"; done\n',
    }
    for path, text in stubs.items():
        path.write_text(text)
        path.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return tmp_path / "scripts" / "lab", calls


def _jupyter_args(calls: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in calls.read_text().splitlines() if line.startswith("jupyter-arg ")]


def test_lab_script_starts_jupyter_on_loopback_with_a_random_token(tmp_path: Path) -> None:
    script, calls = _stub_lab(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "JUPYTER_PORT")}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=True)
    args = _jupyter_args(calls)
    assert args[0] == "lab"
    assert "--ip=127.0.0.1" in args
    tokens = [a.split("=", 1)[1] for a in args if a.startswith("--IdentityProvider.token=")]
    assert len(tokens) == 1 and len(tokens[0]) >= 24
    assert re.search(rf"http://127\.0\.0\.1:8888/\S*\?token={re.escape(tokens[0])}$", out.stdout, re.MULTILINE)
    assert "statelab up" in calls.read_text() and "statelab down" in calls.read_text()  # stack stopped on exit
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert tokens[0] not in again.stdout  # a fresh token every time


def test_lab_script_honours_jupyter_token_and_port(tmp_path: Path) -> None:
    script, calls = _stub_lab(tmp_path)
    env = {**os.environ, "JUPYTER_TOKEN": "chosen-token-123", "JUPYTER_PORT": "9999"}
    subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=True)
    args = _jupyter_args(calls)
    assert "--IdentityProvider.token=chosen-token-123" in args and "--port=9999" in args


@pytest.mark.slow
def test_jupyter_started_as_the_lab_script_does_listens_on_loopback_and_wants_the_token(tmp_path: Path) -> None:
    script, calls = _stub_lab(tmp_path)
    port = free_port_base(1)
    env = {**os.environ, "JUPYTER_TOKEN": "lab-test-token-0123456789", "JUPYTER_PORT": str(port)}
    subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=True)
    args = _jupyter_args(calls)
    jupyter = Path(sys.executable).parent / "jupyter"  # the environment running the tests (.venv or .venvs/X.Y)
    if not jupyter.exists():
        pytest.skip(f"JupyterLab is not installed beside {sys.executable}")
    home = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}  # fmt: skip
    with open(tmp_path / "jupyter.log", "wb") as log:
        proc = subprocess.Popen(
            [str(jupyter), *args], env=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(f"{base}/api/status", timeout=2).status_code in (200, 403)
            except requests.ConnectionError:
                return False

        assert wait_until(up, timeout=60, interval=0.2), (tmp_path / "jupyter.log").read_text()[-2000:]
        assert requests.get(f"{base}/api/status", timeout=5).status_code == 403
        assert (
            requests.get(f"{base}/api/status", params={"token": "lab-test-token-0123456789"}, timeout=5).status_code
            == 200
        )
        assert (
            requests.get(f"{base}/api/status", headers={"Authorization": "token wrong"}, timeout=5).status_code == 403
        )
        assert [address for address, p in listeners_of(proc.pid) if p == port] == ["127.0.0.1"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
