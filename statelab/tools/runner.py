"""Headless notebook runs: papermill with small CI parameters, an HTML rendering, a summary line each.

``./scripts/run-notebooks`` is a thin wrapper around ``main``. Each notebook runs in a fresh kernel with
its ``parameters`` cell overridden (``interactive=False`` and the chosen store), a per-cell timeout, and
``STATELAB_OUTPUT_DIR`` pointing at the output folder so its ``Metrics`` land beside the executed copy.
A run fails on any error output, including a traceback printed to stderr.

``--runtime daprd`` runs the same notebooks on real daprd sidecars. The runtime is not a notebook
parameter (a notebook must run unchanged on a ``dapr run`` sidecar, so it never asks which one it has):
the kernel gets ``STATELAB_RUNTIME=daprd`` and ``STATELAB_DAPRD`` (found once per run), and the local stack
that ``open_session`` starts has daprd sidecars on the same stores and ports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statelab.local.paths import REPO

ROOT = REPO
DEFAULT_OUTPUT = ROOT / "build" / "notebooks"

# Parameters every notebook accepts; notebooks ignore none of them (hygiene test checks they exist).
COMMON_PARAMETERS: dict[str, Any] = {"endpoint": None, "interactive": False, "seed": 7}


@dataclass
class Result:
    notebook: Path
    ok: bool
    seconds: float
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        summary = ", ".join(f"{k}={_short(v)}" for k, v in list(self.metrics.items())[:6])
        tail = f" — {self.error}" if self.error else (f" — {summary}" if summary else "")
        return f"{status} {self.notebook.name:<40} {self.seconds:6.1f}s{tail}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def discover(paths: list[str]) -> list[Path]:
    """The notebooks to run: the given ones (folders expand to their NN_*.ipynb), else lessons then labs."""
    if not paths:
        return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p]
    return found


def error_outputs(nb: Any) -> list[str]:
    """Error outputs and stderr tracebacks in an executed notebook, as short texts."""
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr" and "Traceback" in out.get("text", ""):
                problems.append(f"cell {i}: traceback on stderr")
    return problems


def _kernel_manager(env: dict[str, str]) -> type[Any]:
    """A kernel manager class whose kernels start with ``env`` on top of this process's environment.

    papermill hands its keyword arguments to nbclient, which builds the kernel manager from this class: the
    kernel gets its variables without this process's ``os.environ`` ever changing (a caller's threads, a
    test's other fixtures and the next notebook see exactly what they saw before)."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelWithEnvironment(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            kw["env"] = {**kw.get("env", os.environ), **env}
            return await super()._async_pre_start_kernel(**kw)

    return KernelWithEnvironment


def kernel_environment(output: Path, runtime: str | None, daprd: str | None = None) -> dict[str, str]:
    """What the kernel must inherit: the metrics folder and, for ``runtime``, whose sidecars to start
    (for daprd, the binary ``daprd``, else the one ``find_daprd`` finds)."""
    env = {"STATELAB_OUTPUT_DIR": str(output)}
    if runtime is not None:
        env["STATELAB_RUNTIME"] = runtime
    if runtime == "daprd":
        from statelab.local import find_daprd

        env["STATELAB_DAPRD"] = daprd or find_daprd()  # found (or built) here, not in every kernel
    return env


def run_one(path: Path, output: Path, *, store: str, cell_timeout: int, extra: dict[str, Any],
            runtime: str | None = None, daprd: str | None = None) -> Result:
    """Run one notebook; ``runtime`` ("statelab" or "daprd") chooses the sidecars of any stack it starts
    (None: whatever ``$STATELAB_RUNTIME`` says, else statelab's), ``daprd`` the binary for "daprd"."""
    import nbformat
    import papermill

    output.mkdir(parents=True, exist_ok=True)
    executed = output / path.name
    params = {**COMMON_PARAMETERS, "store": store, **extra}
    started = time.monotonic()
    error = ""
    try:
        papermill.execute_notebook(
            str(path),
            str(executed),
            parameters=params,
            cwd=str(path.parent),
            kernel_name="python3",
            kernel_manager_class=_kernel_manager(kernel_environment(output, runtime, daprd)),
            execution_timeout=cell_timeout,
            progress_bar=False,
            log_output=False,
        )
    except Exception as exc:  # noqa: BLE001 - reported per notebook, the run goes on
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    seconds = time.monotonic() - started
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        problems = error_outputs(nb)
        if problems and not error:
            error = "; ".join(problems[:3])
        _write_html(nb, executed.with_suffix(".html"))
    metrics_file = output / f"{path.stem}.metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.exists() else {}
    if not error and metrics.get("checks_passed") is False and path.parent.name != "handouts":
        # A lab's failed check is not an error output (learners see a hint), but a solution must pass.
        error = f"check {metrics.get('first_failed_check')} failed: {metrics.get('first_failed_hint', '')}"
    return Result(path, not error, seconds, error, metrics)


def _write_html(nb: Any, target: Path) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run-notebooks", description=__doc__)
    parser.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/)")
    parser.add_argument("--store", default="redis", choices=["redis", "sqlite", "in-memory"])
    parser.add_argument("--runtime", choices=["statelab", "daprd"],
                        help="sidecars of the stacks the notebooks start: statelab's (default) or a real daprd "
                             "(built by ./scripts/daprd on first use)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--cell-timeout", type=int, default=180, help="seconds per cell")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=JSON",
                        help="extra parameter for every notebook, e.g. -p samples=20")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.parameter:
        name, _, value = item.partition("=")
        extra[name] = json.loads(value)
    notebooks = discover(args.paths)
    if not notebooks:
        print("run-notebooks: no notebooks found", file=sys.stderr)
        return 2
    daprd = None
    if args.runtime == "daprd":
        from statelab.errors import StackError
        from statelab.local import find_daprd

        try:  # once, before any kernel starts: a missing daprd is one message, not one failure per notebook
            daprd = find_daprd()
        except StackError as exc:
            print(f"run-notebooks: {exc}", file=sys.stderr)
            return 2
    results = []
    for nb in notebooks:
        result = run_one(nb, Path(args.output), store=args.store, cell_timeout=args.cell_timeout, extra=extra,
                         runtime=args.runtime, daprd=daprd)
        print(result.line(), flush=True)
        results.append(result)
    failed = [r for r in results if not r.ok]
    total = sum(r.seconds for r in results)
    on = f" on {args.runtime}" if args.runtime else ""
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed{on} in {total:.1f}s (outputs in {args.output})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
