"""docs/cli.md against the parsers: every flag of every command line is listed under its
command, nothing is listed that the parser lacks, and every old spelling is named. The page is
made by ``python tools/make_cli_docs.py``; after changing a flag, run it again."""

from __future__ import annotations

import argparse
import ast
import re
import xml.etree.ElementTree as ET

import pytest
from helpers.cli_docs import docs
from helpers.paths import REPO

DOC = REPO / "docs" / "cli.md"
FIX = "docs/cli.md is out of date: run python tools/make_cli_docs.py"
ARGPARSE = [c for c in docs.COMMANDS if c.parse is not None]
ABSL = [c for c in docs.COMMANDS if c.parse is None]


def page() -> dict[str, dict]:
    """Per ``## `command``` section: the flags its table lists and its old spellings."""
    sections: dict[str, dict] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if heading := re.fullmatch(r"## `(.+)`", line):
            current = sections.setdefault(heading.group(1), {"flags": [], "old": {}})
        elif line.startswith("## "):
            current = None
        elif current is not None and (row := re.match(r"\| `(-[^`]+)` \|", line)):
            current["flags"] += row.group(1).split(", ")
        elif current is not None and line.startswith("Old spellings"):
            current["old"] = dict(re.findall(r"`([^`]+)` -> `([^`]+)`", line))
    return sections


def visible_flags(parser: argparse.ArgumentParser) -> list[str]:
    """What ``--help`` shows, read off the parser: not --help, hidden internals, old spellings."""
    return [s for a in parser._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings if s not in ("-h", "--help")]


def test_every_command_line_of_the_package_has_its_section():
    """A module with a ``__main__`` block is a command line: it must be in the generator's
    list, and the page has a section for each entry of that list and no other."""
    mains = set()
    for path in (REPO / "isnet_jax").rglob("*.py"):
        tree = ast.parse(path.read_text())
        if path.name == "__main__.py" or any(
                isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
            mains.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    listed = {m for c in docs.COMMANDS for m in c.modules}
    assert mains == listed, f"add the new command line to COMMANDS in tools/make_cli_docs.py: " \
                            f"{sorted(mains ^ listed)}"
    assert set(page()) == {c.title for c in docs.COMMANDS}, FIX


def test_the_page_says_how_it_is_made():
    assert "python tools/make_cli_docs.py" in DOC.read_text().split("\n## ")[0]


@pytest.mark.parametrize("command", ARGPARSE, ids=[c.title for c in ARGPARSE])
def test_an_argparse_command_lists_exactly_its_flags(command):
    section = page()[command.title]
    parser = docs.parser(command)
    assert section["flags"] == visible_flags(parser), FIX
    assert section["old"] == parser.deprecated_aliases(), FIX


@pytest.mark.slow
def test_an_absl_command_lists_exactly_its_own_flags():
    """absl's own flags (help, logging) and its libraries' (grain's, TensorFlow's) are left out:
    the page says so; the command's own are those defined in isnet_jax."""
    sections = page()
    for command, xml in docs.absl_helpxml(ABSL).items():
        own = sorted(f"--{f.findtext('name')}" for f in ET.fromstring(xml).iter("flag")
                     if "isnet_jax" in f.findtext("file"))
        assert "--config" in own, command
        assert sorted(sections[command]["flags"]) == own, (command, FIX)


def test_the_old_spellings_table_is_the_sections_old_spellings():
    table = re.findall(r"^\| `(python -m [^`]+)` \| `([^`]+)` \| `([^`]+)` \|$", DOC.read_text(),
                       re.MULTILINE)
    assert sorted(table) == sorted((title, old, use) for title, s in page().items()
                                   for old, use in s["old"].items())
    assert ("python -m isnet_jax.main", "--checkpoint=STEP", "--step=STEP") in table
