"""``python -m isnet_jax.export``: write a checkpoint's generator as a deployable model.

    python -m isnet_jax.export --checkpoint CKPT --format stablehlo|savedmodel|tflite|onnx \\
        --output DIR [--batch-size N] [--height H] [--width W] [--step N] [--overwrite]

See ``isnet_jax.export`` for what the exported function computes and docs/deploy.md for
running each format. A mistake in the command (a missing checkpoint, an unknown format, a size
that is not a multiple of 16, an existing ``--output`` without ``--overwrite``) is one
``error:`` line and status 2, with nothing written.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Sequence

from isnet_jax import cli, extras
from isnet_jax.export import core
from isnet_jax.models import MULTIPLE


def parse_args(argv: Sequence[str] | None = None):
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.export",
        description="Export a generator checkpoint's inpainting step (image, mask -> "
        "composite) as StableHLO, a TF SavedModel, TFLite or ONNX.",
    )
    cli.add_checkpoint_arguments(parser)
    parser.add_argument("--format", required=True, choices=core.FORMATS,
                        help="what to write: stablehlo (jax.export), savedmodel (TF Serving), "
                        "tflite (fixed shape), onnx (onnxruntime)")
    parser.add_argument("--output", required=True, type=pathlib.Path,
                        help="folder to create for the exported model and export.json")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="fix the batch size (default: dynamic; tflite: "
                        f"{core.FIXED_DEFAULT.batch})")
    parser.add_argument("--height", type=int, default=None,
                        help=f"fix the height, a multiple of {MULTIPLE} (default: dynamic; "
                        f"tflite: {core.FIXED_DEFAULT.height})")
    parser.add_argument("--width", type=int, default=None,
                        help=f"fix the width, a multiple of {MULTIPLE} (default: dynamic; "
                        f"tflite: {core.FIXED_DEFAULT.width})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output folder")
    parser.add_deprecated_alias("--batch", "--batch-size")
    cli.add_compilation_cache_argument(parser)
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def run(args) -> int:
    shape = core.shape_for(args.format, core.Shape(args.batch_size, args.height, args.width))
    core.check_output(args.output, args.overwrite)
    if args.format in ("savedmodel", "tflite"):  # before the checkpoint's restore
        extras.require_tensorflow(f"--format {args.format}")
    from isnet_jax import checkpoint, compilation_cache

    compilation_cache.enable(args.compilation_cache)
    checkpoint.resolve(args.checkpoint, args.step)  # a wrong path: one line, before any other
    generator, meta = checkpoint.restore_generator(args.checkpoint, args.step)
    print(f"{cli.generator_line(meta, args.checkpoint)}; exporting {args.format}, input shape "
          f"{shape.describe()}{' (fixed)' if shape.fixed else ''}: this takes a minute or two",
          flush=True)
    start = time.perf_counter()
    folder = core.export(generator, args.format, args.output, shape=shape,
                        overwrite=args.overwrite,
                        meta={**meta, "checkpoint": str(args.checkpoint)})
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote {folder / core.MODEL_FILES[args.format]} and {core.META_FILE} "
          f"({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s", flush=True)
    print(compilation_cache.report(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run_cli(lambda: run(args), "nothing was written; run the command again")


if __name__ == "__main__":
    sys.exit(main())
