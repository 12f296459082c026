"""Every relative link of README.md, BENCHMARKS.md and docs/ reaches a file of this repository,
and a ``#fragment`` one of that page's headings: the documents point at nothing a clone lacks."""

from __future__ import annotations

import functools
import re

import pytest
from helpers.paths import REPO

DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").rglob("*.md"))]
_CODE = re.compile(r"```.*?```", re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@functools.cache  # a page is the target of many links
def _headings(path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = _CODE.sub("", path.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def _links(path) -> list[str]:
    return [link for link in _LINK.findall(_CODE.sub("", path.read_text()))
            if not link.startswith(("http://", "https://", "mailto:"))]


def problems(doc, root=REPO) -> list[str]:
    out = []
    for link in _links(doc):
        path, _, fragment = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.is_relative_to(root) or not target.exists():
            out.append(f"{link}: no such file in the repository")
        elif fragment and target.suffix == ".md" and fragment not in _headings(target):
            out.append(f"{link}: {target.name} has no heading with that anchor")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading_of_the_repository(doc):
    found = problems(doc)
    assert not found, f"{doc.relative_to(REPO)}: " + "; ".join(found)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "shared.md").write_text("# Shared\n")
    page = tmp_path / "repo" / "page.md"
    page.write_text("# The title\n\n[ok](#the-title) [gone](#nowhere) [out](../shared.md) "
                    "[missing](other.md) [web](https://example.org/x)\n```\n[code](no.md)\n```\n")
    assert problems(page, root=tmp_path / "repo") == [
        "#nowhere: page.md has no heading with that anchor",
        "../shared.md: no such file in the repository",
        "other.md: no such file in the repository",
    ]
