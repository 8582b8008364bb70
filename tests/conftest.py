"""Shared fixtures and hooks: real sidecar processes on each store, on random free ports.

``api`` is parametrised over the three stores, so every test that takes it runs three times against
a real sidecar: in-memory, a SQLite file, and Redis with one replica. The stacks are started once per
session; tests keep apart by using fresh keys (``api.key()``). The plain helpers and names these are built
on (``make_stack``, ``Target``, ``targets``, ``STORE_NAME`` …) live in ``helpers.py``: tests import them from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

pytest.register_assert_rewrite("helpers")  # its checks (e.g. check_lab_solution) explain failures like a test's

from helpers import (  # noqa: E402 - after register_assert_rewrite, so helpers' asserts are rewritten
    APP_ID,
    FUZZ_REQUESTS,
    RELIABILITY,
    STORES,
    Target,
    daprd_binary,
    make_stack,
    targets,
)

from statelab.local import Stack  # noqa: E402


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test that takes ``api`` one run per store (and per runtime where its module asks for both),
    unless the test chooses its targets itself with ``@pytest.mark.parametrize("api", targets(...), indirect=True)``."""
    if "api" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "api" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    metafunc.parametrize("api", targets(runtimes=getattr(metafunc.module, "RUNTIMES", ("statelab",))), indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_REQUESTS or RELIABILITY:
        terminalreporter.section("reliability figures")
        if FUZZ_REQUESTS:
            per_store = ", ".join(f"{store} {n}" for store, n in sorted(FUZZ_REQUESTS.items()))
            terminalreporter.write_line(f"fuzz requests per store: {per_store}")
        for line in RELIABILITY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment() -> Iterator[None]:
    """Tests start their own sidecars: a developer's DAPR_* variables (e.g. from ./scripts/lab) must not leak in."""
    import os

    names = ("DAPR_HTTP_ENDPOINT", "DAPR_HTTP_PORT", "DAPR_GRPC_ENDPOINT", "DAPR_GRPC_PORT", "DAPR_API_TOKEN")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    started: dict[str, Stack] = {}
    try:
        for store in STORES:
            stack = make_stack(tmp_path_factory.mktemp(f"stack-{store}"), store=store, replicas=1, app_id=APP_ID)
            started[store] = stack.start()
        yield started
    finally:
        for stack in started.values():
            stack.stop()


@pytest.fixture(scope="session")
def daprd_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    """The same three stacks as ``stacks``, with real daprd sidecars (started on first use)."""
    binary = daprd_binary()
    started: dict[str, Stack] = {}
    previous = os.environ.get("STATELAB_DAPRD")
    os.environ["STATELAB_DAPRD"] = binary
    try:
        for store in STORES:
            stack = make_stack(tmp_path_factory.mktemp(f"daprd-{store}"), store=store, replicas=1, app_id=APP_ID,
                               runtime="daprd")
            started[store] = stack.start()
        yield started
    finally:
        for stack in started.values():
            stack.stop()
        if previous is None:
            os.environ.pop("STATELAB_DAPRD", None)
        else:
            os.environ["STATELAB_DAPRD"] = previous


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Target]:
    """One running sidecar on one store: ``redis`` is statelab's, ``daprd-redis`` a real daprd (see ``targets``)."""
    runtime, _, store = request.param.partition("-") if request.param.startswith("daprd-") else ("", "", request.param)
    stack = request.getfixturevalue("daprd_stacks" if runtime else "stacks")[store]
    with requests.Session() as http:
        yield Target(store, stack, stack.endpoint, http, runtime or "statelab")
