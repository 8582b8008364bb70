"""Jupyter's stop button (KeyboardInterrupt in the kernel's main thread) ends every concurrent run
promptly: the interrupt reaches the cell, no worker thread is left, and the sidecar sees no more writes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
from helpers import good_attempt

from statelab import lab as labmod
from statelab.client import StateClient
from statelab.lessons import etags
from statelab.metrics import Metrics
from statelab.session import Session
from statelab.writers import STOP_GRACE_SECONDS, WritersConfig, run_writers


def _interrupted(run: Callable[[], object]) -> float:
    """Run ``run`` in this (the main) thread, press 'interrupt' after 0.5 s; the seconds it took to stop."""
    before = set(threading.enumerate())
    # A real SIGINT to the main thread, as Jupyter's interrupt sends the kernel (interrupt_main() only sets a
    # flag, which a thread blocked in join() does not notice).
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        run()
    except KeyboardInterrupt:
        pass
    else:
        timer.cancel()
        pytest.fail("the run ended before the interrupt: give it more work")
    elapsed = time.monotonic() - started
    timer.join()
    # tqdm's monitor (one idle thread for all progress bars) and IPython's history writer (started by the first
    # widget output) are shared helpers, not workers
    helpers = ("tqdm_monitor", "IPythonHistorySavingThread")
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive() and t.name not in helpers]
    assert left == [], f"threads still running after the interrupt: {left}"
    return elapsed


def _quiet(client: StateClient, key: str) -> bool:
    """True if nothing writes ``key`` any more (its ETag stays the same for half a second)."""
    first = client.get("statestore", key)
    time.sleep(0.5)
    second = client.get("statestore", key)
    return (first and first.etag) == (second and second.etag)


def test_run_writers_stops_on_interrupt(api) -> None:
    seen: list[list[str]] = []
    config = WritersConfig(writers=8, operations=100_000, keys=1, seed=1)
    elapsed = _interrupted(lambda: run_writers(api.url, config, progress=lambda p: seen.append([])))
    assert elapsed < 0.5 + STOP_GRACE_SECONDS
    assert seen, "the run was under way when interrupted"


def test_the_lesson_retry_demo_stops_on_interrupt(api) -> None:
    client = api.client()
    elapsed = _interrupted(lambda: etags.retry_demo(client, "statestore", writers=6, increments=100_000,
                                                    progress=False))
    assert elapsed < 0.5 + STOP_GRACE_SECONDS


@pytest.mark.parametrize("api", ["redis"], indirect=True)
def test_a_lab_check_and_a_simulated_class_stop_on_interrupt(api, tmp_path) -> None:
    session = Session(api.url, stack=api.stack)
    check = labmod.Checker("02_increment_lab", session, Metrics("02_increment_lab", tmp_path), progress=False)
    slow = lambda attempt, rng: 0.001  # noqa: E731 - many quick retries keep the run going
    _interrupted(lambda: check.increment(good_attempt, slow, 50, writers=8, operations=100_000))
    room = labmod.open_class(session)
    _interrupted(lambda: labmod.simulate_attendees(session, room.class_id, 3, operations=100_000))
    assert _quiet(session.client, labmod.ClassKeys(room.class_id).counter)


def test_interrupting_a_wait_on_the_writers_panel_stops_its_run(api) -> None:
    from statelab.widgets import WritersPanel

    panel = WritersPanel([api.url])
    panel.writers.value, panel.operations.value = panel.writers.max, panel.operations.max  # seconds of work
    panel.launch()
    # the run itself is a background thread (the panel stays usable); a cell waiting on it is what gets interrupted
    elapsed = _interrupted(lambda: panel.wait())
    assert elapsed < 0.5 + STOP_GRACE_SECONDS
    assert panel.result is not None and panel.result.stopped_early


def test_an_interrupted_run_waits_for_the_requests_in_flight_on_every_python() -> None:
    # Python 3.10-3.12: a Thread.join that Ctrl-C interrupts marks the thread as ended although it still runs, so
    # a grace period spent joining it again ends at once. run_threads must not be fooled (it waits on a semaphore).
    from statelab.writers import run_threads

    ended: list[float] = []
    returned: list[float] = []

    def in_flight(seconds: float) -> None:  # a request that takes its time whatever the stop button says
        time.sleep(seconds)
        ended.append(time.monotonic())

    # the first thread is the one being joined when the interrupt comes, and the last to end
    threads = [threading.Thread(target=in_flight, args=(s,), name=f"in-flight-{s}") for s in (1.5, 0.8, 0.8)]

    def run() -> None:
        try:
            run_threads(threads, threading.Event())
        finally:
            returned.append(time.monotonic())

    _interrupted(run)
    assert len(ended) == 3 and max(ended) <= returned[0], "run_threads returned while a request was in flight"
