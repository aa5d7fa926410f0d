"""Every relative link in README.md and docs/*.md points at something that exists.

A link's file (or folder) must exist relative to the page that holds it, and a
``#anchor`` on a markdown page must name one of that page's headings, slugged the way
GitHub slugs them. Links inside code blocks and code spans are not links; links with a
scheme (``https:``, ``mailto:``) are not checked.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[^)]*)?\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, as (line number, text)."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            continue
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup dropped, lower case, punctuation removed
    (letters, digits, marks, ``_`` and ``-`` stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    kept = []
    for char in text.lower():
        category = unicodedata.category(char)
        if char in " -_" or category[0] in "LNM":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image on a page, outside code."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        definition = REFERENCE_DEF.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [(number, target.strip("<>")) for target in targets]
    return found


def problems(page: Path, root: Path = REPO) -> list[str]:
    """What is wrong with the page's relative links, one line each (paths from ``root``)."""
    wrong = []
    for number, target in links(page):
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        where = f"{page.relative_to(root)}:{number}: {target}"
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            wrong.append(f"{where}: no such file")
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            wrong.append(f"{where}: no heading with this anchor in {dest.relative_to(root)}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert problems(page) == []


def test_the_checker_sees_what_it_should(tmp_path):
    """The slug rule and the link parser on cases the pages use."""
    assert slug("Every lever at a glance (STSb dev, Intel Xeon 2 cores, fp32)") == (
        "every-lever-at-a-glance-stsb-dev-intel-xeon-2-cores-fp32"
    )
    assert slug("Recipes (`configs/`)") == "recipes-configs"
    assert slug("The `{s} is: ` prompt with all linear layers") == (
        "the-s-is--prompt-with-all-linear-layers"
    )
    assert slug("Resume and kill-safety") == "resume-and-kill-safety"
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# There\n\n## A part\n\n## A part\n", encoding="utf-8")
    page.write_text(
        "# Page\n\n[ok](there.md#a-part) [ok too](there.md#a-part-1) [self](#page)\n"
        "[gone](missing.md) [bad anchor](there.md#nowhere) [web](https://example.com/x)\n"
        "`[not a link](missing.md)`\n\n```\n[not a link](missing.md)\n```\n",
        encoding="utf-8",
    )
    assert problems(page, root=tmp_path) == [
        "page.md:4: missing.md: no such file",
        "page.md:4: there.md#nowhere: no heading with this anchor in there.md",
    ]
