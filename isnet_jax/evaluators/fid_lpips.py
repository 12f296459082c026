"""FID and LPIPS per hole-ratio band, for ``--mode=eval`` (both optional, set in ``config.eval``).

- FID: pytorch-fid's Inception on the composites of a band against the ground-truth images of
  the same band. Features stream into running sums (``fid.FeatureStats``): a band of any size
  holds two 2048x2048 float64 sums, never its features. Every band evaluates the same images
  (image i of the eval split, with band-specific masks), so the ground truth's statistics are
  computed in the first band and reused; each band checks that its images are those.
- LPIPS: mean over images of ``lpips(composite, ground truth)``.

Both are also computed for every baseline (the mean-colour fill, OpenCV's inpainters: same
images and masks), beside the model. The networks run jitted in float32 on the eval batches,
sharded like the generator; their weights are arguments of the compiled functions, replicated
on the mesh.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from isnet_jax import errors, sharding, weights
from isnet_jax.evaluators import fid, lpips
from isnet_jax.torch_io.torch_weights import describe, read_state_dict

BASELINE = "mean_fill/"  # as evaluate.BASELINE (kept here to avoid a circular import)

ENABLE_FID = (
    "set config.eval.fid_weights=inception (pytorch-fid's weights, fetched into the weights "
    "cache on first use) or to a path of pt_inception-2015-12-05-6726825d.pth (or of the folder "
    "`python -m isnet_jax.convert --inception PATH --output DIR` writes)"
)
ENABLE_LPIPS = (
    "set config.eval.lpips_net=alex or vgg (torchvision's backbone and lpips' linear layers, "
    "fetched into the weights cache on first use), or config.eval.lpips_backbone_weights to "
    "alexnet-owt-7be5be79.pth or vgg16-397923af.pth and config.eval.lpips_lin_weights to lpips' "
    "weights/v0.1/alex.pth or vgg.pth"
)
# What config.eval.lpips_net alone fetches (isnet_jax.weights' names): backbone, linear layers.
_LPIPS_FILES = {"alex": ("alexnet", "lpips_alex"), "vgg": ("vgg16", "lpips_vgg"),
                "vgg16": ("vgg16", "lpips_vgg")}


def _config_error(field: str, error: errors.UserError) -> errors.UserError:
    """The same exception, its message prefixed with the config field that named the file."""
    return type(error)(f"config.eval.{field}: {error}")


def load_inception(path: str) -> fid.InceptionV3:
    """From ``config.eval.fid_weights``: a path, or a known name ("inception") fetched."""
    try:
        path = weights.resolve(path, "inception", fid.convert_pytorch_fid)
        with weights.local_copy(path) as local:
            return fid.InceptionV3.from_weights(os.path.expanduser(local))
    except errors.UserError as e:
        raise _config_error("fid_weights", e) from None


def load_lpips(net: str, backbone: str, lin: str) -> lpips.LPIPS:
    """From ``config.eval.lpips_*``: both paths (or known names), or ``net`` alone, whose
    backbone and linear layers are fetched into the weights cache."""
    if not (backbone or lin):
        if net not in _LPIPS_FILES:
            raise errors.ConfigError(
                f"config.eval.lpips_net must be one of {', '.join(lpips.NETS)}, got {net!r}")
        try:
            backbone, lin = (weights.fetch(name) for name in _LPIPS_FILES[net])
        except errors.UserError as e:
            raise _config_error("lpips_net", e) from None
    if not (backbone and lin):
        given, missing = (("lpips_backbone_weights", "lpips_lin_weights") if backbone
                          else ("lpips_lin_weights", "lpips_backbone_weights"))
        raise errors.ConfigError(
            f"config.eval.{given} is set but config.eval.{missing} is not: LPIPS needs both the "
            "backbone and lpips' linear layers (or leave both empty and set config.eval.lpips_net "
            "to fetch them)")
    paths = {}
    for field, value in (("lpips_backbone_weights", backbone), ("lpips_lin_weights", lin)):
        try:
            paths[field] = weights.resolve(value, "")  # a known name is fetched, a path kept
        except errors.UserError as e:
            raise _config_error(field, e) from None
    with weights.local_copy(paths["lpips_backbone_weights"]) as backbone, \
            weights.local_copy(paths["lpips_lin_weights"]) as lin:
        return _load_lpips(net, os.path.expanduser(backbone), os.path.expanduser(lin))


def _load_lpips(net: str, backbone: str, lin: str) -> lpips.LPIPS:
    if not net:  # the backbone file says which network it is
        try:
            found = describe(read_state_dict(backbone, "an LPIPS backbone"))
        except errors.UserError as e:
            raise _config_error("lpips_backbone_weights", e) from None
        net = {"torchvision's AlexNet": "alex", "torchvision's VGG16": "vgg"}.get(
            (found or "").split(" (")[0], "")
        if not net:
            raise errors.ConfigError(
                f"config.eval.lpips_backbone_weights: {backbone} is neither torchvision's AlexNet "
                f"nor its VGG16 ({found or 'unrecognised keys'}); give one of them, or set "
                "config.eval.lpips_net"
            )
    try:
        return lpips.LPIPS.from_weights(net, backbone, lin)
    except errors.UserError as e:
        field = "lpips_lin_weights" if lin in str(e) else "lpips_backbone_weights"
        if "LPIPS net must be" in str(e):
            field = "lpips_net"
        raise _config_error(field, e) from None


class PerceptualMetrics:
    """The FID Inception and the LPIPS network of one evaluation, either or both absent."""

    def __init__(
        self,
        mesh: jax.sharding.Mesh,
        inception: fid.InceptionV3 | None = None,
        lpips_model: lpips.LPIPS | None = None,
        fid_method: str = "sqrtm",
        fid_source: str = "",
    ):
        if fid_method not in fid.METHODS:
            raise errors.ConfigError(
                f"config.eval.fid_method must be one of {', '.join(fid.METHODS)}, got "
                f"{fid_method!r}"
            )
        self.fid_method = fid_method
        self.fid_source = fid_source
        self.lpips_net = lpips_model.net if lpips_model is not None else ""
        replicated = sharding.replicated(mesh)
        self._real: fid.FeatureStats | None = None
        self._reference: fid.Reference | None = None
        self.fallbacks: list[str] = []  # FID values computed with "eigh" after sqrtm failed
        self._real_images: str | None = None
        self._inception = self._lpips = None
        if inception is not None:
            self._inception_state, self._inception = _jitted(inception, _features, replicated)
        if lpips_model is not None:
            self._lpips_state, self._lpips = _jitted(lpips_model, _lpips_sums, replicated)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, mesh) -> PerceptualMetrics:
        """Loads (and checks) every weight file ``config.eval`` names, before any evaluation."""
        ev = config.eval
        inception = load_inception(ev.fid_weights) if ev.get("fid_weights") else None
        model = None
        if ev.get("lpips_net") or ev.get("lpips_backbone_weights") or ev.get("lpips_lin_weights"):
            model = load_lpips(ev.get("lpips_net", ""), ev.get("lpips_backbone_weights", ""),
                               ev.get("lpips_lin_weights", ""))
        return cls(mesh, inception, model, ev.get("fid_method", "sqrtm"),
                   ev.get("fid_weights", ""))

    @property
    def fid(self) -> bool:
        return self._inception is not None

    @property
    def lpips(self) -> bool:
        return self._lpips is not None

    def not_computed(self) -> str:
        """One line saying which of FID / LPIPS were not computed and how to add them."""
        missing = [(name, how) for name, on, how in (("FID", self.fid, ENABLE_FID),
                                                    ("LPIPS", self.lpips, ENABLE_LPIPS)) if not on]
        if not missing:
            return ""
        names = " and ".join(name for name, _ in missing)
        return f"{names} not computed: " + "; ".join(how for _, how in missing) + "."

    def band(self, label: str = "") -> BandAccumulator:
        return BandAccumulator(self, label)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.fid:
            out["fid"] = {"weights": self.fid_source, "method": self.fid_method,
                          "network": "pytorch-fid InceptionV3 pool3 (2048)"}
        if self.fallbacks:
            out["fid"]["fallbacks"] = list(self.fallbacks)
        if self.lpips:
            out["lpips"] = {"net": self.lpips_net, "version": "0.1"}
        return out


class BandAccumulator:
    """FID statistics and LPIPS sums over one band's batches."""

    def __init__(self, metrics: PerceptualMetrics, label: str = ""):
        self.m = metrics
        self.label = label or "the band"
        self.reuse_real = metrics._real is not None
        self.stats: dict[str, fid.FeatureStats] = {}  # per candidate: "" (model), "mean_fill/"..
        self.real = metrics._real if self.reuse_real else (
            fid.FeatureStats() if metrics.fid else None)
        self.images = hashlib.sha1()
        self.lpips_sums: dict[str, float] = {}

    def update(self, indices: np.ndarray, image, candidates: dict[str, Any], valid) -> None:
        """One eval batch: host ``indices`` of its records, global arrays of the rest;
        ``candidates`` maps a key prefix ("" for the model, "mean_fill/", "telea/", ...) to its
        composites."""
        self.images.update(np.asarray(indices, np.int64).tobytes())
        if self.m.fid:
            pairs = [(self.stats.setdefault(k, fid.FeatureStats()), x)
                     for k, x in candidates.items()]
            for stats, x in pairs + ([] if self.reuse_real else [(self.real, image)]):
                features, rows = self.m._inception(self.m._inception_state, x, valid)
                stats.update(np.asarray(features.addressable_data(0)),
                             np.asarray(rows.addressable_data(0)))
        if self.m.lpips:
            sums = self.m._lpips(self.m._lpips_state, image, candidates, valid)
            for k, v in sums.items():
                self.lpips_sums[k] = self.lpips_sums.get(k, 0.0) + float(
                    np.asarray(v.addressable_data(0)))

    def result(self, count: float) -> dict[str, float]:
        """The band's FID (with its image count) and mean LPIPS, model and baseline."""
        out: dict[str, float] = {}
        digest = self.images.hexdigest()
        if self.m.fid:
            if self.reuse_real and digest != self.m._real_images:
                raise RuntimeError(
                    "the eval images differ between bands, so the ground truth's FID statistics "
                    "of the first band do not apply; this is a bug of the eval pipeline"
                )
            if not self.reuse_real:
                self.m._real, self.m._real_images = self.real, digest
                self.m._reference = fid.Reference(self.real.mean(), self.real.cov(),
                                                  self.m.fid_method)
            for prefix, stats in self.stats.items():
                out[prefix + "fid"] = self._distance(prefix + "fid", stats)
            out["fid_images"] = float(self.stats[""].count)
        for k, v in self.lpips_sums.items():
            out[k] = v / count
        return out

    def _distance(self, key: str, stats: fid.FeatureStats) -> float:
        mu, sigma = stats.mean(), stats.cov()
        try:
            return self.m._reference.distance(mu, sigma)
        except ValueError as e:
            # scipy's square root of a singular product can come out complex where the exact
            # one is real (few images, 2048 dimensions): pytorch-fid stops there. One band's
            # failure must not cost the whole evaluation, so that value comes from the
            # eigendecomposition instead, and the report says so next to the table.
            if self.m.fid_method != "sqrtm" or "imaginary component" not in str(e):
                raise
            value = self.m._reference.distance(mu, sigma, method="eigh")
            self.m.fallbacks.append(f"{key} of {self.label}: {e}; the value shown is from "
                                    "fid_method=eigh")
            logging.warning("%s", self.m.fallbacks[-1])
            return value


def _features(model: fid.InceptionV3, images, valid):
    # valid comes back replicated too: the host's mask of the global batch's rows
    return model(images), valid


def _lpips_sums(model: lpips.LPIPS, image, candidates, valid):
    reference = model.features(image)  # once for the model's and every baseline's distance
    sums = {}
    for prefix, candidate in candidates.items():
        d = model.distance(model.features(candidate), reference)
        sums[prefix + "lpips"] = jnp.sum(jnp.where(valid, d, 0.0))
    return sums


def _jitted(module: nnx.Module, fn, replicated):
    """``(state, jit(state, *args) -> fn(module, *args))``, the state replicated on the mesh."""
    graphdef, state = nnx.split(module)

    def run(state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    return jax.device_put(state, replicated), jax.jit(run, out_shardings=replicated)
