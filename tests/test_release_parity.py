"""The converted release checkpoints reproduce the official PyTorch release's outputs.

The golden vectors were made by running the release (blocks=2, 64x64) itself; see
docs/reference/isnet.md, "Reference test vectors". Activations are compared relative to their scale:
max|ours - release| / max(1, max|release|) < 5e-6.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from isnet_jax import convert
from isnet_jax.models import count_params
from isnet_jax.models.layers import SpectralState

TOL = 5e-6  # measured 2026-12: G eval 4.8e-7, G first train step 3.6e-7
# docs/reference/isnet.md, "Parameter counts of the release".
PARAMS_BLOCKS2 = 21_530_275
PARAMS_DISCRIMINATOR = 2_763_776


def scaled_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def spectral_vectors(module: nnx.Module) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(nnx.state(module, SpectralState))]


@pytest.fixture(scope="module")
def golden(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "golden.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def generator(golden_dir):
    return convert.load_official_generator(golden_dir / "InpaintingModel_gen.pth")


@nnx.jit(static_argnames="train")
def run_generator(g, x, train):
    return g(x, train=train)


def test_generator_shape_matches_release(generator, golden_dir):
    meta = json.loads((golden_dir / "golden.json").read_text())
    assert generator.blocks == meta["blocks"] == 2
    assert count_params(generator) == PARAMS_BLOCKS2


def test_eval_forward_matches_release_and_keeps_u_v(generator, golden):
    before = spectral_vectors(generator)
    out = run_generator(generator, golden["images"] * golden["masks"], False)
    err = scaled_error(out, golden["out_eval"])
    print(f"generator eval: max abs diff {err:.2e}")
    assert err < TOL
    after = spectral_vectors(generator)
    assert len(after) == len(before) > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), (
        "eval mode changed a spectral-norm vector"
    )


def test_first_train_forward_matches_release(generator, golden):
    g = nnx.clone(generator)  # the stored u, v as loaded, whatever other tests ran first
    before = spectral_vectors(g)
    out = run_generator(g, golden["images"] * golden["masks"], True)
    err = scaled_error(out, golden["out_train_first_step"])
    print(f"generator first train-mode forward: max abs diff {err:.2e}")
    assert err < TOL
    # The power iteration ran (and so the comparison above measured it).
    assert any(not np.array_equal(a, b) for a, b in zip(before, spectral_vectors(g), strict=True))


def test_discriminator_matches_release(golden_dir, golden):
    d = convert.load_official_discriminator(golden_dir / "InpaintingModel_dis.pth")
    assert count_params(d) == PARAMS_DISCRIMINATOR
    before = spectral_vectors(d)
    logits, feats = nnx.jit(lambda m, x: m(x))(d, golden["images"])
    errors = {"d_logits": scaled_error(logits, golden["d_logits"])}
    for i, feat in enumerate(feats):
        errors[f"d_feat{i}"] = scaled_error(feat, golden[f"d_feat{i}"])
    print("discriminator:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < TOL, errors
    assert all(np.array_equal(a, b) for a, b in zip(before, spectral_vectors(d), strict=True))
