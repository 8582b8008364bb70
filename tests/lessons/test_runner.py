"""The headless runner gives each kernel its variables without touching the caller's environment."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import nbformat

from statelab.tools import runner

PROBE = """
import json, os
names = ("STATELAB_OUTPUT_DIR", "STATELAB_RUNTIME", "STATELAB_DAPRD")
with open(os.path.join(os.environ["STATELAB_OUTPUT_DIR"], "seen.json"), "w") as f:
    json.dump({name: os.environ.get(name) for name in names}, f)
"""


def test_the_kernel_gets_its_variables_and_the_callers_environment_never_changes(tmp_path: Path) -> None:
    notebook = tmp_path / "99_probe.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)],
                                  metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nbformat.write(nb, notebook)
    fake_daprd = tmp_path / "daprd"  # never run: the probe only reads the variable
    before = dict(os.environ)
    changed: list[str] = []
    done = threading.Event()

    def watch() -> None:  # another thread of the caller, looking while the notebook runs
        while not done.is_set():
            if dict(os.environ) != before:
                changed.append(sorted(set(os.environ.items()) ^ set(before.items()))[0][0])
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = runner.run_one(notebook, tmp_path / "out", store="redis", cell_timeout=60, extra={},
                                runtime="daprd", daprd=str(fake_daprd))
    finally:
        done.set()
        watcher.join()
    assert result.ok, result.error
    assert json.loads((tmp_path / "out" / "seen.json").read_text()) == {
        "STATELAB_OUTPUT_DIR": str(tmp_path / "out"), "STATELAB_RUNTIME": "daprd", "STATELAB_DAPRD": str(fake_daprd)}
    assert changed == [] and dict(os.environ) == before
