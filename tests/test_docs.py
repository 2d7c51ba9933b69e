"""The README is a user's manual and docs/ holds the rest: the manual's rules, and every link between the pages."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+://", t)]


def test_anchors_follow_githubs_rules():
    assert anchors("# Store format (`format_version` 4)\n## Writes: once, crash-safe\n## A\n## A\n") == {
        "store-format-format_version-4", "writes-once-crash-safe", "a", "a-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    found = links(page)
    broken = []
    for target in found:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if t.partition("#")[0]}
    assert set(PAGES[1:]) - linked == set(), "docs pages the README does not link"


def test_the_readme_is_a_manual():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 450, f"the README has {len(lines)} lines; move reference and results to docs/"
    toc = text[text.index("\n## Contents\n"):].split("\n\n")[1]
    headings = [line[3:] for line in lines if line.startswith("## ") and line != "## Contents"]
    listed = re.findall(r"^- \[([^\]]+)\]\(#([^)]+)\)$", toc, flags=re.M)
    assert [name for name, _ in listed] == headings, "the table of contents lists every section, in order"
    assert {a for _, a in listed} <= anchors(text)
    # History belongs in docs/history.md: no dates, commit ids, "used to" passages or test counts.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date"
    assert not re.search(r"\bcommit\b", text, flags=re.I), "a commit id"
    assert not re.search(r"\bused to\b", text, flags=re.I), "a 'used to' passage"
    assert not re.search(r"\b\d[\d,]* tests\b", text), "a test count"


@pytest.mark.parametrize("section", ["Bad input", "Running it in production", "Bringing a teacher"])
def test_the_sections_others_extend_are_there(section):
    assert re.search(rf"^##+ {section}$", README.read_text(encoding="utf-8"), flags=re.M)
