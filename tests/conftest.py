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
GOLDEN_ARCHIVE = REPO.parent / "shared" / "golden" / "official_blocks2_64px.tar.xz"


def _unpacked_golden() -> pathlib.Path:
    stat = GOLDEN_ARCHIVE.stat()
    tag = hashlib.sha1(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = pathlib.Path(tempfile.gettempdir()) / f"isnet_jax_golden_{tag}"
    if not (target / "golden.json").exists():
        # Unpack beside the target and rename: parallel test workers never see half a folder.
        partial = pathlib.Path(tempfile.mkdtemp(prefix=target.name, dir=target.parent))
        with tarfile.open(GOLDEN_ARCHIVE) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(target)
        except OSError:  # another worker finished first
            shutil.rmtree(partial, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    """Folder with golden.npz, golden.json and the release-format .pth files.

    Skips (saying why) when ../shared/golden is not beside the checkout.
    """
    if not GOLDEN_ARCHIVE.exists():
        pytest.skip(f"golden vectors not found at {GOLDEN_ARCHIVE}: release-parity test skipped")
    return _unpacked_golden()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A model-only checkpoint of a random Generator(blocks=1): what the inference tests run."""
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    directory = tmp_path_factory.mktemp("tiny") / "ckpt"
    generator = Generator(1, rngs=nnx.Rngs(0))
    checkpoint.write_models(directory, 0, checkpoint.generator_meta("isnet", 1, "test"), generator)
    return directory


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
