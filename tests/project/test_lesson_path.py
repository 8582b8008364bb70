"""One path through the lessons: the README's table and every notebook's Previous/Next line agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README_ROW = re.compile(r"^\| \[(?P<title>\d\d · [^\]]+)\]\(notebooks/(?P<file>\d\d_[a-z0-9_]+\.ipynb)\) \|", re.M)


def readme_path() -> list[tuple[str, str]]:
    """(title, file) of each lesson, in the order the README lists them."""
    return [(m["title"], m["file"]) for m in README_ROW.finditer((ROOT / "README.md").read_text(encoding="utf-8"))]


def last_line(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    text = "".join([c for c in cells if c["cell_type"] == "markdown"][-1]["source"])
    return text.rstrip().splitlines()[-1]


def test_the_readme_lists_every_lesson_once_in_number_order() -> None:
    files = [f for _, f in readme_path()]
    on_disk = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert files == on_disk


def test_each_lesson_ends_with_links_to_its_neighbours_on_that_path() -> None:
    path = readme_path()
    for i, (title, file) in enumerate(path):
        links = []
        if i > 0:
            links.append(f"Previous: [{path[i - 1][0]}]({path[i - 1][1]})")
        links.append(f"Next: [{path[i + 1][0]}]({path[i + 1][1]})" if i + 1 < len(path)
                     else "Next: the hands-on [labs](../labs/README.md)")
        assert last_line(ROOT / "notebooks" / file) == " · ".join(links), f"{title}: the last line of its last cell"


def test_every_title_in_the_readme_begins_the_notebooks_own_heading() -> None:
    for title, file in readme_path():
        cells = json.loads((ROOT / "notebooks" / file).read_text(encoding="utf-8"))["cells"]
        heading = "".join(cells[0]["source"]).splitlines()[0]
        assert heading.startswith(f"# {title}"), f"{file}: {heading!r}"
