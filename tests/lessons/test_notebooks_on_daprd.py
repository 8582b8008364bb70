"""Every lesson and every lab's solution, run once on real daprd sidecars (on Redis with a replica), held to the
same assertions as on statelab's sidecar: what a lesson says it measured must be what daprd does too.

The notebooks do not know which sidecar they have: ``run_one(..., runtime="daprd")`` gives the kernel
``STATELAB_RUNTIME=daprd`` and ``open_session`` starts its local stack with daprd sidecars (lesson 03's matrix
and lab 04's second store too). Lesson 06 drives them with the official Python SDK over gRPC.

Without a daprd binary (``scripts/daprd`` builds one when Go is installed) these tests skip with one line;
with ``STATELAB_DAPRD_REQUIRED=1`` (CI) they fail instead. The other stores run on daprd with
``./scripts/run-notebooks --runtime daprd --store sqlite`` (lab 05 needs Redis with a replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
import test_labs
import test_notebook_00
import test_notebook_01
import test_notebook_02
import test_notebook_03
import test_notebook_04_05
import test_notebook_06
from conftest import daprd_binary

from statelab.session import RUNTIME_ENV, open_session
from statelab.tools import runner

# Each lesson with the small parameters and the assertions of its statelab test.
LESSONS: dict[str, tuple[dict, Callable[[dict], None]]] = {
    "00_howto_as_written": (test_notebook_00.EXTRA, test_notebook_00.check_metrics),
    "01_save_get_delete": (test_notebook_01.EXTRA, test_notebook_01.check_metrics),
    "02_strong_vs_eventual": (test_notebook_02.EXTRA, test_notebook_02.check_metrics),
    "03_etags_first_write_wins": (test_notebook_03.EXTRA, test_notebook_03.check_metrics),
    "04_concurrent_writers": (test_notebook_04_05.EXTRA_04, test_notebook_04_05.check_04),
    "05_backoff_and_jitter": (test_notebook_04_05.EXTRA_05, test_notebook_04_05.check_05),
    "06_python_sdk": (test_notebook_06.EXTRA, test_notebook_06.check_metrics),
}


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
    result = runner.run_one(path, out, store="redis", cell_timeout=180, extra=extra, runtime="daprd")
    assert result.ok, result.error
    assert " daprd sidecar" in _stack_line(out / path.name), "the notebook did not start daprd sidecars"
    return result.metrics


@pytest.mark.slow  # with the labs: twelve notebooks, about a minute and a half on two cores
@pytest.mark.parametrize("name", LESSONS)
def test_the_lesson_measures_on_daprd_what_it_says(daprd, tmp_path, name):
    extra, check = LESSONS[name]
    check(_run_on_daprd(runner.ROOT / "notebooks" / f"{name}.ipynb", tmp_path, extra))


@pytest.mark.slow
@pytest.mark.parametrize("path", test_labs.SOLUTIONS, ids=lambda p: p.stem)
def test_the_lab_solution_passes_every_check_on_daprd(daprd, tmp_path, path):
    test_labs.check_solution(path, _run_on_daprd(path, tmp_path, {}))


def test_every_lesson_is_covered():
    lessons = {p.stem for p in runner.discover([str(runner.ROOT / "notebooks")])}
    assert lessons == set(LESSONS)


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
