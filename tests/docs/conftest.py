"""Fixtures of the documentation's run blocks (tests/helpers/doc_blocks.py): one test file per
document, so that xdist (--dist=loadfile) spreads the documents over its workers."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from helpers import doc_blocks
from helpers.paths import REPO

from isnet_jax import weights
from isnet_jax.rehearse.weights_server import serve, write_table


@pytest.fixture(scope="module")
def doc_run(request, tmp_path_factory, golden_dir, vgg19_file, tiny_tfds):
    """The run blocks of the test module's ``DOC``, run once for the module's tests: ``.ran``
    the list of ``doc_blocks.Ran``, stopped at the first block that failed
    (``doc_blocks.check_ran`` says which); the module's tests read what the blocks wrote:
    ``.cwd`` the user's folder, ``.shared`` where the /tmp/... paths went, ``.env`` the blocks'
    environment (its stand-in weights server up while the module runs)."""
    doc = request.module.DOC
    folder = tmp_path_factory.mktemp("doc")
    ckpt = folder / "ckpt"
    if any("CKPT" in b.text for b in doc_blocks.blocks(REPO)
           if str(b.path) == doc and b.kind == "run"):
        subprocess.run([sys.executable, "-m", "isnet_jax.convert", "--generator",
                        str(golden_dir / "InpaintingModel_gen.pth"), "--output", str(ckpt)],
                       cwd=REPO, check=True, capture_output=True, timeout=600)
    with serve({"vgg19": vgg19_file}) as server:
        table = write_table(folder / "table.json", server, {"vgg19": vgg19_file})
        env = {**os.environ, weights.TABLE_VARIABLE: str(table),
               weights.CACHE_VARIABLE: str(folder / "cache"), "PYTHONPATH": str(REPO),
               "PYTHONUNBUFFERED": "1"}
        values = {"golden": str(golden_dir), "vgg19": str(vgg19_file), "ckpt": str(ckpt),
                  "shared": str(folder), "tfds": str(tiny_tfds)}
        cwd = folder / "user"
        cwd.mkdir()
        ran = doc_blocks.run_document(doc, values, env, cwd)
        yield types.SimpleNamespace(ran=ran, cwd=cwd, shared=folder, env=env)
