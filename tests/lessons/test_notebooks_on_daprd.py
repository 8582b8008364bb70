"""Every lesson and every lab's solution, run once on real daprd sidecars (on Redis with a replica), held to the
same assertions as on statelab's sidecar: what a lesson says it measured must be what daprd does too. The lessons
come from the table in test_notebooks.py (``LESSONS``: parameters and check per notebook), the labs' solutions and
their check from helpers.py.

The notebooks do not know which sidecar they have: ``run_one(..., runtime="daprd")`` gives the kernel
``STATELAB_RUNTIME=daprd`` and ``open_session`` starts its local stack with daprd sidecars (lesson 03's matrix
and lab 04's second store too). Lesson 06 drives them with the official Python SDK over gRPC.

Without a daprd binary (``scripts/daprd`` builds one when Go is installed) these tests skip with one line;
with ``STATELAB_DAPRD_REQUIRED=1`` (CI) they fail instead. The other stores run on daprd with
``./scripts/run-notebooks --runtime daprd --store sqlite`` (lab 05 needs Redis with a replica).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from helpers import LAB_SOLUTIONS, check_lab_solution, daprd_binary
from test_notebooks import LESSONS, Lesson

from statelab.session import RUNTIME_ENV, open_session
from statelab.tools import runner

DAPRD_CELL_TIMEOUT = 180  # seconds per cell, the same for every notebook here (not the rows' cell_timeout)
# daprd's answers do not depend on the kernel's Python (test_notebooks.py runs every lesson on every Python).


@pytest.fixture(scope="module")
def daprd() -> Iterator[str]:
    """The daprd binary, handed to every kernel through STATELAB_DAPRD (skips, or fails in CI, without one)."""
    binary = daprd_binary()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STATELAB_DAPRD", binary)
        yield binary


def _stack_line(executed: Path) -> str:
    """The setup cell's one line saying which sidecars the notebook started."""
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain", "") or out.get("text", "")
            if "local stack:" in text:
                return str(text)
    return ""


def _run_on_daprd(path: Path, out: Path, extra: dict) -> dict:
    result = runner.run_one(path, out, store="redis", cell_timeout=DAPRD_CELL_TIMEOUT, extra=extra, runtime="daprd")
    assert result.ok, result.error
    assert " daprd sidecar" in _stack_line(out / path.name), "the notebook did not start daprd sidecars"
    return result.metrics


@pytest.mark.slow  # with the labs: twelve notebooks, about a minute and a half on two cores
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.name)
def test_the_lesson_measures_on_daprd_what_it_says(daprd, tmp_path, lesson: Lesson):
    lesson.check(_run_on_daprd(lesson.path, tmp_path, lesson.extra))


@pytest.mark.slow
@pytest.mark.parametrize("path", LAB_SOLUTIONS, ids=lambda p: p.stem)
def test_the_lab_solution_passes_every_check_on_daprd(daprd, tmp_path, path):
    check_lab_solution(path, _run_on_daprd(path, tmp_path, {}))


# --- choosing the runtime (no daprd needed) ------------------------------------------------------------------


def test_the_runner_tells_the_kernel_which_sidecars_to_start(tmp_path, monkeypatch):
    binary = tmp_path / "daprd"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("STATELAB_DAPRD", str(binary))  # found once by the runner; every kernel inherits it
    assert runner.kernel_environment(tmp_path, "daprd") == {
        "STATELAB_OUTPUT_DIR": str(tmp_path), RUNTIME_ENV: "daprd", "STATELAB_DAPRD": str(binary)}
    assert runner.kernel_environment(tmp_path, "statelab") == {"STATELAB_OUTPUT_DIR": str(tmp_path),
                                                               RUNTIME_ENV: "statelab"}
    assert runner.kernel_environment(tmp_path, None) == {"STATELAB_OUTPUT_DIR": str(tmp_path)}


def test_an_unknown_runtime_is_refused_before_anything_starts(monkeypatch):
    with pytest.raises(ValueError, match="runtime .* must be one of statelab, daprd, not 'dapr'"):
        open_session(runtime="dapr")
    monkeypatch.setenv(RUNTIME_ENV, "kubernetes")
    with pytest.raises(ValueError, match="not 'kubernetes'"):
        open_session("http://127.0.0.1:1")  # refused before it tries to connect


def test_a_session_on_a_sidecar_it_did_not_start_reports_the_environment_runtime(monkeypatch):
    from statelab.session import Session

    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert Session("http://127.0.0.1:1").runtime == "statelab"
    monkeypatch.setenv(RUNTIME_ENV, "daprd")
    assert Session("http://127.0.0.1:1").runtime == "daprd"
