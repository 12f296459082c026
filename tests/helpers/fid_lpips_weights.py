"""Random-weight stand-ins for the FID Inception and LPIPS weight files, made without PyTorch.

``tools/make_fid_lpips_vectors.py`` (run once, in an environment with torch, pytorch-fid and
lpips) loads the same numbers into the reference packages and records their outputs in
``tests/data/fid_lpips/``. Both sides draw every tensor from ``random_tensor(seed, key, shape)``:
numpy's PCG64 seeded by the seed and the key's CRC32, so the weights never need to be stored.
The key layouts (names, shapes, dtypes) are the reference packages' own, recorded by the tool in
``reference.json``; ``write_weight_files`` writes them in torch.save's format with
``torch_io.pth.save_pth``, so the tests also exercise the loaders on the released files' layout.

This module imports only numpy at import time: the tool imports it without JAX.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import zlib

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "fid_lpips"
SEED = 20240613
FILES = ("inception", "alexnet", "vgg16", "lin_alex", "lin_vgg")
FILE_NAMES = {
    "inception": "pt_inception-2015-12-05-random.pth",
    "alexnet": "alexnet-owt-random.pth",
    "vgg16": "vgg16-random.pth",
    "lin_alex": "lpips-alex-random.pth",
    "lin_vgg": "lpips-vgg-random.pth",
}


def random_tensor(seed: int, key: str, shape: tuple[int, ...], dtype: str = "float32"):
    """The tensor ``key`` of the random stand-ins: scaled so activations stay of order one."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    shape = tuple(shape)
    if dtype == "int64":  # BatchNorm's num_batches_tracked
        return np.array(rng.integers(0, 1000), np.int64).reshape(shape)
    if key.endswith("running_var"):
        x = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("running_mean"):
        x = 0.1 * rng.standard_normal(shape)
    elif key.endswith("bn.weight"):
        x = rng.uniform(0.5, 1.5, shape)
    elif ".model.1.weight" in key:  # lpips' linear layers: non-negative, like the trained ones
        x = rng.uniform(0.0, 0.2, shape)
    elif len(shape) == 4:  # He-normal conv kernels
        fan_in = shape[1] * shape[2] * shape[3]
        x = np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)
    else:  # biases, classifier
        x = 0.05 * rng.standard_normal(shape)
    return x.astype(np.float32)


def reference() -> dict:
    return json.loads((DATA / "reference.json").read_text())


def state_dict(name: str, layout: list, seed: int = SEED, shrink_classifier: bool = True) -> dict:
    """``{key: array}`` of file ``name`` in ``layout`` ([key, shape, dtype] rows, in order).

    The AlexNet / VGG16 classifiers (0.2 and 0.5 GB in the real files) are written one element
    large: the loaders ignore them, and the tests only need their keys to be there.
    """
    sd = {}
    for key, shape, dtype in layout:
        if shrink_classifier and key.startswith("classifier."):
            shape = [1] * len(shape)
        sd[key] = random_tensor(seed, key, tuple(shape), dtype)
    return sd


def digest(sd: dict) -> str:
    h = hashlib.sha256()
    for key, value in sd.items():
        if not key.startswith("classifier."):
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def write_weight_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes the five random-weight ``.pth`` files into ``folder``; returns their paths.

    Checks each against the digest the tool recorded, so a change in numpy's random stream
    shows up here, not as a parity failure.
    """
    import collections

    from isnet_jax.torch_io.pth import save_pth

    ref = reference()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in FILES:
        sd = state_dict(name, ref["layouts"][name], ref["seed"])
        if digest(sd) != ref["digests"][name]:
            raise RuntimeError(
                f"the random weights of {name} differ from those tests/data/fid_lpips was made "
                "with (numpy's random stream changed?): rerun tools/make_fid_lpips_vectors.py"
            )
        path = folder / FILE_NAMES[name]
        if not path.exists():
            save_pth(collections.OrderedDict(sd), path)
        paths[name] = path
    return paths


def synthetic_features(seed: int, n: int, dims: int, rank: int) -> np.ndarray:
    """Feature-like rows (non-negative, correlated through a rank-``rank`` basis, plus a little
    noise) for the Fréchet-distance cases that need no network."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dims)) / np.sqrt(rank)
    z = rng.standard_normal((n, rank))
    return np.abs(z @ basis) + 0.05 * rng.random((n, dims))
