"""PyTorch state dicts into abstract NNX modules (and back out as ``.npz``), checked key by key.

The FID Inception and the LPIPS networks are built from ``nnx.Conv`` / ``nnx.BatchNorm`` whose
attribute paths spell the torch module names, so most of the mapping is mechanical: a conv at
path ``a.b`` reads ``a.b.weight`` (OIHW, transposed to HWIO) and ``a.b.bias``; a BatchNorm reads
``weight``, ``bias``, ``running_mean``, ``running_var`` (``conv_norm_targets``). ISNet's own
``models.Conv`` (the generator, discriminator and VGG19) is named pair by pair by the module
that owns the network, and mapped here (``conv_targets``): ``weight`` or, under
spectral norm, ``weight_orig``, ``weight_u``, ``weight_v``, and ``bias``. A key the file has and
we lack, or the reverse, or a shape that differs, is an error naming the file, never a silent
skip.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import atomic, errors
from isnet_jax.torch_io.pth import PthError, load_pth

# (torch key -> (our variable, the shape torch stores it in, torch array -> ours))
Targets = dict[str, tuple[nnx.Variable, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]]
# (torch module name, our conv): a ``models.Conv``, read by attribute (kernel, bias, u, v,
# spectral_norm) so that this module needs nothing from ``models``
ConvPairs = Sequence[tuple[str, Any]]

# Which released file a state dict is, from keys and shapes: to tell a user who passed the
# wrong file which one it is.
_ALEX_CONV0 = (64, 3, 11, 11)
_VGG_CONV0 = (64, 3, 3, 3)


def describe(sd: Mapping[str, Any]) -> str | None:
    """A name for the released weights file ``sd`` looks like, or None."""
    keys = set(sd)

    def shape(key: str) -> tuple[int, ...] | None:
        value = sd.get(key)
        return tuple(value.shape) if isinstance(value, np.ndarray) else None

    if "Mixed_7c.branch_pool.conv.weight" in keys:
        if any(k.startswith("AuxLogits.") for k in keys) or shape("fc.weight") == (1000, 2048):
            return "torchvision's ImageNet Inception v3 (inception_v3_google-*.pth)"
        return "pytorch-fid's FID Inception (pt_inception-2015-12-05-6726825d.pth)"
    if "lin0.model.1.weight" in keys:
        net = {192: "alex", 128: "vgg"}.get((shape("lin1.model.1.weight") or (0, 0))[1])
        if "lin5.model.1.weight" in keys:
            net = "squeeze"
        return f"lpips' linear layers for {net!r} (weights/v0.1/{net}.pth)" if net else None
    for prefix in ("features.", ""):
        first = shape(f"{prefix}0.weight")
        if first == _ALEX_CONV0:
            return "torchvision's AlexNet (alexnet-owt-7be5be79.pth)"
        if first == _VGG_CONV0:
            convs = sum(1 for k in keys if k.startswith(prefix) and k.endswith(".weight")
                        and len(np.shape(sd[k])) == 4)
            if convs == 13:
                return "torchvision's VGG16 (vgg16-397923af.pth)"
            if convs == 16:
                return "torchvision's VGG19 (vgg19-dcbb9e9d.pth)"
    if any(k.startswith(("layer1.", "stage0.", "generator")) for k in keys):
        return "the ISNet release's generator (InpaintingModel_gen.pth)"
    if "discriminator" in keys or "conv1.0.weight_orig" in keys:
        return "the ISNet release's discriminator (InpaintingModel_dis.pth)"
    return None


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` state dict in a ``.pth`` file, or ``PthError`` naming it."""
    path = pathlib.Path(path)
    if not path.exists():
        raise errors.MissingFileError(f"{what}: {path} does not exist; check the path")
    obj = load_pth(path)
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    ):
        hint = mismatch_hint(obj, what) if isinstance(obj, dict) else ""
        raise PthError(f"{path} holds no state dict of tensors (expected {what}){hint}")
    return obj


def conv_norm_targets(module: nnx.Module, torch_name: Callable[[tuple], str]) -> Targets:
    """Targets of every ``nnx.Conv`` and ``nnx.BatchNorm`` in ``module``.

    ``torch_name`` maps a submodule's path (a tuple of attribute names and list indices) to its
    torch module name.
    """
    same = np.asarray
    targets: Targets = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Conv):
            prefix = torch_name(path)
            kernel = node.kernel
            h, w, i, o = kernel.get_value().shape
            targets[f"{prefix}.weight"] = (kernel, (o, i, h, w), oihw_to_hwio)
            if node.bias is not None:
                targets[f"{prefix}.bias"] = (node.bias, (o,), same)
        elif isinstance(node, nnx.BatchNorm):
            prefix = torch_name(path)
            n = node.num_features
            for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                                 ("var", "running_var")):
                targets[f"{prefix}.{theirs}"] = (getattr(node, ours), (n,), same)
    return targets


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """A torch conv kernel (out, in, h, w) as ours (h, w, in, out)."""
    return w.transpose(2, 3, 1, 0)


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """Our conv kernel (h, w, in, out) as torch stores it (out, in, h, w)."""
    return w.transpose(3, 2, 0, 1)


def conv_targets(module: nnx.Module, pairs: ConvPairs) -> Targets:
    """Targets of ISNet's ``models.Conv`` s, each under its torch module name; ``pairs`` must
    name every conv of ``module`` (every node of the pairs' conv class)."""
    kinds = {type(conv) for _, conv in pairs}
    every_conv = {id(m) for _, m in nnx.iter_graph(module) if type(m) in kinds}
    assert every_conv == {id(conv) for _, conv in pairs}, "a conv has no torch name"
    same = np.asarray
    targets: Targets = {}
    for prefix, conv in pairs:
        h, w, i, o = conv.kernel.get_value().shape
        entries = {"weight_orig" if conv.spectral_norm else "weight": (
            conv.kernel, (o, i, h, w), oihw_to_hwio)}
        if conv.spectral_norm:
            entries["weight_u"] = (conv.u, tuple(conv.u.get_value().shape), same)
            entries["weight_v"] = (conv.v, tuple(conv.v.get_value().shape), same)
        if conv.bias is not None:
            entries["bias"] = (conv.bias, tuple(conv.bias.get_value().shape), same)
        for name, entry in entries.items():
            key = f"{prefix}.{name}"
            assert key not in targets, f"two of our convs map to {key}"
            targets[key] = entry
    return targets


def _few(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} ({len(keys)} in all)" if len(keys) > n else shown


def mismatch_hint(sd: Mapping[str, Any], expected: str) -> str:
    """``; this looks like X`` when ``sd`` is recognisably another released file."""
    found = describe(sd)
    return f"; this looks like {found}" if found and found != expected else ""


def fill(
    module: nnx.Module,
    targets: Targets,
    sd: Mapping[str, np.ndarray],
    path: pathlib.Path,
    what: str,
    ignored: Callable[[str], bool] = lambda key: False,
    hint: str | None = None,
) -> None:
    """Copies ``sd`` into the abstract ``module``: every target filled once, every shape checked,
    every key of ``sd`` used or ``ignored``. ``hint`` ends the error messages (default: what
    ``sd`` looks like instead, when it is another known file)."""
    missing = [k for k in targets if k not in sd]
    unexpected = [k for k in sd if k not in targets and not ignored(k)]
    hint = mismatch_hint(sd, what) if hint is None else hint
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected {_few(unexpected)}")
        raise PthError(f"{path} is not {what}: {'; '.join(problems)}{hint}")
    wrong = [
        f"{k} is {tuple(sd[k].shape)}, expected {shape}"
        for k, (_, shape, _) in targets.items()
        if tuple(sd[k].shape) != shape
    ]
    if wrong:
        raise PthError(f"{path} does not fit {what}: {_few(wrong, 3)}{hint}")
    for key, (variable, _, to_ours) in targets.items():
        value = np.asarray(to_ours(sd[key]))
        if not np.issubdtype(value.dtype, np.floating):
            raise PthError(f"{path}: {key} holds {value.dtype} values, expected floats")
        if not np.all(np.isfinite(value)):
            raise PthError(f"{path}: {key} holds NaN or infinite values; the file is corrupt")
        variable.set_value(jnp.asarray(value, jnp.float32))  # parameters stay float32
    _check_filled(module, what)


def _check_filled(module: nnx.Module, what: str) -> None:
    leaves = jax.tree.leaves(nnx.state(module))
    unfilled = [x for x in leaves if isinstance(x, jax.ShapeDtypeStruct)]
    assert not unfilled, f"{len(unfilled)} variables of {what} were not filled"


def _variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    return {
        "/".join(str(p) for p in path): node
        for path, node in nnx.iter_graph(module)
        if isinstance(node, nnx.Variable)
    }


def weights_file(path: str | os.PathLike, npz_name: str, missing: str) -> pathlib.Path:
    """``path`` itself, or ``path/npz_name`` when it is a folder (what ``convert`` writes);
    ``errors.MissingFileError`` saying ``missing`` (how to make the file; ``{path}`` in it
    becomes the path) when there is none."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / npz_name
    if not path.exists():
        raise errors.MissingFileError(missing.format(path=path))
    return path


def is_npz(path: pathlib.Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(".npy") for n in archive.namelist())


def save_npz(
    module: nnx.Module, path: str | os.PathLike, format_tag: str,
    variables: dict[str, nnx.Variable] | None = None,
) -> pathlib.Path:
    """Every variable of ``module`` under its attribute path (or under the names of
    ``variables``), plus a ``format`` tag."""
    path = pathlib.Path(path)
    arrays = {"format": np.array(format_tag)}
    for name, variable in (variables or _variables(module)).items():
        arrays[name] = np.asarray(variable.get_value(), np.float32)
    # A file object, not the path: np.savez would append ".npz" to a name without it.
    with atomic.written(path) as partial, open(partial, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_npz(
    module: nnx.Module, path: pathlib.Path, format_tag: str, remedy: str,
    variables: dict[str, nnx.Variable] | None = None,
) -> None:
    """Fills the abstract ``module`` from ``save_npz``'s file (written with the same
    ``variables`` names); ``remedy`` says how to remake it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "format" not in npz.files or str(npz["format"]) != format_tag:
                raise PthError(f"{path} is not a file of {format_tag!r}; {remedy}")
            for name, variable in (variables or _variables(module)).items():
                if name not in npz.files:
                    raise PthError(f"{path} lacks {name}; {remedy}")
                value, want = npz[name], variable.get_value()
                if value.shape != want.shape:
                    raise PthError(
                        f"{path}: {name} is {value.shape}, expected {want.shape}; {remedy}"
                    )
                variable.set_value(jnp.asarray(value, jnp.float32))
    except PthError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PthError(f"{path} is not a readable .npz file ({e}); {remedy}") from None
    _check_filled(module, format_tag)
