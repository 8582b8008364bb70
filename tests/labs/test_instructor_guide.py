"""The instructor guide (labs/INSTRUCTOR.md) is generated from the catalogue, committed, up to date and linked."""

from __future__ import annotations

import re

from helpers import ROOT

from statelab.lab import catalogue, guide

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_committed_guide_is_what_the_catalogue_generates():
    assert not guide.outdated(), "run python -m statelab.lab.guide and commit labs/INSTRUCTOR.md"


def test_check_mode_fails_on_a_stale_or_missing_guide_and_regenerating_repairs_it(tmp_path, capsys):
    path = tmp_path / "INSTRUCTOR.md"
    assert guide.main(["--check", "--out", str(path)]) == 1
    assert guide.main(["--out", str(path)]) == 0 and guide.main(["--check", "--out", str(path)]) == 0
    path.write_text(path.read_text(encoding="utf-8").replace("✗", "✓", 1), encoding="utf-8")
    assert guide.main(["--check", "--out", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    after = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", after, maxsplit=1)[0]


def test_the_guide_lists_every_answer_with_its_verdict_and_the_words_the_checker_says():
    text = guide.GUIDE.read_text(encoding="utf-8")
    for lab, answers in catalogue.by_lab().items():
        chapter = _section(text, f"## {guide._title(lab)}")
        for answer in answers:
            rows = [ln for ln in _section(chapter, f"### `check.{answer.check}`").splitlines()
                    if ln.startswith(f"| {answer.mark} | {answer.title}")]
            assert len(rows) == 1, f"{answer.id} is not in its lab's and check's table with its verdict"
            quoted = ["“" + words.replace("|", "\\|") + "”" for words in answer.hint]
            assert all(q in rows[0] for q in quoted), rows[0]


def test_the_labs_readme_links_the_guide_and_the_guides_links_resolve():
    readme = (ROOT / "labs" / "README.md").read_text(encoding="utf-8")
    assert "](INSTRUCTOR.md)" in readme
    text = guide.GUIDE.read_text(encoding="utf-8")
    broken = [t for t in LINK.findall(text) if not t.startswith(("#", "http"))
              and not (guide.GUIDE.parent / t.split("#", 1)[0]).exists()]
    assert broken == []
