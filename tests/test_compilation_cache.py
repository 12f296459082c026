"""Compiled programs kept between runs (``isnet_jax.compilation_cache``): the second ``inpaint``
of a photo compiles nothing and says so; the flag and the variable move the cache or turn it
off; the cache lives under the cache root, bounded in size."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.paths import REPO
from PIL import Image

from isnet_jax import compilation_cache

# JAX's own variables would win over our defaults (conftest points them at the suite's cache).
_JAX_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                  "JAX_COMPILATION_CACHE_MAX_SIZE", compilation_cache.VARIABLE)


def _env(root: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _JAX_VARIABLES}
    return {**env, compilation_cache.CACHE_VARIABLE: str(root), "JAX_PLATFORMS": "cpu", **extra}


def _inpaint(checkpoint, tmp_path, out: str, env, *extra: str) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "isnet_jax.inpaint", "--checkpoint", str(checkpoint),
         "--size", "32", "--crop-margin", "8", "--runtime", "jax",
         "--input", str(tmp_path / "photo.png"),
         "--mask", str(tmp_path / "mask.png"), "--output", str(tmp_path / out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout, time.perf_counter() - start


@pytest.fixture
def photo(tmp_path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    known = np.full((48, 64), 255, np.uint8)
    known[10:30, 20:40] = 0
    Image.fromarray(known).save(tmp_path / "mask.png")
    return tmp_path


@pytest.mark.slow
def test_a_second_inpaint_compiles_nothing(tiny_checkpoint, photo, tmp_path):
    root = tmp_path / "cache_root"
    folder = root / compilation_cache.FOLDER
    first, first_s = _inpaint(tiny_checkpoint, photo, "first", _env(root))
    compiled = re.search(r"^compilation: (\d+) program\(s\) compiled, (\d+) saved to the cache "
                         rf"in {re.escape(str(folder))} for the next run, 0 loaded from it$",
                         first, re.MULTILINE)
    assert compiled and compiled.group(1) == compiled.group(2), first
    assert "s, including compilation: photo.png" in first
    assert list(folder.glob("*-cache"))

    second, second_s = _inpaint(tiny_checkpoint, photo, "second", _env(root))
    assert (f"compilation: nothing compiled, {compiled.group(1)} program(s) loaded from the "
            f"cache in {folder}") in second.splitlines()
    assert "s, including loading the compiled program: photo.png" in second
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "first" / "photo.png")),
                                  np.asarray(Image.open(tmp_path / "second" / "photo.png")))
    print(f"inpaint, tiny generator: first {first_s:.1f} s, second {second_s:.1f} s "
          f"({second_s / first_s:.2f}x)")

    # Off: compiled again, nothing written anywhere.
    before = sorted(folder.iterdir())
    third, _ = _inpaint(tiny_checkpoint, photo, "third", _env(root),
                        "--compilation-cache", "off")
    assert re.search(r"^compilation: [1-9]\d* program\(s\) compiled; the cache is off",
                     third, re.MULTILINE), third
    assert sorted(folder.iterdir()) == before


def test_the_flag_and_variables_choose_the_folder(tmp_path, monkeypatch):
    for name in _JAX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(compilation_cache.CACHE_VARIABLE, raising=False)
    assert compilation_cache.resolve() == (
        pathlib.Path.home() / ".cache" / "isnet_jax" / compilation_cache.FOLDER)
    monkeypatch.setenv(compilation_cache.CACHE_VARIABLE, str(tmp_path / "root"))
    assert compilation_cache.resolve() == tmp_path / "root" / compilation_cache.FOLDER
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compilation_cache.resolve() == tmp_path / "jax"
    monkeypatch.setenv(compilation_cache.VARIABLE, str(tmp_path / "ours"))
    assert compilation_cache.resolve() == tmp_path / "ours"
    assert compilation_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.setenv(compilation_cache.VARIABLE, "OFF")
    assert compilation_cache.resolve() is None
    assert compilation_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"
    assert compilation_cache.resolve("off") is None


def test_the_cache_is_bounded_and_keeps_every_program(tmp_path):
    code = ("import jax\nfrom isnet_jax import compilation_cache as c\nprint(c.enable())\n"
            "print(jax.config.jax_compilation_cache_max_size, "
            "jax.config.jax_persistent_cache_min_compile_time_secs)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str(tmp_path / compilation_cache.FOLDER),
                                       f"{compilation_cache.MAX_BYTES} 0.0"]


def test_programs_written_without_a_bound_do_not_stop_ours(tmp_path):
    # Another JAX program sharing $JAX_COMPILATION_CACHE_DIR writes without a size bound, so
    # without access times; JAX's bounded writer then failed every write of ours.
    folder = tmp_path / "shared"
    theirs = ("import jax, jax.numpy as jnp\n"
              f"jax.config.update('jax_compilation_cache_dir', {str(folder)!r})\n"
              "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
              "jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()\n")
    ours = ("import jax, jax.numpy as jnp\nfrom isnet_jax import compilation_cache as c\n"
            "c.enable()\njax.jit(lambda x: x + 3)(jnp.ones(5)).block_until_ready()\n")
    for code, env in ((theirs, _env(tmp_path)),
                      (ours, _env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(folder)))):
        before = set(folder.glob("*-cache"))
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Error writing persistent compilation cache" not in out.stderr, out.stderr
        assert set(folder.glob("*-cache")) > before
    assert not [p for p in folder.glob("*-cache")
                if not p.with_name(p.name.removesuffix("-cache") + "-atime").exists()]
