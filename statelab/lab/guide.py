"""The instructor guide, ``labs/INSTRUCTOR.md``: per lab and per check, what learners write and what the checker says.

It is generated from the catalogue (``statelab.lab.catalogue``), never edited by hand, so it cannot drift from the
checks: ``tests/labs/test_catalogue.py`` runs every catalogue entry through the real checker on every store and
holds each message to the words quoted here, and ``tests/labs/test_instructor_guide.py`` fails when the
committed guide differs from what the catalogue generates.

    python -m statelab.lab.guide            # (re)write labs/INSTRUCTOR.md
    python -m statelab.lab.guide --check    # exit 1 if labs/INSTRUCTOR.md is missing or out of date

(It lives with the labs, not in ``statelab.tools``: tools may not import the lab package, which it reads.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from statelab.lab.catalogue import STORES, Answer, by_lab
from statelab.local.paths import REPO

LABS_DIR = REPO / "labs"
GUIDE = LABS_DIR / "INSTRUCTOR.md"

INTRO = """\
# The labs' checks: what learners write, and what the checker says

*Generated from [`statelab/lab/catalogue.py`](../statelab/lab/catalogue.py) by `python -m statelab.lab.guide`:
edit the catalogue, not this file.*

For every check of every lab, the answers learners actually write: the wrong ones (**✗**) and some right ones
(**✓**) that differ from the lab's own answer. For each, what the checker says: the words its message always
contains, quoted. `tests/labs/test_catalogue.py` runs every answer below through the real checker against real
sidecars (statelab's and daprd, on in-memory, SQLite and Redis) and fails if a verdict or a quoted word is not
what the checker says, so this guide cannot drift from the checks.

The concurrency checks (lab 02's `increment`, lab 03's `create_if_absent`, lab 04's `total_conserved`) release
their writers together and check in the recorded history that they really collided; a run without enough
conflicts is run again, and if it never collides it fails as "tested nothing", never passes. Each lab notebook
also has the full answer one click away: a collapsed cell under each check (it stays collapsed in the handouts).
"""


def _title(lab: str) -> str:
    """The lab notebook's own title: ``Lab 02 · Increment with retry and backoff``."""
    path = LABS_DIR / f"{lab}.ipynb"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        source = cells[0]["source"]
        first = ("".join(source) if isinstance(source, list) else source).splitlines()[0]
        return first.lstrip("# ").strip()
    except (OSError, ValueError, KeyError, IndexError):
        return lab


def _anchor(text: str) -> str:
    """GitHub's anchor for a heading."""
    kept = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _says(answer: Answer) -> str:
    return " … ".join(f"“{_cell(words)}”" for words in answer.hint)


def _where(answer: Answer) -> str:
    if tuple(answer.stores) == STORES:
        return ""
    return f" *({', '.join(answer.stores)} only)*"


def render() -> str:
    """The whole guide, as Markdown."""
    labs = by_lab()
    lines = [INTRO, "## Contents", ""]
    for lab, answers in labs.items():
        wrong = sum(not a.passes for a in answers)
        title = _title(lab)
        lines.append(f"- [{title}](#{_anchor(title)}): {wrong} wrong answers, {len(answers) - wrong} right ones")
    lines.append("")
    for lab, answers in labs.items():
        title = _title(lab)
        lines += [f"## {title}", "", f"Notebook: [`{lab}.ipynb`]({lab}.ipynb) · learner copy: "
                  f"[`handouts/{lab}.ipynb`](handouts/{lab}.ipynb)", ""]
        for check in dict.fromkeys(a.check for a in answers):
            mine = [a for a in answers if a.check == check]
            lines += [f"### `check.{check}`", "", "| | the learner's answer | what the checker says (always) |",
                      "|---|---|---|"]
            lines += [f"| {a.mark} | {_cell(a.title)}{_where(a)} | {_says(a)} |" for a in mine]
            lines += ["", "<details><summary>The code of these answers</summary>", ""]
            for a in mine:
                lines += [f"{a.mark} **{a.title}**{_where(a)}", "", "```python", a.code, "```", ""]
            lines += ["</details>", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def outdated(path: Path = GUIDE) -> bool:
    """Whether ``path`` is missing or differs from what the catalogue generates."""
    return not path.exists() or path.read_text(encoding="utf-8") != render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guide", description="Generate labs/INSTRUCTOR.md from the lab catalogue.")
    parser.add_argument("--check", action="store_true", help="only check that the guide is up to date")
    parser.add_argument("--out", default=str(GUIDE), help="where the guide goes (default: labs/INSTRUCTOR.md)")
    args = parser.parse_args(argv)
    path = Path(args.out)
    if args.check:
        if outdated(path):
            print(f"guide: {path} is missing or out of date: run python -m statelab.lab.guide", file=sys.stderr)
            return 1
        print(f"guide: {path} is up to date")
        return 0
    if outdated(path):
        path.write_text(render(), encoding="utf-8")
        print(f"guide: wrote {path}")
    else:
        print(f"guide: {path} already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
