"""Key results of a notebook run, recorded as data so headless runs can be checked.

Each notebook makes one ``Metrics("01_save_get_delete")`` and records what it observed
(``metrics.record("deleted_key_status", 204)``). Every record rewrites
``<output dir>/<notebook>.metrics.json`` atomically, so a run that stops half-way still leaves what it
measured. The output dir is ``$STATELAB_OUTPUT_DIR`` (set by ``./scripts/run-notebooks``), else
``build/notebooks`` at the checkout's root (one ignored folder, wherever the kernel runs). In Jupyter the
object shows as a small table. Lessons keep the cells that only record collapsed (tag ``metrics``).
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]  # statelab is installed editable: the repository's root


def output_dir() -> Path:
    return Path(os.environ.get("STATELAB_OUTPUT_DIR") or CHECKOUT / "build" / "notebooks")


class Metrics:
    def __init__(self, notebook: str, directory: str | os.PathLike | None = None) -> None:
        self.notebook = notebook
        self.path = Path(directory or output_dir()) / f"{notebook}.metrics.json"
        self.values: dict[str, Any] = {}
        self.notes: dict[str, str] = {}

    def record(self, name: str, value: Any, note: str = "") -> None:
        """Record one result (JSON-serialisable) and save. Returns nothing, so a cell that only records shows
        nothing either."""
        json.dumps(value)  # fail here, in the cell that recorded it, not later
        self.values[name] = value
        if note:
            self.notes[name] = note
        self.save()

    def record_all(self, results: Iterable[tuple[str, Any, str]]) -> None:
        """Record several ``(name, value, note)`` results at once, e.g. ``metrics.record_all(demo.metrics())``."""
        for name, value, note in results:
            self.record(name, value, note)

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"notebook": self.notebook, "metrics": self.values, "notes": self.notes}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".metrics-")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
        return self.path

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __repr__(self) -> str:
        lines = [f"{self.notebook} metrics ({self.path}):"]
        lines += [f"  {k} = {v!r}" + (f"  # {self.notes[k]}" if k in self.notes else "") for k, v in self.values.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(json.dumps(v))}</td>"
            f"<td>{html.escape(self.notes.get(k, ''))}</td></tr>"
            for k, v in self.values.items()
        )
        return (
            f"<p>Recorded metrics of <b>{html.escape(self.notebook)}</b> (saved to <code>{html.escape(str(self.path))}</code>)</p>"
            f"<table><tr><th>metric</th><th>value</th><th>what it means</th></tr>{rows}</table>"
        )


def load(notebook: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The metrics a run of ``notebook`` recorded (for tests and the run summary)."""
    path = Path(directory or output_dir()) / f"{notebook}.metrics.json"
    return json.loads(path.read_text())["metrics"]
