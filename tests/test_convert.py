"""The torch-free .pth reader, the release -> isnet_jax conversion and its command line.

Synthetic .pth files are written in the real torch.save layout (``torch_io.pth.save_pth``, itself
checked against the golden files, which are real torch output) or byte by byte where a test needs
a pickle no honest writer produces.
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from flax import nnx
from helpers.paths import RELEASE_GENERATOR_KEYS, data_file

from isnet_jax import checkpoint, cli, convert, errors
from isnet_jax.models import count_params
from isnet_jax.torch_io import pth

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = pathlib.Path("/tmp/pwned_marker_xyz")


# ---------------------------------------------------------------------------------------------
# Helpers: torch.save's zip layout from raw parts.


def torch_zip(path: pathlib.Path, data_pkl: bytes, storages: dict[str, bytes] | None = None):
    """A zip laid out as torch.save lays it out, around a given data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return path


def pickle_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def pickle_ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def tensor_ops(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    """Protocol-2 opcodes of one tensor as torch pickles it (``_rebuild_tensor_v2``)."""
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n(("
        + pickle_str("storage") + f"ctorch\n{storage}\n".encode() + pickle_str(key)
        + pickle_str("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"
        + b"J" + struct.pack("<i", offset) + pickle_ints(size) + pickle_ints(stride)
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )


def state_dict_pickle(entries: dict[str, bytes]) -> bytes:
    return b"\x80\x02}(" + b"".join(pickle_str(k) + v for k, v in entries.items()) + b"u."


def local_data_offsets(path: pathlib.Path) -> dict[str, int]:
    """Where each record's bytes start (from its local header, which holds torch's padding)."""
    offsets = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
            offsets[info.filename.split("/", 1)[1]] = info.header_offset + 30 + name_len + extra_len
    return offsets


def pickle_globals(data: bytes) -> set[str]:
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


class Hostile:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def gen_pth(golden_dir) -> pathlib.Path:
    return golden_dir / "InpaintingModel_gen.pth"


@pytest.fixture(scope="module")
def dis_pth(golden_dir) -> pathlib.Path:
    return golden_dir / "InpaintingModel_dis.pth"


@pytest.fixture(scope="module")
def gen_checkpoint(gen_pth) -> dict:
    return pth.load_pth(gen_pth)


@pytest.fixture(scope="module")
def dis_state_dict(dis_pth) -> dict[str, np.ndarray]:
    return pth.load_pth(dis_pth)["discriminator"]


@pytest.fixture(autouse=True, scope="module")
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a hostile pickle ran a command"


# ---------------------------------------------------------------------------------------------
# The reader


def test_reader_matches_the_reference_key_listing(gen_checkpoint):
    assert set(gen_checkpoint) == {"generator", "epoch"}
    assert isinstance(gen_checkpoint["epoch"], int)
    sd = gen_checkpoint["generator"]
    expected = {}
    for line in data_file(RELEASE_GENERATOR_KEYS).read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        block = key.split(".")[3] if ".branches." in key else "0"
        if int(block) < 2:  # the listing is for blocks=4; the golden model has 2
            expected[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    assert {k: v.shape for k, v in sd.items()} == expected
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in sd.values())


def test_reader_resolves_aliased_storages(dis_state_dict):
    # features.0 and conv1.0 are one module in the release, pickled as one storage.
    for name in ("weight_orig", "weight_u", "weight_v"):
        assert dis_state_dict[f"features.0.{name}"] is dis_state_dict[f"conv1.0.{name}"]
    assert len({id(v) for v in dis_state_dict.values()}) == 15


def test_writer_produces_torchs_layout(tmp_path, dis_pth, dis_state_dict):
    ours = tmp_path / "InpaintingModel_dis.pth"
    pth.save_pth({"discriminator": collections.OrderedDict(dis_state_dict)}, ours)
    golden_offsets, our_offsets = local_data_offsets(dis_pth), local_data_offsets(ours)
    assert set(our_offsets) == set(golden_offsets)
    for offsets in (golden_offsets, our_offsets):  # torch aligns every record to 64 bytes
        assert all(offset % 64 == 0 for offset in offsets.values()), offsets
    with zipfile.ZipFile(dis_pth) as g, zipfile.ZipFile(ours) as o:
        prefix = "InpaintingModel_dis/"
        for record in ("byteorder", "version", ".format_version", ".storage_alignment"):
            assert o.read(prefix + record) == g.read(prefix + record)
        assert pickle_globals(o.read(prefix + "data.pkl")) == pickle_globals(
            g.read(prefix + "data.pkl")
        ) == {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    back = pth.load_pth(ours)["discriminator"]
    assert list(back) == list(dis_state_dict)
    for key, value in dis_state_dict.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)


def test_writer_round_trips_dtypes_and_containers(tmp_path):
    obj = {
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "long": np.array([-(2**40), 3], np.int64),
        "bool": np.array([True, False]),
        "scalar": np.float32(2.5),
        "nested": {"list": [1, -70000, 2**40, 0.5, "x", None, True], "tuple": (1, 2, 3, 4)},
    }
    pth.save_pth(obj, tmp_path / "x.pth")
    back = pth.load_pth(tmp_path / "x.pth")
    for key in ("half", "long", "bool", "scalar"):
        assert back[key].dtype == np.asarray(obj[key]).dtype
        np.testing.assert_array_equal(back[key], obj[key])
    assert back["nested"] == obj["nested"]


def test_reader_follows_offsets_and_strides(tmp_path):
    storage = np.arange(12, dtype=np.float16)
    data = state_dict_pickle({
        # A transposed view starting at element 2, and a second tensor on the same storage.
        "t": tensor_ops("0", "HalfStorage", 12, 2, (3, 2), (1, 3)),
        "flat": tensor_ops("0", "HalfStorage", 12, 0, (12,), (1,)),
    })
    sd = pth.load_pth(torch_zip(tmp_path / "s.pth", data, {"0": storage.tobytes()}))
    np.testing.assert_array_equal(sd["t"], storage[2:8].reshape(2, 3).T)
    assert sd["t"].dtype == np.float16 and sd["t"].flags.c_contiguous
    np.testing.assert_array_equal(sd["flat"], storage)


def test_reader_refuses_a_view_outside_its_storage(tmp_path):
    data = state_dict_pickle({"t": tensor_ops("0", "FloatStorage", 4, 2, (4,), (1,))})
    path = torch_zip(tmp_path / "oob.pth", data, {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(pth.PthError, match="reaches element 5 of a storage of 4"):
        pth.load_pth(path)


@pytest.mark.parametrize("func, name", [(os.system, "system"), (eval, "eval")])
def test_reader_refuses_hostile_pickles(tmp_path, func, name):
    evil = {"conv.weight": Hostile(func, f"open('{MARKER}', 'w')" if func is eval
                                   else f"touch {MARKER}")}
    path = torch_zip(tmp_path / "evil.pth", pickle.dumps(evil, protocol=2))
    with pytest.raises(pth.PthError) as e:
        pth.load_pth(path)
    message = str(e.value)
    assert f"refusing to load {path}" in message and name in message
    assert "nothing was executed" in message
    assert not MARKER.exists()


def test_reader_names_a_broken_legacy_file(tmp_path):
    # The pre-1.6 format is read (evaluators/test_fid_lpips.py checks it against torch's own files);
    # one that breaks off after its magic number is reported as corrupt, not sent to torch.
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest of an old file")
    with pytest.raises(pth.PthError, match=rf"{re.escape(str(path))} is corrupt or truncated"):
        pth.load_pth(path)


def test_reader_missing_file_and_folder(tmp_path):
    with pytest.raises(errors.MissingFileError, match="absent.pth does not exist"):
        pth.load_pth(tmp_path / "absent.pth")
    with pytest.raises(pth.PthError, match="is a folder"):
        pth.load_pth(tmp_path)


# ---------------------------------------------------------------------------------------------
# Conversion checks (the discriminator: small enough to edit)


def test_discriminator_accepts_a_bare_state_dict(tmp_path, dis_state_dict):
    sd = {k: v for k, v in dis_state_dict.items() if not k.startswith("features.")}
    pth.save_pth(collections.OrderedDict(sd), tmp_path / "bare.pth")
    d = convert.load_official_discriminator(tmp_path / "bare.pth")
    np.testing.assert_array_equal(
        np.asarray(d.convs[1].kernel[...]), sd["conv2.0.weight_orig"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(np.asarray(d.convs[4].v[...]), sd["conv5.0.weight_v"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("conv5.0.weight_v"), "missing conv5.0.weight_v"),
        (lambda sd: sd.update(extra=np.zeros(1, np.float32)), "unexpected extra"),
        (lambda sd: sd.update({"conv2.0.weight_orig": np.zeros((128, 64, 3, 3), np.float32)}),
         r"conv2.0.weight_orig is \(128, 64, 3, 3\), expected \(128, 64, 4, 4\)"),
        (lambda sd: sd.update({"features.0.weight_u": np.zeros(64, np.float32)}),
         "features.0.weight_u differs from conv1.0.weight_u"),
    ],
    ids=["missing", "unexpected", "shape", "alias"],
)
def test_discriminator_mismatches_name_the_key(tmp_path, dis_state_dict, edit, message):
    sd = dict(dis_state_dict)
    edit(sd)
    path = tmp_path / "edited.pth"
    pth.save_pth({"discriminator": sd}, path)
    with pytest.raises(pth.PthError, match=message) as e:
        convert.load_official_discriminator(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "loader, given, says",
    [
        ("load_official_discriminator", "InpaintingModel_gen.pth",
         "it looks like the release's generator .*; pass it with --generator"),
        ("load_official_generator", "vgg19_features.pth",
         "it looks like torchvision's VGG19; pass it with --vgg19"),
        # (VGG19's loader lives in models/vgg.py, where no flag applies: it names the file)
        ("load_torchvision_vgg19", "InpaintingModel_dis.pth",
         "looks like the ISNet release's discriminator .InpaintingModel_dis.pth."),
    ],
)
def test_a_file_of_another_kind_says_which_flag_it_needs(golden_dir, loader, given, says):
    with pytest.raises(pth.PthError, match=says) as e:
        getattr(convert, loader)(golden_dir / given)
    assert str(golden_dir / given) in str(e.value)


# ---------------------------------------------------------------------------------------------
# VGG19


def test_vgg19_round_trip(tmp_path, golden_dir):
    features = pth.load_pth(golden_dir / "vgg19_features.pth")
    vgg = convert.load_torchvision_vgg19(golden_dir / "vgg19_features.pth")
    assert count_params(vgg) == sum(v.size for v in features.values())
    npz = convert.save_vgg19(vgg, tmp_path / "vgg19.npz")
    for loaded in (convert.load_vgg19(npz), convert.load_vgg19(tmp_path),
                   convert.load_vgg19(golden_dir / "vgg19_features.pth")):
        for index, conv in zip((0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
                               loaded.convs, strict=True):
            np.testing.assert_array_equal(
                np.asarray(conv.kernel[...]), features[f"{index}.weight"].transpose(2, 3, 1, 0)
            )
            np.testing.assert_array_equal(np.asarray(conv.bias[...]), features[f"{index}.bias"])
    assert convert.load_vgg19(npz, normalization="imagenet").normalization == "imagenet"

    # torchvision's full vgg19() state dict: features.N.* plus a classifier that is ignored.
    full = {f"features.{k}": v for k, v in features.items()}
    full["classifier.0.weight"] = np.zeros((2, 3), np.float32)
    pth.save_pth(collections.OrderedDict(full), tmp_path / "vgg19-full.pth")
    vgg_full = convert.load_vgg19(tmp_path / "vgg19-full.pth")
    np.testing.assert_array_equal(
        np.asarray(vgg_full.convs[15].kernel[...]), np.asarray(vgg.convs[15].kernel[...])
    )


def test_vgg19_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(errors.MissingFileError, match="python -m isnet_jax.convert --vgg19"):
        convert.load_vgg19(tmp_path / "vgg19.npz")


# ---------------------------------------------------------------------------------------------
# The command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isnet_jax.convert", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, golden_dir, gen_pth, dis_pth, gen_checkpoint):
    out = tmp_path / "converted"
    result = run_cli("--generator", gen_pth, "--discriminator", dis_pth,
                     "--vgg19", golden_dir / "vgg19_features.pth", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "blocks=2, 21,530,275 parameters" in result.stdout
    assert "discriminator: 2,763,776 parameters" in result.stdout
    assert "vgg19.npz" in result.stdout

    g, meta = checkpoint.restore_generator(out)
    assert meta["blocks"] == 2 and meta["generator"] == "isnet"
    assert meta["step"] == gen_checkpoint["epoch"]
    assert meta["source"] == "official release: InpaintingModel_gen.pth"
    assert (out / str(meta["step"]) / "discriminator").is_dir()
    with np.load(golden_dir / "golden.npz") as z:
        images, masks, ref = z["images"], z["masks"], z["out_eval"]
    diff = np.abs(np.asarray(nnx.jit(lambda m, x: m(x))(g, images * masks)) - ref).max()
    print(f"restored generator vs release out_eval: max abs diff {diff:.2e}")
    assert diff < 1e-4

    # A second run into the same folder is refused, and nothing changes.
    again = run_cli("--vgg19", golden_dir / "vgg19_features.pth", "--output", out)
    assert again.returncode == cli.EXIT_USER_ERROR and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    # --overwrite replaces only what it writes: the generator checkpoint stays.
    before = (out / "vgg19.npz").stat().st_mtime_ns
    lines = convert.convert(out, vgg19=golden_dir / "vgg19_features.pth", overwrite=True)
    assert len(lines) == 1 and (out / "vgg19.npz").stat().st_mtime_ns != before
    assert checkpoint.resolve(out)[1] == meta["step"]


def hostile_pth(path: pathlib.Path) -> pathlib.Path:
    return torch_zip(path, pickle.dumps(Hostile(os.system, f"touch {MARKER}"), protocol=2))


def not_a_checkpoint_zip(path: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    return path


BAD_FILES = {
    "empty": (lambda p, gen, dis: p.write_bytes(b""), "is empty"),
    "truncated": (lambda p, gen, dis: p.write_bytes(gen.read_bytes()[: gen.stat().st_size // 2]),
                  "truncated or corrupt zip"),
    "random": (lambda p, gen, dis: p.write_bytes(np.random.default_rng(0).bytes(4096)),
               "is not a PyTorch checkpoint"),
    "zip": (lambda p, gen, dis: not_a_checkpoint_zip(p), "is a zip archive, not a PyTorch"),
    "discriminator": (lambda p, gen, dis: p.write_bytes(dis.read_bytes()),
                      "is not the release's generator.*looks like the release's discriminator.*"
                      "pass it with --discriminator"),
    "hostile": (lambda p, gen, dis: hostile_pth(p), "asks for posix.system.*nothing was executed"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_cli_rejects_bad_generator_files(tmp_path, gen_pth, dis_pth, case):
    make, message = BAD_FILES[case]
    bad = tmp_path / f"{case}.pth"
    make(bad, gen_pth, dis_pth)
    out = tmp_path / "out"
    result = run_cli("--generator", bad, "--output", out)
    assert result.returncode == cli.EXIT_USER_ERROR, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert not MARKER.exists()


@pytest.mark.slow  # two networks initialised eagerly, an Orbax write and two restores
def test_a_narrower_checkpoint_restores_at_its_width_and_is_no_release_file(tmp_path):
    """``model.width`` travels in the checkpoint's meta: the restore builds that width, a config
    of another width is told the flag to pass, and the release's .pth format (width 32 only)
    refuses it by name."""
    from isnet_jax.models import Discriminator, Generator

    folder = tmp_path / "narrow"
    g, d = Generator(1, width=8, rngs=nnx.Rngs(0)), Discriminator(rngs=nnx.Rngs(1))
    checkpoint.write_models(folder, 3, checkpoint.generator_meta("isnet", 1, "test", width=8),
                            g, d)
    g2, _, meta = checkpoint.restore_models(folder)
    assert checkpoint.saved_model(meta) == ("isnet", 1, 8)
    full = nnx.eval_shape(lambda: Generator(1, rngs=nnx.Rngs(0)))
    assert count_params(g2) == count_params(g) < count_params(full) / 10
    with pytest.raises(errors.ConfigError, match="--config.model.width=8 to match"):
        checkpoint.restore_models(folder, expect=("isnet", 1, 32))
    with pytest.raises(errors.ConfigError, match="holds an ISNet of width 8"):
        convert.export_official_checkpoint(folder, tmp_path / "pth")
    assert not (tmp_path / "pth").exists()
