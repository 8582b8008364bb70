"""The layout's rules, read from the code itself: which part of statelab may import which.

The parts (CONTRIBUTING.md, "Where a change goes"):

- ``server``: the sidecar and the stores. It is what ``dapr run`` would be; it never loads the learner side.
- ``local``: starting and stopping the stack (processes, ports, records). It starts the server as processes.
- ``shared``: ``statelab.errors`` and ``statelab.options``, which both wings use.
- ``learner``: what notebooks and learners' code call (``client``, ``session``, ``writers``, ``plots``…).
- ``lessons`` and ``lab``: the back-ends of ``notebooks/`` and ``labs/``.
- ``tools``: the notebook runner and the handout generator; ``entry``: the ``statelab`` command.

Imports under ``if TYPE_CHECKING:`` are left out: they name types for the checker and load nothing.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "statelab"

ALLOWED: dict[str, set[str]] = {
    "server": {"server", "shared", "root"},
    "local": {"local", "shared", "root"},
    "shared": {"shared", "root"},
    "learner": {"learner", "shared", "local", "root"},
    "lessons": {"lessons", "learner", "shared", "local", "root"},
    "lab": {"lab", "lessons", "learner", "shared", "local", "root"},
    "tools": {"tools", "local", "shared", "root"},
    "entry": {"entry", "local", "server", "shared", "root"},
    "root": {"root", "entry"},  # statelab/__init__ loads its exports lazily; __main__ runs the command
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. statelab.lab.checker
    target: str  # what it imports, e.g. statelab.session
    line: int
    names: tuple[str, ...]  # the imported names (``from x import a, b``), or the module itself


def part(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) == 1 or pieces[1] in ("__init__", "__main__"):
        return "root"
    if pieces[1] in ("server", "local", "lessons", "lab", "tools"):
        return pieces[1]
    if pieces[1] in ("errors", "options"):
        return "shared"
    if pieces[1] == "cli":
        return "entry"
    return "learner"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def runtime_imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        module = module_name(path)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                found += [Import(module, a.name, node.lineno, (a.name,)) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = tuple(a.name for a in node.names)
                if node.module == "statelab":  # from statelab import plots: the submodules, not the package
                    found += [Import(module, f"statelab.{n}", node.lineno, (n,)) for n in names
                              if n not in ("__version__",)]
                    if "__version__" in names:
                        found.append(Import(module, "statelab", node.lineno, ("__version__",)))
                else:
                    found.append(Import(module, node.module, node.lineno, names))
    return found


IMPORTS = runtime_imports()


def test_the_scan_sees_the_package() -> None:
    """The rules below are only worth something if the scan finds the imports they judge."""
    modules = {i.module for i in IMPORTS}
    assert {"statelab.server.sidecar.http", "statelab.lab.checker", "statelab.session"} <= modules
    assert any(i.module == "statelab.lab.checker" and i.target == "statelab.session" for i in IMPORTS)
    assert part("statelab.server.stores.redis") == "server" and part("statelab.writers") == "learner"


@pytest.mark.parametrize("kind", sorted(ALLOWED))
def test_each_part_imports_only_what_the_layout_allows(kind: str) -> None:
    wrong = [f"{i.module}:{i.line} imports {i.target}"
             for i in IMPORTS
             if i.target.split(".")[0] == "statelab" and part(i.module) == kind
             and part(i.target) not in ALLOWED[kind]]
    assert not wrong, f"{kind} may import only {sorted(ALLOWED[kind])}:\n" + "\n".join(wrong)


def test_the_server_wing_never_loads_the_learner_side() -> None:
    """``from statelab import __version__`` is the one thing the sidecar takes from the package root."""
    root = [i for i in IMPORTS if part(i.module) == "server" and i.target == "statelab"]
    assert all(i.names == ("__version__",) for i in root), root


def test_matplotlib_is_used_only_by_the_plots_module() -> None:
    """Every figure is built in statelab.plots, on Figure (thread-safe), never through pyplot's state."""
    users = sorted({f"{i.module}:{i.line}" for i in IMPORTS
                    if i.target.split(".")[0] == "matplotlib" and i.module != "statelab.plots"})
    assert not users, "matplotlib imported outside statelab.plots:\n" + "\n".join(users)


IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)$")
REASONED = re.compile(r"^\[[a-z-]+(, *[a-z-]+)*\]\s+(#|-|—|\().+")


def test_every_type_ignore_names_its_error_and_says_why() -> None:
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = IGNORE.search(line)
            if match and not REASONED.match(match["rest"].strip()):
                bare.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not bare, "a type: ignore needs [its-code] and a reason after it:\n" + "\n".join(bare)


@pytest.mark.parametrize(("module", "expected"), [
    ("statelab.server.sidecar.api", "server"), ("statelab.local.stack", "local"), ("statelab.errors", "shared"),
    ("statelab.lessons.etags", "lessons"), ("statelab.lab", "lab"), ("statelab.tools.runner", "tools"),
    ("statelab.cli", "entry"), ("statelab.plots", "learner"), ("statelab", "root"),
])
def test_parts_are_named_as_the_layout_says(module: str, expected: str) -> None:
    assert part(module) == expected
