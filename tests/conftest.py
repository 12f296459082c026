"""Shared fixtures: the release's golden vectors, unpacked once per machine."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tarfile
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
GOLDEN_ARCHIVE = GOLDEN / "official_blocks2_64px.tar.xz"
TRAIN_GOLDEN_ARCHIVE = GOLDEN / "train_blocks2_64px.tar.xz"


def _unpacked(archive: pathlib.Path, marker: str) -> pathlib.Path:
    stat = archive.stat()
    tag = hashlib.sha1(f"{archive.name}-{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()
    target = pathlib.Path(tempfile.gettempdir()) / f"isnet_jax_golden_{tag[:12]}"
    if not (target / marker).exists():
        # Unpack beside the target and rename: parallel test workers never see half a folder.
        partial = pathlib.Path(tempfile.mkdtemp(prefix=target.name, dir=target.parent))
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(target)
        except OSError:  # another worker finished first
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _golden(archive: pathlib.Path, marker: str) -> pathlib.Path:
    if not archive.exists():
        pytest.skip(f"golden vectors not found at {archive}: release-parity test skipped")
    return _unpacked(archive, marker)


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    """Folder with golden.npz, golden.json and the release-format .pth files.

    Skips (saying why) when ../shared/golden is not beside the checkout.
    """
    return _golden(GOLDEN_ARCHIVE, "golden.json")


@pytest.fixture(scope="session")
def train_golden_dir() -> pathlib.Path:
    """Folder with train_golden.npz / .json: three steps of the release's training step.

    Skips (saying why) when ../shared/golden is not beside the checkout.
    """
    return _golden(TRAIN_GOLDEN_ARCHIVE, "train_golden.json")


def pytest_configure(config):
    # Tests build the same tiny networks in several places (and subprocesses): a persistent
    # compilation cache turns every repeat compile into a load.
    import jax

    cache = pathlib.Path(tempfile.gettempdir()) / "isnet_jax_test_jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def tiny_config(**overrides):
    """The demo config shrunk to test size: ISNet blocks=1 at 32 px, batch 2, no VGG."""
    from configs import demo

    config = demo.get_config()
    config.image_size = 32
    config.batch_size = 2
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.image_every_steps = 0
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.data.num_workers = 0
    config.data.skimage_num_images = 64
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def step_distance(a: dict, b: dict, learning_rate: float) -> dict[str, float]:
    """How far apart two training states are after the same steps, in well-conditioned terms.

    ``grad``: the worst array's ``||a - b|| / ||a||`` over Adam's first moments of G and D (with
    the release's beta1 = 0 these are the last step's gradients) and the spectral-norm vectors.
    ``param_outliers``: the fraction of parameter elements that differ by more than
    ``learning_rate / 100``. The parameters themselves are ill-conditioned for this: Adam moves
    each element by about ``lr * g / (|g| + 1e-8)``, the same for every gradient far above 1e-8,
    so a rounding-level change of a gradient near 1e-8 moves its element by up to ``2 * lr``.
    """
    import jax
    import numpy as np

    def rel(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))

    def named(tree, key):
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return [(key + jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat]

    pairs = []
    for key in ("g_opt", "d_opt"):
        pairs += zip(named(a[key][0].mu, key), named(b[key][0].mu, key), strict=True)
    for key in ("g_spec", "d_spec"):
        pairs += zip(named(a[key], key), named(b[key], key), strict=True)
    grad, worst = max((rel(x, y), name) for (name, x), (_, y) in pairs)
    far = total = 0
    for key in ("g_params", "d_params"):
        for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
            diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
            far += int(np.sum(diff > learning_rate / 100))
            total += diff.size
    return {"grad": grad, "worst": worst, "param_outliers": far / total}
