"""Learner handouts, generated from the labs: the answers become TODO stubs.

A lab (``labs/NN_topic_lab.ipynb``) is authored once, complete and runnable. Its answer cells carry the
cell tag ``solution``. The handout (``labs/handouts/NN_topic_lab.ipynb``) is the same notebook with each
answer replaced:

- a code cell keeps its leading comment lines (the task, in one line), each top-level ``def`` keeps its
  signature and docstring and gets the body ``raise NotImplementedError(...)``, each top-level assignment
  becomes ``name = ...  # TODO``; imports and the rest of the answer go. So defining the stub never
  fails, and the lab's first check reports the stub with its hint instead of an error stopping the run.
- a markdown cell becomes an invitation to write the answer.

Cells tagged ``answer`` are the full answers, one click further than the hints: markdown cells whose source
is hidden (``{"jupyter": {"source_hidden": true}}``, which JupyterLab shows as a collapsed ``⋯`` bar). A
handout keeps them, collapsed: a learner who is stuck after the check's hints opens one on purpose. An answer
cell that is not a collapsed markdown cell is refused (it would show the answer to everyone).

Tags ``solution`` become ``todo``, relative links are rewritten for the handouts folder, outputs are
dropped, and the title cell says it is a learner copy. Handouts are committed and never edited by hand:
``./scripts/handouts`` regenerates them, ``./scripts/handouts --check`` (and ``tests/labs/test_handouts.py``)
fails when one is missing or differs from what its lab generates.
"""

from __future__ import annotations

import argparse
import ast
import copy
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

import nbformat

from statelab.local.paths import REPO

ROOT = REPO
LABS = ROOT / "labs"
SOLUTION_TAG = "solution"
TODO_TAG = "todo"
ANSWER_TAG = "answer"  # a collapsed markdown cell holding the full answer (kept, collapsed, in the handout)
MARKDOWN_STUB = "✏️ *Your answer here: double-click this cell and write it in your own words.*"
LEARNER_NOTE = ("> **Learner copy.** The cells marked ✏️ are yours: replace each `TODO` and run the check "
                "below it. (Generated from the lab by `./scripts/handouts`; edit the lab, not this file.)")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")


class HandoutError(ValueError):
    """A solution cell that cannot be turned into a stub (say which lab and cell)."""


def lab_notebooks(labs_dir: Path = LABS) -> list[Path]:
    """The labs that get a handout: ``NN_*.ipynb`` directly in ``labs_dir``."""
    return sorted(labs_dir.glob("[0-9][0-9]_*.ipynb"))


def handout_path(lab: Path, out_dir: Path | None = None) -> Path:
    return (out_dir or lab.parent / "handouts") / lab.name


# --- stubs -------------------------------------------------------------------------------------------


def stub_code(source: str) -> str:
    """The TODO stub of one solution code cell (see the module docstring)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise HandoutError(f"solution cell does not parse: {exc}") from None
    lines = source.splitlines()
    first = tree.body[0].lineno if tree.body else len(lines) + 1
    head = tree.body[0] if tree.body else None
    if isinstance(head, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and head.decorator_list:
        first = min(d.lineno for d in head.decorator_list)
    out = [ln for ln in lines[: first - 1] if ln.strip().startswith("#")]
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += _stub_function(node, lines)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            out += _stub_assignment(node)
        else:
            raise HandoutError(f"a solution cell may hold only functions, assignments, imports and comments; "
                               f"line {node.lineno} is a {type(node).__name__}")
    return "\n".join(out)


def _stub_function(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> list[str]:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    body = node.body
    if body[0].lineno == node.lineno:
        raise HandoutError(f"write the body of {node.name}() on its own lines, not after the colon")
    indent = " " * body[0].col_offset
    kept = lines[start - 1: body[0].lineno - 1]  # decorators and the signature, however many lines
    if ast.get_docstring(node) is not None:  # the docstring is part of the task
        kept = lines[start - 1: body[0].end_lineno]
    return [*kept, f"{indent}# TODO: your code here",
            f'{indent}raise NotImplementedError("TODO: write {node.name}()")']


def _stub_assignment(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names: list[str] = []
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            names += [ast.unparse(t) for t in target.elts]
        else:
            names.append(ast.unparse(target))
    if isinstance(node, ast.AnnAssign):
        return [f"{names[0]}: {ast.unparse(node.annotation)} = ...  # TODO: your answer"]
    return [f"{name} = ...  # TODO: your answer" for name in names]


def _relink(source: str, lab_dir: Path, out_dir: Path) -> str:
    """Rewrite relative markdown links of a cell moved from ``lab_dir`` to ``out_dir``.

    A link to another lab becomes a link to that lab's handout, beside this one.
    """
    rel = Path(posixpath.relpath(lab_dir.resolve().as_posix(), out_dir.resolve().as_posix()))
    labs = {p.name for p in lab_notebooks(lab_dir)}

    def fix(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, fragment = target.partition("#")
        moved = path if path in labs else posixpath.normpath(posixpath.join(rel.as_posix(), path))
        return f"{match.group(1)}{moved}{'#' + fragment if fragment else ''}{match.group(3)}"

    return LINK.sub(fix, source)


# --- notebooks ---------------------------------------------------------------------------------------


def make_handout(nb: Any, lab: Path, out_dir: Path) -> Any:
    """The handout of the lab notebook ``nb`` (read from ``lab``), to be written into ``out_dir``."""
    handout = copy.deepcopy(nb)
    solutions = 0
    for index, cell in enumerate(handout.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if ANSWER_TAG in tags and not is_collapsed_answer(cell):
            raise HandoutError(f"{lab.name}, cell {index}: a cell tagged {ANSWER_TAG!r} must be a markdown cell whose "
                               "source is hidden (metadata jupyter.source_hidden), or every learner sees the answer")
        if SOLUTION_TAG in tags:
            solutions += 1
            cell.metadata["tags"] = [TODO_TAG if t == SOLUTION_TAG else t for t in tags]
            try:
                cell.source = stub_code(cell.source) if cell.cell_type == "code" else MARKDOWN_STUB
            except HandoutError as exc:
                raise HandoutError(f"{lab.name}, cell {index}: {exc}") from None
        elif cell.cell_type == "markdown":
            cell.source = _relink(cell.source, lab.parent, out_dir)
    if not solutions:
        raise HandoutError(f"{lab.name} has no cell tagged {SOLUTION_TAG!r}: nothing to hand out")
    title = handout.cells[0]
    if title.cell_type == "markdown":
        head, _, rest = title.source.partition("\n")
        title.source = f"{head}\n\n{LEARNER_NOTE}\n{rest}" if rest else f"{head}\n\n{LEARNER_NOTE}"
    handout.metadata["statelab"] = {"handout_of": lab.name, "generated_by": "./scripts/handouts"}
    return handout


def is_collapsed_answer(cell: Any) -> bool:
    """Whether ``cell`` is an answer one click away: markdown, its source hidden (JupyterLab collapses it)."""
    hidden = cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is True
    return bool(cell.get("cell_type") == "markdown" and hidden)


def render(nb: Any) -> str:
    """The file contents nbformat writes (the same as ``nbformat.write``)."""
    return nbformat.writes(nb) + "\n"


def expected(lab: Path, out_dir: Path) -> str:
    return render(make_handout(nbformat.read(lab, as_version=4), lab, out_dir))


def generate(labs_dir: Path = LABS, out_dir: Path | None = None) -> list[Path]:
    """Write every lab's handout (only files whose contents change); remove handouts of labs that are gone."""
    out_dir = out_dir or labs_dir / "handouts"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    labs = lab_notebooks(labs_dir)
    for lab in labs:
        target = handout_path(lab, out_dir)
        text = expected(lab, out_dir)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(target)
    names = {lab.name for lab in labs}
    for stale in out_dir.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
            written.append(stale)
    return written


def outdated(labs_dir: Path = LABS, out_dir: Path | None = None) -> list[str]:
    """One sentence per handout that is missing, stale or has no lab; empty when all are up to date."""
    out_dir = out_dir or labs_dir / "handouts"
    problems = []
    labs = lab_notebooks(labs_dir)
    for lab in labs:
        target = handout_path(lab, out_dir)
        if not target.exists():
            problems.append(f"{target.name}: missing")
        elif target.read_text(encoding="utf-8") != expected(lab, out_dir):
            problems.append(f"{target.name}: differs from what {lab.name} generates")
    names = {lab.name for lab in labs}
    problems += [f"{p.name}: no lab of that name" for p in sorted(out_dir.glob("*.ipynb")) if p.name not in names]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handouts", description="Generate learner handouts from the labs.")
    parser.add_argument("--check", action="store_true", help="only check that the handouts are up to date")
    parser.add_argument("--labs", default=str(LABS), help="folder of the labs (default: labs/)")
    args = parser.parse_args(argv)
    labs_dir = Path(args.labs)
    try:
        if args.check:
            problems = outdated(labs_dir)
            for problem in problems:
                print(f"handouts: {problem}", file=sys.stderr)
            if problems:
                print("handouts: run ./scripts/handouts to regenerate them", file=sys.stderr)
                return 1
            print(f"handouts: {len(lab_notebooks(labs_dir))} up to date")
            return 0
        written = generate(labs_dir)
    except HandoutError as exc:
        print(f"handouts: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"handouts: {'wrote' if path.exists() else 'removed'} {path}")
    print(f"handouts: {len(lab_notebooks(labs_dir))} labs, {len(written)} handouts changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
