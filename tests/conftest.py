"""The tests' fixtures and pytest hooks only; what tests share that is not a fixture is in
``tests/helpers/`` (paths, tiny configs, state distances, processes, test data)."""

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
from helpers.paths import GOLDEN_ARCHIVE, TRAIN_GOLDEN_ARCHIVE, data_file
from helpers.tiny import TINY_WIDTH


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
    """A model-only checkpoint of a random Generator(blocks=1) of the tests' width
    (``TINY_WIDTH``): what the inference tests run."""
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    directory = tmp_path_factory.mktemp("tiny") / "ckpt"
    generator = Generator(1, width=TINY_WIDTH, rngs=nnx.Rngs(0))
    checkpoint.write_models(directory, 0,
                            checkpoint.generator_meta("isnet", 1, "test", width=TINY_WIDTH),
                            generator)
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
    # compilation cache turns every repeat compile into a load. Every program is kept, as the
    # commands keep them (compilation_cache.py): an eagerly built network compiles a small
    # program per initialiser, each under JAX's default threshold of 1 s, and building the
    # tests' generator then takes 6 s in every process against 1.5 s when they load.
    import jax

    cache = pathlib.Path(tempfile.gettempdir()) / "isnet_jax_test_jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # Bounded as the commands' (compilation_cache.MAX_BYTES), here and in every subprocess,
    # plain JAX scripts included: JAX writes an access time beside each program only then,
    # and a bounded writer fails on any program without one (the commands mend the folder as
    # they start, a test worker would fail every later write: 94 warnings in a cold run).
    from isnet_jax import compilation_cache

    jax.config.update("jax_compilation_cache_max_size", compilation_cache.MAX_BYTES)
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(compilation_cache.MAX_BYTES))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # What the commands keep between runs (compilation_cache.py) stays out of ~/.cache.
    os.environ.setdefault("ISNET_JAX_CACHE", str(cache.parent / "isnet_jax_test_cache"))


# setup.cfg's slow marker: every test over SLOW_S (setup, call and teardown together, so a module
# fixture's run counts on the test that starts it) carries it, so that `pytest -m "not slow"` is
# a quick inner loop (under 3 minutes on 2 cores). A test that takes longer without the marker
# is listed at the end of the run, to be marked or made quicker. Listed, not failed: a duration
# depends on the machine and its load (a timed test would fail on a slower or busier one, and
# speed targets belong in the benchmarks). SLOW_S is for a quiet machine: the bound grows with
# the load average per core at the end of the run.
SLOW_S = 5.0
_durations: dict[str, float] = {}
_marked_slow: set[str] = set()


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if "slow" in report.keywords:
        _marked_slow.add(report.nodeid)


def _slow_bound() -> float:
    return SLOW_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _unmarked_slow() -> list[tuple[float, str]]:
    bound = _slow_bound()
    return sorted(((d, n) for n, d in _durations.items() if d > bound and n not in _marked_slow),
                  reverse=True)


def pytest_terminal_summary(terminalreporter):
    unmarked = _unmarked_slow()
    if unmarked:
        terminalreporter.section(f"over {_slow_bound():.1f} s without the slow marker (mark them "
                                 f"or make them quicker; SLOW_S = {SLOW_S:.0f} s on a quiet "
                                 "machine)")
        for duration, nodeid in unmarked:
            terminalreporter.write_line(f"{duration:7.1f} s  {nodeid}")


# Files that start first, longest first (seconds of one worker, measured): the rehearsal, then
# the documents' run blocks (tests/docs/, each a file of whole commands), so that the many short
# files fill the other worker around them instead of a long one running alone at the end.
FIRST = ["test_rehearse.py", "test_doc_training.py", "test_doc_readme.py", "test_doc_scaling.py",
         "test_doc_deploy.py", "test_doc_data.py", "test_doc_inference.py"]


def pytest_collection_modifyitems(items):
    # One xdist worker takes a whole file (setup.cfg's --dist=loadfile); setup.cfg's
    # --no-loadscope-reorder keeps this order (xdist would otherwise start the files with the
    # most tests first). sort is stable: the other files keep their collection order.
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST
               else len(FIRST))
