"""Reference vectors for ``isnet_jax.evaluators.fid`` and ``isnet_jax.evaluators.lpips``,
computed by ``pytorch-fid`` and ``lpips`` themselves. Installs nothing into the project; run it
in an environment of its own:

    python3 -m venv /tmp/venv-ref && . /tmp/venv-ref/bin/activate
    pip install torch torchvision "pytorch-fid==0.3.0" "lpips==0.1.4" scipy
    python tools/make_fid_lpips_vectors.py          # rewrites tests/data/fid_lpips/

The released weight files cannot be fetched here (and must not be at test time), so every weight is
random: ``tests/helpers/fid_lpips_weights.py`` draws each tensor from numpy's PCG64 seeded by a
fixed seed and the tensor's name, which the tests redo without torch and write as ``.pth`` files
with ``isnet_jax.torch_io.pth.save_pth``. The key layouts the tests write are the reference
packages' own (recorded below from the torch modules, and checked against the linear-layer files
that lpips ships). What this script stores (a few hundred KB):

- ``vectors.npz``: the input images (uint8; the networks see ``x / 255`` in float32), pytorch-fid's
  2048-d pool features of them, LPIPS distances per image pair and per layer for AlexNet and
  VGG16, and the expected contents of ``legacy_mixed.pth``;
- ``reference.json``: versions, seed, key layouts and digests of the random weights, and the
  Fréchet distances pytorch-fid computes (the two image sets; feature-like sets in 256
  dimensions, singular and full rank; two degenerate 2x2 cases of its error handling);
- ``lpips-{alex,vgg}-random-legacy.pth``: the random linear layers in torch.save's pre-1.6
  format, as lpips ships its own; ``legacy_mixed.pth``: views, shared storages and several
  dtypes in that format.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import fid_lpips_weights as W  # noqa: E402 - numpy only, shared with the tests

OUT = W.DATA
BATCH = 2  # the tests run the networks in batches of this size (one compilation)


def _import_torch_stack():
    import torch

    try:
        import torchvision
    except RuntimeError as e:
        # PyPI's torchvision wheels are CUDA builds; beside a CPU-only torch their compiled ops
        # do not load and the import stops at the fake kernels of nms / qnms. The models used
        # here are plain Python: declare the two ops and import again.
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    import lpips
    import pytorch_fid
    import scipy

    versions = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pytorch-fid": pytorch_fid.__version__, "lpips": getattr(lpips, "__version__", "0.1.x"),
        "numpy": np.__version__, "scipy": scipy.__version__,
    }
    return torch, torchvision, versions


def smooth_images(seed: int, n: int, h: int, w: int, freq: float = 6.0) -> np.ndarray:
    """Photo-like uint8 images: a colour, a few random waves, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3))
    for i in range(n):
        for c in range(3):
            v = np.full((h, w), rng.uniform(0.25, 0.75))
            for _ in range(4):
                fy, fx = rng.uniform(-freq, freq, 2)
                v += rng.uniform(0.05, 0.2) * np.sin(
                    2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
            out[i, :, :, c] = v
    out += 0.02 * rng.standard_normal(out.shape)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def degrade(images: np.ndarray, seed: int) -> np.ndarray:
    """The second image of each LPIPS pair: shifted, noisier, a brightness change."""
    rng = np.random.default_rng(seed)
    x = images.astype(np.float64) / 255
    x = np.roll(x, 2, axis=2) * rng.uniform(0.85, 1.15) + 0.05 * rng.standard_normal(x.shape)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255)  # what the tests feed our networks


def layout(sd) -> list:
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()]


def to_torch(torch, sd: dict) -> collections.OrderedDict:
    return collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v)))
                                   for k, v in sd.items())


def main() -> None:
    torch, torchvision, versions = _import_torch_stack()
    import lpips
    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import calculate_frechet_distance

    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "_tmp"
    tmp.mkdir(exist_ok=True)
    seed = W.SEED

    # --- Layouts: the torch modules' own state dicts --------------------------------------------
    # pytorch-fid's fid_inception_v3() with the weights taken from our file instead of its URL;
    # it loads them with strict=True, so this layout is exactly the one its network has.
    inception = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in (("Mixed_5b", pfi.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", pfi.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", pfi.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", pfi.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", pfi.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", pfi.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", pfi.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", pfi.FIDInceptionE_1(1280)),
                        ("Mixed_7c", pfi.FIDInceptionE_2(2048))):
        setattr(inception, name, block)
    layouts = {
        "inception": layout(inception.state_dict()),
        "alexnet": layout(torchvision.models.alexnet(weights=None).state_dict()),
        "vgg16": layout(torchvision.models.vgg16(weights=None).state_dict()),
    }
    shipped = pathlib.Path(lpips.__file__).parent / "weights" / "v0.1"
    for net in ("alex", "vgg"):
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        # The module registers each linear layer twice (lin0 and lins.0); the file has lin0.
        lin = {k: v for k, v in model.state_dict().items() if re.match(r"lin\d+\.", k)}
        real = torch.load(shipped / f"{net}.pth", map_location="cpu")
        assert layout(lin) == layout(real), f"lpips' {net}.pth differs from its module's layout"
        layouts[f"lin_{net}"] = layout(lin)
    weights = {name: W.state_dict(name, layouts[name], seed, shrink_classifier=False)
               for name in W.FILES}
    digests = {name: W.digest(sd) for name, sd in weights.items()}

    vectors: dict[str, np.ndarray] = {}

    # --- FID ------------------------------------------------------------------------------------
    inception_path = tmp / "inception.pth"
    torch.save(to_torch(torch, weights["inception"]), inception_path)
    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(inception_path, map_location="cpu")
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    def pool_features(images: np.ndarray) -> np.ndarray:
        rows = []
        for i in range(0, len(images), BATCH):
            x = torch.from_numpy(to_float(images[i:i + BATCH])).permute(0, 3, 1, 2)
            rows.append(model(x)[0][:, :, 0, 0].numpy())
        return np.concatenate(rows)

    sets = {
        "fid_a": smooth_images(1, 6, 48, 48),
        "fid_b": smooth_images(2, 6, 48, 48, freq=12.0),
        "inception_large": smooth_images(3, 2, 311, 303),  # shrunk to 299 (no antialiasing)
        "inception_299": smooth_images(4, 2, 299, 299),  # no resize at all
    }
    for name, images in sets.items():
        vectors[f"{name}/images"] = images
        vectors[f"{name}/features"] = pool_features(images)
    stats = {}
    for name in ("fid_a", "fid_b"):
        act = vectors[f"{name}/features"].astype(np.float64)
        stats[name] = (np.mean(act, axis=0), np.cov(act, rowvar=False))  # as pytorch-fid
    fids = {"images": calculate_frechet_distance(*stats["fid_a"], *stats["fid_b"])}
    # (n, dims, rank, scale, seed): the last makes scipy's sqrtm of the singular product come
    # out with an imaginary part above pytorch-fid's 1e-3, so that it stops.
    synthetic = {"singular": (40, 256, 16, 1.0, seed), "full_rank": (600, 256, 32, 1.0, seed),
                 "sqrtm_fails": (38, 128, 8, 388.0, 7)}
    for name, (n, dims, rank, scale, s) in synthetic.items():
        a = scale * W.synthetic_features(s + 1, n, dims, rank)
        b = scale * W.synthetic_features(s + 2, n, dims, rank)
        try:
            fids[name] = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                                    b.mean(0), np.cov(b, rowvar=False))
        except ValueError as e:
            fids[name] = str(e)
    # Its error handling: a nilpotent product (sqrtm not finite: retried with 1e-6 * I) and a
    # product with a negative eigenvalue (imaginary square root: ValueError).
    degenerate = {
        "nilpotent": ([[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]),
        "imaginary": ([[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 1.0]]),
    }
    degenerate_results = {}
    for name, (s1, s2) in degenerate.items():
        try:
            value = calculate_frechet_distance(np.zeros(2), np.array(s1), np.ones(2), np.array(s2))
            degenerate_results[name] = {"sigma1": s1, "sigma2": s2, "fid": float(value)}
        except ValueError as e:
            degenerate_results[name] = {"sigma1": s1, "sigma2": s2, "error": str(e)}

    # --- LPIPS ----------------------------------------------------------------------------------
    pairs = {"lpips_64": smooth_images(5, 4, 64, 64), "lpips_odd": smooth_images(6, 2, 45, 71)}
    for name, images in pairs.items():
        vectors[f"{name}/a"] = images
        vectors[f"{name}/b"] = degrade(images, 7)
    for net, backbone in (("alex", "alexnet"), ("vgg", "vgg16")):
        lin = to_torch(torch, weights[f"lin_{net}"])
        lin_path = OUT / f"lpips-{net}-random-legacy.pth"
        torch.save(lin, lin_path, _use_new_zipfile_serialization=False)  # as lpips ships them
        model = lpips.LPIPS(net=net, pnet_rand=True, model_path=str(lin_path), verbose=False)
        # lpips' slices keep torchvision's indices as module names: features.N -> net.sliceK.N.
        names = {k.split(".", 3)[2]: k.split(".", 2)[1]
                 for k in model.state_dict() if k.startswith("net.slice")}
        mapped = {}
        for key, value in weights[backbone].items():
            if key.startswith("features."):
                _, index, param = key.split(".")
                mapped[f"net.{names[index]}.{index}.{param}"] = torch.from_numpy(value)
        model.load_state_dict(mapped, strict=False)
        state = model.state_dict()
        for key, value in mapped.items():  # strict=False above: check that everything arrived
            assert torch.equal(state[key], value), key
        for key, value in lin.items():
            assert torch.equal(state[key], value), key
        model.eval()
        for name in pairs:
            a, b = (torch.from_numpy(to_float(vectors[f"{name}/{s}"])).permute(0, 3, 1, 2)
                    for s in "ab")
            total, layers = model(a, b, retPerLayer=True, normalize=True)
            vectors[f"{name}/{net}/distance"] = total[:, 0, 0, 0].numpy()
            vectors[f"{name}/{net}/layers"] = torch.cat(layers, 1)[:, :, 0, 0].numpy()

    # --- The pre-1.6 format with views, shared storages and dtypes -----------------------------
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    mixed = collections.OrderedDict(
        plain=base, transposed=base.t(), window=base[1:3, 2:5], row=base[2],
        counter=torch.tensor(123456789012, dtype=torch.int64),
        half=torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16),
        double=torch.linspace(-1, 1, 5, dtype=torch.float64),
        flags=torch.tensor([True, False, True]),
        nested={"list": [torch.ones(2, 3), 7], "text": "x"},
    )
    torch.save(mixed, OUT / "legacy_mixed.pth", _use_new_zipfile_serialization=False)
    for key in ("plain", "transposed", "window", "row", "counter", "half", "double", "flags"):
        vectors[f"legacy/{key}"] = mixed[key].numpy()
    vectors["legacy/nested_list0"] = mixed["nested"]["list"][0].numpy()

    np.savez_compressed(OUT / "vectors.npz", **vectors)
    reference = {
        "versions": versions,
        "seed": seed,
        "batch": BATCH,
        "layouts": layouts,
        "digests": digests,
        "fid": {k: v if isinstance(v, str) else float(v) for k, v in fids.items()},
        "synthetic": {k: {"n": n, "dims": d, "rank": r, "scale": c, "seed_a": s + 1,
                          "seed_b": s + 2} for k, (n, d, r, c, s) in synthetic.items()},
        "degenerate": degenerate_results,
    }
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    inception_path.unlink()
    tmp.rmdir()
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
