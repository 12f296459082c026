"""The optional parts of the install: what each extra brings, and one error naming it.

The default install trains, evaluates, inpaints and serves the page without TensorFlow. What
still needs it is in the ``tf`` extra (``pip install 'isnet-jax[tf]'``): the SavedModel and
TFLite exports (and their benchmark rows), preparing a TFDS dataset (TFDS encodes its images
with TensorFlow; reading a prepared ArrayRecord dataset does not need it) and
``tensorboard --logdir=gs://...`` (TensorBoard reads buckets through TensorFlow). Each of our
paths among these checks first and stops with one ``MissingExtraError`` line naming the extra.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from isnet_jax.errors import MissingExtraError

TF = "tf"


def pip_install(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'isnet-jax[{extra}]'"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (looked up, not imported: no seconds spent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it, or a missing parent package
        return False


def require(module: str, extra: str, needed_for: str) -> None:
    """A ``MissingExtraError`` naming ``extra`` unless ``module`` is installed; ``needed_for``
    says what needs it ("--format savedmodel")."""
    if not installed(module):
        raise MissingExtraError(
            f"{needed_for} needs {module}, which is not installed: {pip_install(extra)}")


def require_tensorflow(needed_for: str) -> None:
    """``require`` for TensorFlow (the ``tf`` extra)."""
    require("tensorflow", TF, needed_for)


_TF_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def import_tensorflow(needed_for: str) -> Any:
    """``import tensorflow`` for ``needed_for`` (else ``require_tensorflow``'s error), without
    the lines it prints on import that concern no user: the oneDNN notice, twice, each after
    "All log messages before absl::InitializeLog()". Its C++ code writes them to the process's
    stderr (``TF_CPP_MIN_LOG_LEVEL`` no longer reaches them), so file descriptor 2 is caught
    for the import and every other line is written back."""
    import tempfile

    require_tensorflow(needed_for)
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in _TF_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()
    return tf
