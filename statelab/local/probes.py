"""Small probes of what runs on this machine's loopback: free ports, health answers, Redis readiness."""

from __future__ import annotations

import http.client
import random
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from statelab.errors import StackError
from statelab.local.processes import Child

if TYPE_CHECKING:
    import redis

HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could bind ``host:port`` now (SO_REUSEADDR, as Redis and asyncio servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def accepts(port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``port`` (the gRPC server, which has no plain-HTTP probe)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def healthz(port: int, timeout: float = 1.0) -> bool:
    """True if ``GET /v1.0/healthz`` on the port answers 204 (plain http.client: no proxies from the env)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/v1.0/healthz")
        return conn.getresponse().status == 204
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def redis_client(port: int, password: str | None = None) -> redis.Redis:
    import redis  # here, not at the top: it takes ~0.3 s to import and only Redis stacks need it

    return redis.Redis(host=HOST, port=port, password=password, socket_timeout=2, socket_connect_timeout=1)


def redis_ready(port: int, password: str | None = None) -> bool:
    from redis.exceptions import RedisError

    try:
        with redis_client(port, password) as client:
            return bool(client.ping())
    except RedisError:  # refused, or LOADING while the AOF is replayed
        return False


def replica_linked(port: int, primary_port: int, password: str | None = None) -> bool:
    """True once the replica follows the *current* primary and has finished its post-sync AOF rewrite.

    Comparing replication ids avoids trusting a link status left over from a primary that was just killed.
    """
    from redis.exceptions import RedisError

    try:
        with redis_client(port, password) as replica, redis_client(primary_port, password) as primary:
            info = replica.info()  # the default sections include replication and persistence
            return (
                info.get("master_link_status") == "up"
                and info.get("master_replid") == primary.info("replication").get("master_replid")
                and not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled")
            )
    except RedisError:
        return False


def wait_for(child: Child, ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``ready`` until it holds; StackError if the child dies first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not child.running:
            raise child.died_error(f"before it was {what}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{child.name} was not {what} within {timeout:.0f} s; last lines of {child.log}:\n{child.log_tail()}"
            )
        time.sleep(0.05)


def free_ports(layout: Callable[[int], Iterable[int]], *, first: int, step: int = 1, last: int = 32000,
               randomly: bool = False) -> int:
    """The first ``base`` from ``first`` (in steps of ``step``, or in random order) for which every port of
    ``layout(base)`` is free: the one search for free ports (stacks, tests, benchmarks).

    ``last`` keeps every port below Linux's ephemeral range (32768–60999), where outgoing connections may
    take any port at any moment.
    """
    bases = list(range(first, last, step))
    if randomly:
        random.shuffle(bases)
    for base in bases:
        ports = list(layout(base))
        if all(port < last and port_is_free(port) for port in ports):
            return base
    raise StackError(f"no free ports between {first} and {last}")


def free_port_block(count: int, *, first: int = 20000, randomly: bool = True) -> int:
    """First of ``count`` consecutive free ports (at random by default, so parallel runs rarely collide)."""
    return free_ports(lambda base: range(base, base + count), first=first, randomly=randomly)
