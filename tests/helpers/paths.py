"""Where the tests find the checkout and the release's reference data (tests/data)."""

from __future__ import annotations

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
# The release's reference data, in the repository (tests/data/README.md says what and how made).
DATA = REPO / "tests" / "data"
GOLDEN = DATA / "golden"
GOLDEN_ARCHIVE = GOLDEN / "official_blocks2_64px.tar.xz"
TRAIN_GOLDEN_ARCHIVE = GOLDEN / "train_blocks2_64px.tar.xz"
RELEASE_GENERATOR_KEYS = DATA / "reference" / "official_generator_keys.tsv"


def data_file(path: pathlib.Path) -> pathlib.Path:
    """``path``, a file of tests/data; a missing one is an error, never a skip: the parity
    tests are the evidence for the README's compatibility claim, and the data ships with them."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it is part of the repository (tests/data/"
                                "README.md); restore it with `git checkout -- tests/data`")
    return path
