"""HTTP/1.1 correctness of the sidecar's own server, over raw sockets.

The sidecar parses HTTP itself (httptools on uvloop), so what a framework would normally guarantee is
tested here: keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``, the 4 MiB body limit,
malformed requests, and that a slow client does not hold up anyone else.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from urllib.parse import quote

import pytest
import requests
from helpers import STORE_NAME

pytestmark = pytest.mark.usefixtures("stacks")


@pytest.fixture
def addr(stacks) -> tuple[str, int]:
    port = int(stacks["in-memory"].endpoint.rsplit(":", 1)[1])
    return ("127.0.0.1", port)


def _connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=10)
    return sock


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """Read one response from ``sock`` (Content-Length framed or no body), keeping leftovers in ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a full response head")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the full body")
        rest += chunk
    buf[:] = rest[length:]
    return status, headers, rest[:length]


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _save_request(key: str, value: object, *, close: bool = False) -> bytes:
    body = json.dumps([{"key": key, "value": value}]).encode()
    extra = b"Connection: close\r\n" if close else b""
    return (
        f"POST /v1.0/state/{STORE_NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _get_request(key: str) -> bytes:
    return f"GET /v1.0/state/{STORE_NAME}/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_keep_alive_serves_many_requests_on_one_connection(addr):
    key = f"ka-{uuid.uuid4().hex[:8]}"
    buf = bytearray()
    with _connect(addr) as sock:
        for i in range(20):
            sock.sendall(_save_request(key, i))
            status, headers, _ = _read_response(sock, buf)
            assert status == 204
            assert "connection" not in headers
        sock.sendall(_get_request(key))
        status, headers, body = _read_response(sock, buf)
    assert status == 200
    assert json.loads(body) == 19


def test_pipelined_requests_are_answered_in_order(addr):
    key = f"pipe-{uuid.uuid4().hex[:8]}"
    requests_bytes = b"".join([_save_request(key, 1), _get_request(key), _save_request(key, 2), _get_request(key)])
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(requests_bytes)  # all four in one write
        answers = [_read_response(sock, buf) for _ in range(4)]
    assert [a[0] for a in answers] == [204, 200, 204, 200]
    assert json.loads(answers[1][2]) == 1
    assert json.loads(answers[3][2]) == 2


def test_chunked_request_body_is_decoded(addr):
    key = f"chunk-{uuid.uuid4().hex[:8]}"
    body = json.dumps([{"key": key, "value": {"parts": 3}}]).encode()
    pieces = [body[:5], body[5:17], body[17:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = f"POST /v1.0/state/{STORE_NAME} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(head)
        for start in range(0, len(chunked), 7):  # dribble it: chunk framing split across reads
            sock.sendall(chunked[start : start + 7])
            time.sleep(0.002)
        status, _, _ = _read_response(sock, buf)
        assert status == 204
        sock.sendall(_get_request(key))
        status, _, got = _read_response(sock, buf)
    assert status == 200
    assert json.loads(got) == {"parts": 3}


def test_expect_100_continue_gets_an_interim_answer(addr):
    key = f"cont-{uuid.uuid4().hex[:8]}"
    body = json.dumps([{"key": key, "value": "x"}]).encode()
    head = (
        f"POST /v1.0/state/{STORE_NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(head)
        status, _, _ = _read_response(sock, buf)
        assert status == 100
        sock.sendall(body)
        status, _, _ = _read_response(sock, buf)
    assert status == 204
    assert requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/state/{STORE_NAME}/{key}").json() == "x"


def test_body_over_4_mib_is_rejected_with_daprs_400_and_connection_survives(addr):
    key = f"big-{uuid.uuid4().hex[:8]}"
    value = "x" * (4 * 1024 * 1024)
    body = json.dumps([{"key": key, "value": value}]).encode()
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(
            f"POST /v1.0/state/{STORE_NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers, got = _read_response(sock, buf)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(got)["errorCode"] == "ERR_MALFORMED_REQUEST"
        sock.sendall(_get_request(key))  # same connection still usable
        status, _, _ = _read_response(sock, buf)
    assert status == 204  # nothing was written


def test_body_just_under_the_limit_is_accepted(addr):
    key = f"edge-{uuid.uuid4().hex[:8]}"
    overhead = len(json.dumps([{"key": key, "value": ""}]))
    value = "y" * (4 * 1024 * 1024 - overhead)
    resp = requests.post(f"http://{addr[0]}:{addr[1]}/v1.0/state/{STORE_NAME}", json=[{"key": key, "value": value}])
    assert resp.status_code == 204
    got = requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/state/{STORE_NAME}/{key}")
    assert len(got.json()) == len(value)


def test_malformed_http_gets_plain_400_and_close(addr):
    with _connect(addr) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_connection_close_is_honoured(addr):
    key = f"close-{uuid.uuid4().hex[:8]}"
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(_save_request(key, 1, close=True))
        status, headers, _ = _read_response(sock, buf)
        assert status == 204
        assert headers.get("connection") == "close"
        assert sock.recv(1) == b""  # server closed


def test_http_1_0_request_is_answered_and_closed(addr):
    with _connect(addr) as sock:
        sock.sendall(b"GET /v1.0/healthz HTTP/1.0\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.split(b" ", 2)[1] == b"204"


def test_a_stalled_client_does_not_block_other_clients(addr):
    with _connect(addr) as slow:
        # Half a request, then silence.
        slow.sendall(f"POST /v1.0/state/{STORE_NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[".encode())
        started = time.monotonic()
        for _ in range(20):
            assert requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/healthz", timeout=5).status_code == 204
        assert time.monotonic() - started < 5


def test_many_concurrent_connections_are_all_served(addr):
    socks = [_connect(addr) for _ in range(200)]
    try:
        for s in socks:
            s.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = [_read_response(s, bytearray())[0] for s in socks]
    finally:
        for s in socks:
            s.close()
    assert statuses == [204] * 200


# --- limits: what one hostile client can make the sidecar hold -------------------------------------------------

MAX_BODY = 4 * 1024 * 1024


def _raw(method: str, path: str, body: bytes, *, chunked: bool = False) -> bytes:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536]) for i in range(0, len(body), 65536))
        return f"{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed + b"0\r\n\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("method", "path", "wrap"),
    [
        ("POST", f"/v1.0/state/{STORE_NAME}", False),
        ("PUT", f"/v1.0/state/{STORE_NAME}", False),
        ("POST", f"/v1.0/state/{STORE_NAME}/bulk", True),
        ("PUT", f"/v1.0/state/{STORE_NAME}/transaction", True),
        ("PUT", "/v1.0/metadata/big", False),
    ],
)
def test_every_body_over_4_mib_is_daprs_400_and_writes_nothing(addr, method, path, wrap, chunked):
    key = f"big-{uuid.uuid4().hex[:8]}"
    # Valid JSON that would write `key` if it were let through.
    if path.endswith("/transaction"):
        body = json.dumps({"operations": [{"operation": "upsert", "request": {"key": key, "value": "x" * MAX_BODY}}]})
    elif path.endswith("/bulk"):
        body = json.dumps({"keys": [key] * (MAX_BODY // 8)})
    else:
        body = json.dumps([{"key": key, "value": "x" * MAX_BODY}])
    buf = bytearray()
    with _connect(addr) as sock:
        sock.sendall(_raw(method, path, body.encode(), chunked=chunked))
        status, headers, got = _read_response(sock, buf)
        assert status == 400
        assert headers["content-type"] == "application/json"
        error = json.loads(got)
        # daprd 1.18.3 reads a metadata value before anything decodes it: its own error code (dapr-behaviour §9.2)
        assert error["errorCode"] == ("ERR_BODY_READ" if "/metadata/" in path else "ERR_MALFORMED_REQUEST")
        assert "stream too large" in error["message"]
        if wrap:
            assert error["message"].startswith("failed deserializing HTTP body: ")
        sock.sendall(_get_request(key))  # the connection is still usable, and nothing was written
        assert _read_response(sock, buf)[0] == 204
    meta = requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/metadata").json()
    assert len(meta["extended"].get("big", "")) <= MAX_BODY


def test_headers_over_1_mib_get_431_and_the_connection_closes(addr):
    with _connect(addr) as sock:
        sock.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # 64 MiB offered; the sidecar stops reading after ~1 MiB
                sock.sendall(b"a" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/healthz", timeout=5).status_code == 204


def test_a_key_of_100_kib_in_the_path_is_served(addr):
    # Over 64 KiB the request line outgrew httptools' URL parser; Go's limit is the 1 MiB header limit.
    key = "k" + "é" * 50_000
    base = f"http://{addr[0]}:{addr[1]}/v1.0/state/{STORE_NAME}"
    assert requests.post(base, json=[{"key": key, "value": "long"}]).status_code == 204
    got = requests.get(f"{base}/{quote(key, safe='')}")
    assert got.status_code == 200 and got.json() == "long"
    assert requests.delete(f"{base}/{quote(key, safe='')}").status_code == 204


def _vm_hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")
def test_pipelined_large_bodies_do_not_pile_up_in_the_sidecar(addr, stacks):
    """A client that pipelines 40 bodies of 4 MiB is read one body ahead, not 160 MiB ahead."""
    pid = stacks["in-memory"].pids["sidecar-0"]
    peak_before = _vm_hwm_kib(pid)
    body = b"[" + b" " * (MAX_BODY - 2) + b"x"  # not JSON: answered 400 without being stored
    request = _raw("POST", f"/v1.0/state/{STORE_NAME}", body)
    statuses = []
    with _connect(addr) as sock:
        sender = threading.Thread(target=lambda: [sock.sendall(request) for _ in range(40)], daemon=True)
        sender.start()
        buf = bytearray()
        for _ in range(40):
            statuses.append(_read_response(sock, buf)[0])
        sender.join(30)
    assert statuses == [400] * 40
    grown_mib = (_vm_hwm_kib(pid) - peak_before) / 1024
    assert grown_mib < 64, f"the sidecar's peak memory grew by {grown_mib:.0f} MiB"


def test_a_client_that_never_reads_its_answers_does_not_block_others(addr):
    key = f"fat-{uuid.uuid4().hex[:8]}"
    url = f"http://{addr[0]}:{addr[1]}"
    assert requests.post(f"{url}/v1.0/state/{STORE_NAME}", json=[{"key": key, "value": "z" * (1 << 20)}]).status_code == 204
    with _connect(addr) as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(0.5)
        try:
            for _ in range(100):  # 100 MiB of answers asked for, none read
                greedy.sendall(_get_request(key))
        except TimeoutError:
            pass  # the sidecar stopped reading from us: it is holding back, as it should
        for _ in range(20):
            assert requests.get(f"{url}/v1.0/healthz", timeout=5).status_code == 204
        assert requests.get(f"{url}/v1.0/state/{STORE_NAME}/{key}", timeout=5).status_code == 200


def test_hundreds_of_idle_connections_do_not_block_others(addr):
    idle = [_connect(addr) for _ in range(300)]
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n")  # half a request head, then silence
        for _ in range(20):
            assert requests.get(f"http://{addr[0]}:{addr[1]}/v1.0/healthz", timeout=5).status_code == 204
    finally:
        for sock in idle:
            sock.close()
