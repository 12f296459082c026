"""The run blocks of docs/scaling.md, run as the document says (tests/helpers/doc_blocks.py)."""

import pytest
from helpers.doc_blocks import check_ran

# Whole programs in subprocesses, each compiling: seconds to minutes.
pytestmark = pytest.mark.slow

DOC = "docs/scaling.md"


def test_run_blocks(doc_run):
    check_ran(DOC, doc_run.ran)
