"""``python -m isnet_jax.export``: write a checkpoint's generator as a deployable model.

    python -m isnet_jax.export --checkpoint CKPT --format stablehlo|savedmodel|tflite|onnx \\
        --output DIR [--batch N] [--height H] [--width W] [--step S] [--overwrite]

See ``isnet_jax.export`` for what the exported function computes and README's "Deploy" for
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
from isnet_jax import export as lib


def parse_args(argv: Sequence[str] | None = None):
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.export",
        description="Export a generator checkpoint's inpainting step (image, mask -> "
        "composite) as StableHLO, a TF SavedModel, TFLite or ONNX.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir, its checkpoints/ folder, or a converted folder")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step to export (default: the latest)")
    parser.add_argument("--format", required=True, choices=lib.FORMATS,
                        help="what to write: stablehlo (jax.export), savedmodel (TF Serving), "
                        "tflite (fixed shape), onnx (onnxruntime)")
    parser.add_argument("--output", required=True, type=pathlib.Path,
                        help="folder to create for the exported model and export.json")
    parser.add_argument("--batch", type=int, default=None,
                        help="fix the batch size (default: dynamic; tflite: "
                        f"{lib.FIXED_DEFAULT.batch})")
    parser.add_argument("--height", type=int, default=None,
                        help=f"fix the height, a multiple of {lib.MULTIPLE} (default: dynamic; "
                        f"tflite: {lib.FIXED_DEFAULT.height})")
    parser.add_argument("--width", type=int, default=None,
                        help=f"fix the width, a multiple of {lib.MULTIPLE} (default: dynamic; "
                        f"tflite: {lib.FIXED_DEFAULT.width})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output folder")
    cli.add_compilation_cache_argument(parser)
    return parser.parse_args(argv)


def run(args) -> int:
    shape = lib.shape_for(args.format, lib.Shape(args.batch, args.height, args.width))
    lib.check_output(args.output, args.overwrite)
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
    folder = lib.export(generator, args.format, args.output, shape=shape,
                        overwrite=args.overwrite,
                        meta={**meta, "checkpoint": str(args.checkpoint)})
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote {folder / lib.MODEL_FILES[args.format]} and {lib.META_FILE} "
          f"({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s", flush=True)
    print(compilation_cache.report(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run_cli(lambda: run(args), "nothing was written; run the command again")


if __name__ == "__main__":
    sys.exit(main())
