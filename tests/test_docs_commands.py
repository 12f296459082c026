"""Every command of README.md and docs/*.md is checked by the suite (docs/testing.md,
"Documentation commands"; tests/helpers/doc_blocks.py says how each marker is checked).

The markers, installs and dry runs are checked here; the run blocks run in tests/docs/, one file
per document (so that xdist spreads them over its workers), each beside the tests that read
what its blocks wrote.
"""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
from helpers.doc_blocks import blocks, check_dry_run, check_install, commands, problems
from helpers.paths import REPO


def test_every_block_is_marked():
    assert problems(REPO) == []
    kinds = {b.kind for b in blocks(REPO)}
    assert {"run", "dry-run", "install", "skip", "same"} <= kinds


def test_an_unmarked_block_fails(tmp_path):
    """A new block without a marker (or a skip without a reason, or a same block with a command
    the document it names does not run) is named with its line."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    assert problems(tmp_path) == []
    doc = tmp_path / "docs" / "training.md"
    line = len(doc.read_text().splitlines()) + 4
    doc.write_text(doc.read_text() + "\nNew:\n\n```bash\npython -m isnet_jax.main --workdir=x\n"
                   "```\n\n<!-- doc-test: skip: -->\n```sh\nls\n```\n"
                   "\n<!-- doc-test: same: README.md -->\n```bash\n"
                   "python -m isnet_jax.main --workdir=/tmp/isnet-demo  # README's\n"
                   "python -m isnet_jax.main --workdir=/tmp/elsewhere\n```\n")
    assert problems(tmp_path) == [
        f"docs/training.md:{line}: a ```bash block without a "
        "<!-- doc-test: run|dry-run|install|skip: REASON|same: DOC --> marker",
        f"docs/training.md:{line + 5}: a skip marker needs a reason (skip: REASON)",
        f"docs/training.md:{line + 10}: 'python -m isnet_jax.main --workdir=/tmp/elsewhere' is "
        "not a command of a run block of README.md"]


def test_install_blocks():
    checked = 0
    for block in blocks(REPO):
        for command in commands(block.text):
            if block.kind == "install" or (block.kind == "run" and command.startswith("pip ")):
                check_install(command)
                checked += 1
    assert checked
    with pytest.raises(AssertionError, match="no extra 'nope'"):
        check_install('pip install -e ".[app,nope]"')


def test_dry_run_blocks():
    dry = [b for b in blocks(REPO) if b.kind == "dry-run"]
    scripts = set()
    for block in dry:
        for command in commands(block.text):
            check_dry_run(command)
            scripts.add(shlex.split(command)[1])
    assert {"launch/gpu.sh", "launch/slurm.sh", "launch/tpu_vm.sh"} <= scripts


def test_every_document_with_run_blocks_has_its_test_file():
    """A document that gains its first run block needs a tests/docs/ file naming it (DOC), or
    its blocks would run nowhere."""
    with_runs = {str(b.path) for b in blocks(REPO) if b.kind == "run"}
    covered = {re.search(r'^DOC = "(.+)"$', p.read_text(), re.M).group(1)
               for p in (REPO / "tests" / "docs").glob("test_*.py")}
    assert with_runs == covered
