"""Shared fixtures: the release's golden vectors, unpacked once per machine."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import tarfile
import tempfile
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
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


def _unpacked(archive: pathlib.Path, marker: str) -> pathlib.Path:
    # Named by content, not by path or mtime: every clone and worktree on a machine shares
    # one unpacked copy (the official archive unpacks to about 180 MB).
    tag = hashlib.sha1(archive.read_bytes()).hexdigest()
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
    return _unpacked(data_file(archive), marker)


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    """Folder with golden.npz, golden.json and the release-format .pth files, unpacked from
    tests/data/golden/official_blocks2_64px.tar.xz."""
    return _golden(GOLDEN_ARCHIVE, "golden.json")


@pytest.fixture(scope="session")
def train_golden_dir() -> pathlib.Path:
    """Folder with train_golden.npz / .json: three steps of the release's training step, unpacked
    from tests/data/golden/train_blocks2_64px.tar.xz."""
    return _golden(TRAIN_GOLDEN_ARCHIVE, "train_golden.json")


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


@pytest.fixture(scope="session")
def gcs():
    """A local Cloud Storage bucket (``rehearse.gcs_emulator``) for the whole session, with
    its variables set in ``os.environ`` (subprocesses inherit them). ``gcs.path("x")`` is
    ``gs://isnet-test/x``; ``gcs.env`` the variables alone."""
    from isnet_jax.rehearse import gcs_emulator

    with gcs_emulator.Emulator("isnet-test") as emulator, gcs_emulator.exported(emulator):
        yield emulator


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory) -> str:
    """A TFDS data_dir holding ``isnet_tiny_photos`` prepared as ArrayRecord by TFDS itself
    (``helpers.tiny_dataset``); its name is ``tiny_dataset.NAME``."""
    from helpers import tiny_dataset

    return tiny_dataset.prepare(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def vgg19_file(tmp_path_factory) -> pathlib.Path:
    """A random VGG19 with torchvision's shapes (about 80 MB), made once per session: the
    stand-in for torchvision's file (``isnet_jax.rehearse.weights_server``)."""
    from isnet_jax.rehearse import weights_server

    return weights_server.write_vgg19(tmp_path_factory.mktemp("vgg19") / "vgg19-random.pth")


@pytest.fixture
def gs_dir(gcs, request) -> str:
    """A fresh ``gs://`` folder of the session's emulated bucket, one per test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return gcs.path(f"{name}-{uuid.uuid4().hex[:8]}")


def pytest_configure(config):
    # etils.epath decides at its first path, once per process, whether gs:// goes through
    # TensorFlow (which cannot reach the emulated bucket of the gcs fixture) or gcsfs: decide
    # before any test touches a path. Local paths are the same either way.
    os.environ.setdefault("EPATH_USE_TF", "false")
    # Weight files are never downloaded from their publishers, nor read from the user's cache:
    # tests that fetch serve stand-ins (isnet_jax/rehearse/weights_server.py).
    from isnet_jax.rehearse import weights_server

    weights_server.keep_offline()
    # Tests build the same tiny networks in several places (and subprocesses): a persistent
    # compilation cache turns every repeat compile into a load.
    import jax

    cache = pathlib.Path(tempfile.gettempdir()) / "isnet_jax_test_jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    # What the commands keep between runs (compilation_cache.py) stays out of ~/.cache.
    os.environ.setdefault("ISNET_JAX_CACHE", str(cache.parent / "isnet_jax_test_cache"))


# The command-line form of a tiny run (with --config.num_train_steps): the same programs in every
# test that starts one, so the compilation cache serves them all.
TINY_FLAGS = [
    "--config.image_size=32",
    "--config.batch_size=2",
    "--config.log_every_steps=2",
    "--config.image_every_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.eval.num_images=4",
    "--config.eval.batch_size=2",
]


def tiny_config(**overrides):
    """The demo config shrunk to test size: ISNet blocks=1 at 32 px, batch 2, no VGG, and
    the release's recipe (init, Adam, G's adversarial and feature-matching terms) in place of
    the demo's, so that the step's tests see every term."""
    from isnet_jax.configs import default, demo

    config = demo.get_config()
    release = default.get_config()
    settings = {key: release[key] for key in ("model.init", "model.init_scale", "beta1",
                                              "loss.adversarial_weight",
                                              "loss.feature_matching_weight")}
    settings.update(image_size=32, batch_size=2, num_train_steps=4, log_every_steps=2,
                    image_every_steps=0, checkpoint_every_steps=2, eval_every_steps=0)
    settings.update({"data.num_workers": 0, "data.skimage_num_images": 64})
    # The demo's schedule (a 50-step warm-up, cosine) would leave 4 steps at lr ~0: the steps'
    # tests keep the constant 2e-4 they were written for.
    settings.update(learning_rate=2e-4, lr_schedule="constant", warmup_steps=0)
    config.update_from_flattened_dict({**settings, **overrides})
    return config


def step_distance(a: dict, b: dict, learning_rate: float) -> dict[str, float]:
    """How far apart two training states are after the same steps, in well-conditioned terms.

    ``g_grad`` / ``d_grad`` and ``param_outliers`` are ``rehearse.scenarios.state_distance``'s
    (the worst array's ``||a - b|| / ||a||`` over Adam's first moments; the share of parameter
    elements more than ``learning_rate / 100`` apart, since Adam moves an element with a
    near-zero gradient by up to ``2 * lr`` on a rounding-level change). ``spectral``: the worst
    relative distance of the power-iteration vectors. D's loss is a difference of two means that
    nearly cancel from the release's initialisation, so float32 rounding alone moves D's
    gradients by up to about 1e-2 (ISNET_REFERENCE.md).
    """
    from isnet_jax.rehearse import scenarios

    result = scenarios.state_distance(a, b, learning_rate)
    result["spectral"] = max(scenarios.relative_distance(a[k], b[k])
                             for k in ("g_spectral", "d_spectral"))
    return result


def start_until(cmd: list[str], marker: str, sig: int, *, timeout: float = 600,
                whole_group: bool = False, **kwargs):
    """Starts ``cmd`` (its own process group), waits for ``marker`` in its output, sends it
    ``sig`` (to its whole process group if ``whole_group``, as a terminal's Ctrl-C goes) and
    waits for the end. Returns ``(process, whole output)``; nothing of the command
    outlives this (data workers included)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)
    log = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            log.append(line)
            if marker in line or time.monotonic() > deadline:
                break
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc, "".join(log) + rest


def pytest_collection_modifyitems(items):
    # The rehearsal's file is the suite's longest unit of work (one xdist worker takes the whole
    # file, setup.cfg's --dist=loadfile): it starts first, so that the other files fill the
    # other worker around it instead of leaving it to run alone at the end. setup.cfg's
    # --no-loadscope-reorder keeps this order (xdist would otherwise start the files with the
    # most tests first, and this one has five).
    items.sort(key=lambda item: item.path.name != "test_rehearse.py")
