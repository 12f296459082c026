"""Converts the official release's PyTorch checkpoints and torchvision's VGG19 to isnet_jax.

    python -m isnet_jax.convert --generator InpaintingModel_gen.pth \\
        [--discriminator InpaintingModel_dis.pth] [--vgg19 vgg19-dcbb9e9d.pth] \\
        --output DIR [--overwrite]

writes an Orbax checkpoint that ``isnet_jax.checkpoint.restore_generator(DIR)`` (and so
evaluation, inference and fine-tuning) reads, and the VGG19 loss network as ``DIR/vgg19.npz``
(what ``config.loss.vgg_weights`` points to). ``--inception pt_inception-2015-12-05-6726825d.pth``
writes pytorch-fid's FID Inception as ``DIR/inception_fid.npz`` (what ``config.eval.fid_weights``
may name, as may the ``.pth`` itself). Every input is read and checked before anything
is written. No PyTorch is needed: ``isnet_jax.torch_io.pth`` reads the files.

The other way, ``python -m isnet_jax.convert --checkpoint WORKDIR [--step N] --output DIR``
writes a training run's (or a converted folder's) generator and discriminator as the release's
``InpaintingModel_gen.pth`` / ``InpaintingModel_dis.pth`` (``export_official``): its keys, OIHW
layouts and spectral-norm vectors, loadable by the release's own ``load_state_dict``.

The torch -> JAX mapping is spelled out module by module below (``_generator_convs`` ...) so
that a key the release has and we lack, or the reverse, is an error and never a silent skip.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import atomic, checkpoint, cli, errors
from isnet_jax.evaluators import fid
from isnet_jax.models import WIDTH, Conv, Discriminator, Generator, count_params
from isnet_jax.models.vgg import VGG_FILE, load_torchvision_vgg19, load_vgg19, save_vgg19
from isnet_jax.torch_io import torch_weights
from isnet_jax.torch_io.pth import PthError, load_pth, save_pth

__all__ = [
    "PthError",
    "convert",
    "export_official",
    "official_state_dict",
    "load_official_discriminator",
    "load_official_generator",
    "load_torchvision_vgg19",
    "load_vgg19",
    "main",
    "save_vgg19",
]

# How each kind of file announces itself, to say which flag a misplaced file belongs to.
_KINDS = {
    "generator": ("the release's generator (InpaintingModel_gen.pth)", "--generator"),
    "discriminator": ("the release's discriminator (InpaintingModel_dis.pth)", "--discriminator"),
    "vgg19": ("torchvision's VGG19", "--vgg19"),
}


def _guess_kind(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    for wrapper in ("generator", "discriminator"):
        if isinstance(obj.get(wrapper), dict):
            return wrapper
    keys = set(obj)
    if any(k.startswith(("layer1.", "stage0.", "final_layer.")) for k in keys):
        return "generator"
    if "conv1.0.weight_orig" in keys or "conv5.0.weight_orig" in keys:
        return "discriminator"
    if "0.weight" in keys or "features.0.weight" in keys:
        return "vgg19"
    return None


def _wrong_kind_hint(obj: Any, wanted: str) -> str:
    kind = _guess_kind(obj)
    if kind is None or kind == wanted:
        return ""
    what, flag = _KINDS[kind]
    return f"; this looks like {what}: pass it with {flag}"


def _state_dict(obj: Any, path: pathlib.Path, wanted: str) -> dict[str, np.ndarray]:
    """The state dict inside a release checkpoint (``{wanted: sd, ...}``) or a bare one."""
    kind = _guess_kind(obj)
    if kind is not None and kind != wanted:
        what, flag = _KINDS[kind]
        raise PthError(
            f"{path} is not {_KINDS[wanted][0]}: it looks like {what}; pass it with {flag}"
        )
    sd = obj.get(wanted) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        sd = obj
    if not isinstance(sd, dict) or not sd or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items()
    ):
        raise PthError(
            f"{path} holds no state dict of tensors (expected {_KINDS[wanted][0]})"
            + _wrong_kind_hint(obj, wanted)
        )
    return sd


# ---------------------------------------------------------------------------------------------
# Which torch module fills which of our convs.


def _generator_convs(g: Generator) -> list[tuple[str, Conv]]:
    pairs = [
        ("layer1.downsample", g.stem.shortcut),
        ("layer1.conv_block.1", g.stem.conv1),
        ("layer1.conv_block.4", g.stem.conv2),
    ]
    for k, stage in enumerate(g.stages):
        p = f"stage{k}"
        branches = [stage.blocks0] + ([stage.blocks1] if k > 0 else [])
        for b, blocks in enumerate(branches):
            for j, block in enumerate(blocks.layers):
                pairs.append((f"{p}.branches.{b}.{j}.conv_block.1", block.conv1))
                pairs.append((f"{p}.branches.{b}.{j}.conv_block.4", block.conv2))
        if k > 0:
            for s, up in enumerate(stage.up1.layers):
                pairs.append((f"{p}.fuse_layers.0.1.{s}.0", up.conv))
        for s, down in enumerate(stage.down0.layers):
            pairs.append((f"{p}.fuse_layers.1.0.{s}.0", down.conv))
        if k > 0:
            pairs.append((f"{p}.fuse_layers.1.1.0", stage.down1.conv))
        pairs.append((f"{p}.fused_branches.0.0.0", stage.reduce0.conv))
        pairs.append((f"{p}.fused_branches.1.0.0", stage.reduce1.conv))
    for s, up in enumerate(g.up.layers):
        pairs.append((f"up_layer.{s}.0", up.conv))
    pairs.append(("final_layer.0", g.final1))
    pairs.append(("final_layer.2", g.final2))
    return pairs


def _discriminator_convs(d: Discriminator) -> list[tuple[str, Conv]]:
    return [(f"conv{i + 1}.0", conv) for i, conv in enumerate(d.convs)]


def _fill(
    module: nnx.Module,
    pairs: list[tuple[str, Conv]],
    sd: dict[str, np.ndarray],
    path: pathlib.Path,
    what: str,
    wanted: str,
    ignored: Callable[[str], bool] = lambda key: False,
) -> None:
    """Copies ``sd`` into the abstract ``module``: every key used once, every shape checked."""
    torch_weights.fill(module, torch_weights.conv_targets(module, pairs), sd, path, what,
                       ignored, hint=_wrong_kind_hint(sd, wanted))


# ---------------------------------------------------------------------------------------------
# Loaders


def _read_generator(
    path: str | os.PathLike, dtype: jnp.dtype = jnp.float32
) -> tuple[Generator, int]:
    path = pathlib.Path(path)
    obj = load_pth(path)
    sd = _state_dict(obj, path, "generator")
    found = {int(m.group(1)) for k in sd if (m := re.match(r"stage0\.branches\.0\.(\d+)\.", k))}
    blocks = len(found)
    if not 1 <= blocks <= 4 or found != set(range(blocks)):
        raise PthError(
            f"{path} is not an ISNet generator checkpoint: it has residual blocks "
            f"{sorted(found) or 'none'} under stage0.branches.0, expected 0..B-1 with B in 1..4"
            + _wrong_kind_hint(obj, "generator")
        )
    # Built abstractly: random initialisation of ~20M parameters would be thrown away anyway.
    g = nnx.eval_shape(lambda: Generator(blocks, dtype=dtype, rngs=nnx.Rngs(0)))
    _fill(g, _generator_convs(g), sd, path, f"the ISNet generator (blocks={blocks})", "generator")
    epoch = obj.get("epoch", 0) if isinstance(obj, dict) and "generator" in obj else 0
    return g, epoch if isinstance(epoch, int) and epoch >= 0 else 0


def load_official_generator(
    path: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32
) -> Generator:
    """Loads the release's ``InpaintingModel_gen.pth`` (or a bare state dict) into ``Generator``.

    ``blocks`` is inferred from the file. Kernels, biases and the spectral-norm ``u``, ``v``
    are all loaded, so eval mode reproduces the release exactly. ``dtype`` is the compute dtype.
    Raises ``PthError`` naming the file for anything that is not such a checkpoint.
    """
    return _read_generator(path, dtype)[0]


def load_official_discriminator(
    path: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32
) -> Discriminator:
    """Loads the release's ``InpaintingModel_dis.pth`` (or a bare state dict).

    The release registers ``conv1`` twice (also as ``features.0``); the alias must equal
    ``conv1.0`` and is otherwise ignored.
    """
    path = pathlib.Path(path)
    obj = load_pth(path)
    sd = _state_dict(obj, path, "discriminator")
    for name in ("weight_orig", "weight_u", "weight_v"):
        alias, key = f"features.0.{name}", f"conv1.0.{name}"
        if alias in sd and key in sd and not np.array_equal(sd[alias], sd[key]):
            raise PthError(
                f"{path}: {alias} differs from {key}; in the release they are one module, so "
                "the file was edited or is corrupt"
            )
    d = nnx.eval_shape(lambda: Discriminator(dtype=dtype, rngs=nnx.Rngs(0)))
    _fill(d, _discriminator_convs(d), sd, path, "the PatchGAN discriminator", "discriminator",
          ignored=lambda k: k.startswith("features.0."))
    return d


# ---------------------------------------------------------------------------------------------
# Export: back to the release's format


GEN_FILE = "InpaintingModel_gen.pth"
DIS_FILE = "InpaintingModel_dis.pth"


def official_state_dict(module: nnx.Module) -> collections.OrderedDict[str, np.ndarray]:
    """A generator or discriminator as the release's state dict: its keys, OIHW kernels, u, v.

    The discriminator's ``conv1`` is also listed as ``features.0`` (one module under two names
    in the release, whose strict ``load_state_dict`` wants both).
    """
    if isinstance(module, Generator):
        pairs = _generator_convs(module)
    elif isinstance(module, Discriminator):
        pairs = _discriminator_convs(module)
    else:
        raise TypeError(
            f"the release's format holds the ISNet generator and the discriminator, not a "
            f"{type(module).__name__}"
        )
    sd = collections.OrderedDict()
    for key, (variable, shape, _) in torch_weights.conv_targets(module, pairs).items():
        value = np.asarray(jax.device_get(variable.get_value()), np.float32)
        sd[key] = torch_weights.hwio_to_oihw(value) if value.ndim == 4 else value
        assert sd[key].shape == shape, (key, sd[key].shape, shape)
    if isinstance(module, Discriminator):
        for name in ("weight_orig", "weight_u", "weight_v"):
            sd[f"features.0.{name}"] = sd[f"conv1.0.{name}"]  # the same array: one storage
    return sd


def export_official(
    generator: nnx.Module,
    discriminator: nnx.Module | None,
    out_dir: str | os.PathLike,
    *,
    epoch: int = 0,
) -> list[pathlib.Path]:
    """Writes ``InpaintingModel_gen.pth`` (and ``InpaintingModel_dis.pth``) in the release's
    format: ``{'generator': state_dict, 'epoch': epoch}`` and ``{'discriminator': state_dict}``,
    loadable by the release's own ``load_state_dict`` (and by ``load_official_*`` here).

    Returns the paths written. Files are written beside their target and renamed, so an
    interrupted export leaves no half file.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [(GEN_FILE, {"generator": official_state_dict(generator), "epoch": int(epoch)})]
    if discriminator is not None:
        items.append((DIS_FILE, {"discriminator": official_state_dict(discriminator)}))
    written = []
    for name, obj in items:
        with atomic.written(out_dir / name) as partial:
            save_pth(obj, partial)
        written.append(out_dir / name)
    return written


def export_official_checkpoint(
    path: str | os.PathLike, output: str | os.PathLike, *, step: int | None = None,
    overwrite: bool = False,
) -> list[str]:
    """``--checkpoint PATH [--step N]``: a training run's (or converted folder's) G and D (the
    latest step unless ``step``) -> the release's .pth files."""
    g, d, meta = checkpoint.restore_models(path, step)
    if meta["generator"] != "isnet":
        raise errors.ConfigError(
            f"{path} holds the {meta['generator']!r} generator; the release's format exists only "
            "for ISNet (model.generator='isnet')"
        )
    width = checkpoint.saved_model(meta)[2]
    if width != WIDTH:
        raise errors.ConfigError(
            f"{path} holds an ISNet of width {width}; the release's code builds width "
            f"{WIDTH} only, so its .pth format cannot hold this one (train with "
            f"model.width={WIDTH} to export to it)")
    output = pathlib.Path(output)
    for name in (GEN_FILE, DIS_FILE):
        if (output / name).exists() and not overwrite:
            raise errors.OutputExistsError(
                f"{output / name} exists; pass --overwrite to replace it, or choose a new folder"
            )
    files = export_official(g, d, output, epoch=meta["step"])
    lines = [f"generator: ISNet, blocks={g.blocks}, step {meta['step']} -> {files[0]}"]
    if d is not None:
        lines.append(f"discriminator -> {files[1]}")
    else:
        lines.append(f"discriminator: none in {path} (converted without --discriminator)")
    return lines


# ---------------------------------------------------------------------------------------------
# Command line


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise errors.OutputExistsError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise errors.OutputExistsError(
            f"--output {output} is not empty; pass --overwrite to replace the checkpoint and "
            f"{VGG_FILE} in it, or choose a new folder"
        )


def convert(
    output: str | os.PathLike,
    *,
    generator: str | os.PathLike | None = None,
    discriminator: str | os.PathLike | None = None,
    vgg19: str | os.PathLike | None = None,
    overwrite: bool = False,
    inception: str | os.PathLike | None = None,
) -> list[str]:
    """Converts the given files into ``output``; returns one line per thing written.

    All inputs are read and checked first: on an ``errors.UserError`` (``PthError``,
    ``MissingFileError``, ``OutputExistsError``, ``ConfigError``) nothing has been written.
    ``overwrite`` replaces only what this call writes (the checkpoint steps with ``generator``,
    ``vgg19.npz`` with ``vgg19``, ``inception_fid.npz`` with ``inception``).
    """
    if generator is None and vgg19 is None and inception is None:
        raise errors.ConfigError(
            "nothing to convert: give a generator, a VGG19 and/or an Inception file")
    if discriminator is not None and generator is None:
        raise errors.ConfigError(
            "a discriminator is stored beside its generator: give the generator too")
    output = pathlib.Path(output)
    _check_output(output, overwrite)
    for kind, given in (("generator", generator), ("discriminator", discriminator),
                        ("vgg19", vgg19)):
        if given is not None and not pathlib.Path(given).is_file():
            raise errors.MissingFileError(
                f"{_KINDS[kind][1]} {given}: no such file; check the path")
    if inception is not None and not pathlib.Path(inception).is_file():
        raise errors.MissingFileError(f"--inception {inception}: no such file; check the path")

    g = d = vgg = None
    if generator is not None:
        g, epoch = _read_generator(generator)
    if discriminator is not None:
        d = load_official_discriminator(discriminator)
    if vgg19 is not None:
        vgg = load_torchvision_vgg19(vgg19)
    fid_net = fid.InceptionV3.from_weights(inception) if inception is not None else None

    created = not output.exists()
    lines = []
    try:
        output.mkdir(parents=True, exist_ok=True)
        if g is not None:
            if overwrite:  # an older step would otherwise be what restore picks
                for entry in output.iterdir():
                    if entry.is_dir() and entry.name.isdigit():
                        shutil.rmtree(entry)
            meta = checkpoint.generator_meta(
                "isnet", g.blocks, source=f"official release: {pathlib.Path(generator).name}"
            )
            step_dir = checkpoint.write_models(output, epoch, meta, g, d)
            lines.append(
                f"generator: ISNet, blocks={g.blocks}, {count_params(g):,} parameters, "
                f"epoch {epoch} -> {step_dir}"
            )
            if d is not None:
                lines.append(f"discriminator: {count_params(d):,} parameters -> {step_dir}")
        if vgg is not None:
            npz = save_vgg19(vgg, output / VGG_FILE)
            lines.append(f"vgg19: {count_params(vgg):,} parameters -> {npz}")
        if fid_net is not None:
            npz = fid_net.save(output / fid.NPZ_FILE)
            lines.append(f"inception (FID): {count_params(fid_net):,} parameters -> {npz}")
    except BaseException:
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise
    return lines


def _export_flag(value: str) -> dict[str, Any]:
    """The old ``--export WORKDIR[@STEP]``, as ``--checkpoint`` and ``--step``."""
    path, step = checkpoint.split_step(value)
    return {"checkpoint": str(path)} if step is None else {"checkpoint": str(path), "step": step}


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.convert",
        description="Convert the official ISNet release's PyTorch checkpoints (and torchvision's "
        "VGG19) to an isnet_jax checkpoint folder. PyTorch is not needed.",
    )
    cli.add_checkpoint_arguments(
        parser, required=False,
        help="the other way: write this training run's (or converted folder's) generator and "
        "discriminator as the release's InpaintingModel_gen.pth / InpaintingModel_dis.pth",
    )
    parser.add_argument("--generator", help="the release's InpaintingModel_gen.pth")
    parser.add_argument("--discriminator", help="the release's InpaintingModel_dis.pth")
    parser.add_argument("--vgg19", help="torchvision's vgg19-dcbb9e9d.pth (or its features)")
    parser.add_argument("--inception",
                        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (FID network)")
    parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint / vgg19.npz already in --output")
    parser.add_deprecated_alias("--export", "--checkpoint", translate=_export_flag,
                                use="--checkpoint PATH --step N")
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        if args.generator or args.discriminator or args.vgg19 or args.inception:
            parser.error("--checkpoint writes .pth files; it takes no --generator/"
                         "--discriminator/--vgg19/--inception (convert those in a separate call)")
    elif args.step is not None:
        parser.error("--step chooses the step of --checkpoint: give --checkpoint too")
    elif args.generator is None and args.vgg19 is None and args.inception is None:
        parser.error("give --generator, --vgg19 and/or --inception (or --checkpoint)")
    elif args.discriminator is not None and args.generator is None:
        parser.error("--discriminator is stored beside its generator: give --generator too")

    def body() -> int:
        if args.checkpoint is not None:
            lines = export_official_checkpoint(args.checkpoint, args.output, step=args.step,
                                               overwrite=args.overwrite)
        else:
            lines = convert(args.output, generator=args.generator,
                            discriminator=args.discriminator, vgg19=args.vgg19,
                            overwrite=args.overwrite, inception=args.inception)
        print("\n".join(lines))
        return 0

    # Files are written beside their target and renamed, and a new --output is removed on
    # failure, so an interrupted run leaves no half-written file.
    return cli.run_cli(body, "no half-written file is left; run the command again (with "
                          "--overwrite if --output already held files)")


if __name__ == "__main__":
    sys.exit(main())
