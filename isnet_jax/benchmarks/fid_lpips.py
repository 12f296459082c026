"""What FID and LPIPS add to ``--mode=eval``: seconds per 100 images of one band.

    python -m isnet_jax.benchmarks.fid_lpips --size=256 --batch-size=8 --batches=4

Times, after compilation, what the evaluation runs per batch with both metrics on: the FID
Inception on the composite and on the mean-colour fill (and once, in the first band, on the
ground truth), and LPIPS' backbone on the composite, the fill and the ground truth, for
``--lpips=alex`` and ``vgg``; then the Fréchet distance of 2048-d statistics from
``--fid-images`` images, both ``fid.METHODS``. Weights are random (they do not change the speed).
Progress goes to stdout in words; the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import cli
from isnet_jax.evaluators import fid, lpips


def _random(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The module with random weights, filled from numpy: initialising Inception's 22M
    parameters op by op in JAX takes longer on a loaded CPU than everything timed here."""
    module = nnx.eval_shape(build)
    rng = np.random.default_rng(0)
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Variable):
            continue
        shape = node.get_value().shape
        if len(shape) == 4:  # HWIO kernel, He-normal
            value = rng.standard_normal(shape, np.float32) * np.sqrt(2 / np.prod(shape[:3]))
        else:  # BatchNorm scale and variance 1, everything else 0
            value = np.full(shape, 1.0 if path[-1] in ("scale", "var") else 0.0, np.float32)
        node.set_value(jnp.asarray(value))
    return module


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = cli.ArgumentParser(prog="python -m isnet_jax.benchmarks.fid_lpips",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="eval image size (pixels)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="eval batch (config.eval.batch_size)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches (median)")
    parser.add_argument("--fid-images", type=int, default=100, help="images behind each FID")
    parser.add_argument("--fid-dims", type=int, default=fid.FEATURES,
                        help="feature dimensions of the Fréchet distance (Inception: 2048)")
    parser.add_argument("--lpips", nargs="+", default=list(lpips.NETS), choices=lpips.NETS,
                        help="LPIPS backbones to time")
    for old, new in (("--batch", "--batch-size"), ("--fid_images", "--fid-images"),
                     ("--fid_dims", "--fid-dims")):
        parser.add_deprecated_alias(old, new)
    args = parser.parse_args(argv)

    per_100 = 100.0 / args.batch_size
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((args.batch_size, args.size, args.size, 3), np.float32))
    record: dict = {
        "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(), "size": args.size, "batch": args.batch_size,
    }
    print(f"{args.batch_size} images of {args.size}x{args.size} per batch on "
          f"{record['device']} ({record['cpu_count']} CPUs)", flush=True)

    inception = _random(lambda: fid.InceptionV3(rngs=nnx.Rngs(0)))
    features = fid.feature_fn(inception)
    start = time.perf_counter()
    jax.block_until_ready(features(images))
    record["inception_compile_s"] = time.perf_counter() - start
    seconds = _median_seconds(lambda: features(images), args.batches)
    record["inception_per_100_images_s"] = seconds * per_100
    # Composite and fill every band; the ground truth once per evaluation.
    record["fid_per_100_images_per_band_s"] = 2 * seconds * per_100
    print(f"Inception: {seconds * per_100:.1f} s per 100 images (compiled in "
          f"{record['inception_compile_s']:.1f} s); FID per band: 2 passes", flush=True)

    for net in args.lpips:
        model = _random(lambda net=net: lpips.LPIPS(net, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)

        @jax.jit
        def three(state, a, b, c, graphdef=graphdef):
            m = nnx.merge(graphdef, state)
            ref = m.features(a)
            return m.distance(m.features(b), ref), m.distance(m.features(c), ref)

        jax.block_until_ready(three(state, images, images, images))
        seconds = _median_seconds(lambda s=state, f=three: f(s, images, images, images),
                                  args.batches)
        record[f"lpips_{net}_per_100_images_per_band_s"] = seconds * per_100
        print(f"LPIPS ({net}), model and fill against the ground truth: "
              f"{seconds * per_100:.1f} s per 100 images", flush=True)

    stats = fid.statistics(rng.random((args.fid_images, args.fid_dims)))
    reference = fid.statistics(rng.random((args.fid_images, args.fid_dims)))
    for method in fid.METHODS:
        start = time.perf_counter()
        fid.frechet_distance_from_stats(*stats, *reference, method=method)
        record[f"frechet_{method}_s"] = time.perf_counter() - start
        record["fid_images"], record["fid_dims"] = args.fid_images, args.fid_dims
        print(f"Fréchet distance ({method}, {args.fid_images} images of {args.fid_dims}-d "
              "features): "
              f"{record[f'frechet_{method}_s']:.1f} s", flush=True)
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
