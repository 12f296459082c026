"""Input-pipeline throughput: training batches from a folder of images and a mask folder.

    python -m isnet_jax.benchmarks.input_pipeline --images DIR --masks DIR --seconds 20

prints its settings and, on its last line, ``images/s: N``. ``--make-fake N`` first fills
empty (or missing) folders with N photo-like 512x512 JPEGs (crops of scikit-image's sample
photos) and N irregular PNG masks (holes black, as the NVIDIA set), so it runs offline.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import ml_collections
import numpy as np
from PIL import Image

from isnet_jax import cli, input_pipeline, masks


def make_fake_images(
    folder: str | os.PathLike, num: int, size: int = 512, seed: int = 0, quality: int = 90
) -> list[pathlib.Path]:
    """Writes ``num`` photo-like JPEGs: random crops of scikit-image's photos, ``size`` px."""
    rng = np.random.default_rng(seed)
    photos = input_pipeline._skimage_photos()
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        crop = input_pipeline.random_crop_resize(photos[i % len(photos)], size, rng, 0.4)
        paths.append(folder / f"image_{i:05d}.jpg")
        crop.save(paths[-1], quality=quality)
    return paths


def make_fake_masks(
    folder: str | os.PathLike, num: int, size: int = 512, seed: int = 1
) -> list[pathlib.Path]:
    """Writes ``num`` irregular PNG masks, holes black, cycling through the 0-60 % bands."""
    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        mask = masks.irregular_mask(rng, size, masks.SPLIT_BANDS[i % 6])
        paths.append(folder / f"mask_{i:05d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(paths[-1])
    return paths


def _is_empty(path: str) -> bool:
    return not os.path.isdir(path) or not any(os.scandir(path))


def benchmark_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    from isnet_jax.configs import default

    config = default.get_config()
    config.image_size = args.size
    config.batch_size = args.batch_size
    config.data.source = "folder"
    config.data.train_path = args.images
    config.data.num_workers = args.num_workers
    config.data.read_threads = args.read_threads
    config.masks.mode = "external" if args.masks else "procedural"
    config.masks.path = args.masks
    return config


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.benchmarks.input_pipeline", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", required=True, help="folder of training images")
    parser.add_argument("--masks", default="", help="folder of masks ('' = procedural masks)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time to measure for")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--size", type=int, default=256, help="image size")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--num-workers", type=int, default=2, help="grain worker processes")
    parser.add_argument("--read-threads", type=int, default=1, help="decode threads per worker")
    parser.add_argument(
        "--make-fake",
        type=int,
        default=0,
        metavar="N",
        help="first write N fake 512x512 JPEGs / PNG masks into empty folders",
    )
    args = parser.parse_args(argv)

    if args.make_fake and _is_empty(args.images):
        print(f"writing {args.make_fake} fake JPEGs to {args.images}", flush=True)
        make_fake_images(args.images, args.make_fake)
    if args.make_fake and args.masks and _is_empty(args.masks):
        print(f"writing {args.make_fake} fake PNG masks to {args.masks}", flush=True)
        make_fake_masks(args.masks, args.make_fake)

    config = benchmark_config(args)
    print(
        f"images {args.images}, masks {args.masks or 'procedural'}, {args.size} px, "
        f"batch {args.batch_size}, {args.num_workers} workers x {args.read_threads} threads, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    iterator = input_pipeline.create_train_iterator(config, process_index=0, process_count=1)
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < args.warmup:  # worker start-up, first reads
            next(iterator)
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < args.seconds:
            images += len(next(iterator)["index"])
        print(f"{images} images in {elapsed:.1f} s")
        print(f"images/s: {images / elapsed:.0f}")
    finally:
        iterator.close()


if __name__ == "__main__":
    main()
