"""Known weight files fetched on first use (``isnet_jax.weights``), against a local HTTP server
standing in for the publishers (``tests/helpers/weights_server.py``): first fetch, cache hit, a
download cut or killed midway, a wrong hash, the server down, a read-only or full cache, a
``gs://`` cache, several JAX processes, and the paper config's command line end to end."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.paths import REPO

from isnet_jax import weights
from isnet_jax.models.vgg import convert_torchvision
from isnet_jax.rehearse import weights_server
from isnet_jax.rehearse.weights_server import serve, write_table

LPIPS_ALEX = REPO / "tests" / "data" / "fid_lpips" / "lpips-alex-random-legacy.pth"


@pytest.fixture
def stand_ins(vgg19_file):
    return {"vgg19": vgg19_file, "lpips_alex": LPIPS_ALEX}


@pytest.fixture
def server(stand_ins, tmp_path, monkeypatch):
    """The stand-in publisher, its table in ``$ISNET_JAX_WEIGHTS_TABLE`` and an empty cache
    in ``$ISNET_JAX_CACHE`` (``tmp_path/cache``)."""
    with serve(stand_ins) as server:
        table = write_table(tmp_path / "table.json", server, stand_ins)
        monkeypatch.setenv(weights.TABLE_VARIABLE, str(table))
        monkeypatch.setenv(weights.CACHE_VARIABLE, str(tmp_path / "cache"))
        yield server


def _files(folder: pathlib.Path) -> list[str]:
    """Every file under ``folder`` (hidden partial files included), relative."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _env(**variables) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", **variables)


# A command line that fetches: run_cli turns a UserError into one "error:" line and status 2.
_FETCH = textwrap.dedent("""
    import sys
    from isnet_jax import cli, weights
    from isnet_jax.models.vgg import convert_torchvision
    convert = convert_torchvision if sys.argv[1] == "vgg19" else None
    sys.exit(cli.run_cli(lambda: print(weights.fetch(sys.argv[1], convert)) or 0, "interrupted"))
""")

# Runs the command after lowering this process's powers, then exec: the limits hold for the
# command. "ro": without root's override of file permissions (CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH dropped from the bounding set), so that a read-only folder is one for
# root too; "fsize=N": files cannot grow past N bytes (a full disk, for this process only;
# SIGXFSZ ignored, so that the write fails with an error instead of killing the process).
_LAUNCHER = textwrap.dedent("""
    import ctypes, os, resource, signal, sys
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "ro" and os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    elif mode.startswith("fsize="):
        limit = int(mode[6:])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.execv(sys.executable, [sys.executable, *argv])
""")


def _fetch_command(name: str, limit: str = "none") -> list[str]:
    return [sys.executable, "-c", _LAUNCHER, limit, "-c", _FETCH, name]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_first_fetch_checks_converts_and_caches_then_hits_the_cache(server, tmp_path, vgg19_file,
                                                                    capsys):
    from isnet_jax.models import vgg
    from isnet_jax.torch_io import pth

    cache = tmp_path / "cache"
    path = weights.fetch("vgg19", convert_torchvision)
    folder = f"vgg19-{weights_server.sha256(vgg19_file)[:8]}"  # the name and the file's hash
    assert path == str(cache / folder / "vgg19.npz") == weights.path_of("vgg19")
    assert server.requests == {"vgg19-dcbb9e9d.pth": 1}
    assert _files(cache) == [f"{folder}/vgg19.npz"]  # converted; no download left over
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's 0600
    # Converted as `convert --vgg19` does: our npz, torch's OIHW kernels as HWIO.
    net = vgg.load_vgg19(path)
    published = pth.load_pth(vgg19_file)
    np.testing.assert_array_equal(np.asarray(net.convs[3].kernel.get_value()),
                                  published["7.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(net.convs[15].bias.get_value()),
                                  published["34.bias"])
    # Its progress in a log (not a terminal): a line per tenth of a large file.
    progress = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("downloading vgg19-dcbb9e9d.pth: ")]
    assert 2 <= len(progress) <= 11 and progress[-1].endswith(" 80.1 of 80.1 MB (100%)")
    # A file used as published: the same bytes; a small one, no progress lines.
    lin = weights.fetch("lpips_alex")
    assert pathlib.Path(lin).read_bytes() == LPIPS_ALEX.read_bytes()
    assert "downloading" not in capsys.readouterr().err
    assert lin.endswith("lpips_alex-" + weights_server.sha256(LPIPS_ALEX)[:8]
                        + "/lpips-v0.1-alex.pth")

    # Cache hits: no request, even with the server gone.
    server.stop()
    assert weights.fetch("vgg19", convert_torchvision) == path
    assert weights.fetch("lpips_alex") == lin
    for value in ("", "vgg19"):
        assert weights.resolve(value, "vgg19", convert_torchvision) == path
    assert server.requests == {"vgg19-dcbb9e9d.pth": 1, "lpips-v0.1-alex.pth": 1}
    # Anything else is a path, returned as it is.
    assert weights.resolve("some/dir/vgg19.npz", "vgg19") == "some/dir/vgg19.npz"


def test_progress_on_a_terminal_is_one_line_redrawn_a_few_times_a_second():
    import io
    import time

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = weights._Progress("f.pth", 10_000_000, out)
    start = time.monotonic()
    for received in range(0, 10_000_001, 1000):  # 10 001 chunks as fast as they come
        progress.update(received)
    progress.done(10_000_000)
    seconds = time.monotonic() - start
    redraws = out.getvalue().split("\r")[1:]
    assert 1 <= len(redraws) <= 2 + 4 * seconds, (len(redraws), seconds)
    assert out.getvalue().count("\n") == 1 and out.getvalue().endswith("\n")
    assert redraws[-1].startswith("f.pth: 10.0 of 10.0 MB (100%)")


def test_a_download_cut_midway_leaves_nothing_and_the_next_one_completes(server, tmp_path):
    server.modes["vgg19-dcbb9e9d.pth"] = "cut"
    with pytest.raises(weights.DownloadError) as caught:
        weights.fetch("vgg19", convert_torchvision)
    message = str(caught.value)
    assert message.startswith(f"cannot download vgg19-dcbb9e9d.pth from "
                              f"{server.url('vgg19-dcbb9e9d.pth')} (the server sent ")
    assert f"put it at {tmp_path / 'cache' / 'vgg19-dcbb9e9d.pth'}" in message
    assert _files(tmp_path / "cache") == []
    server.modes.clear()
    assert pathlib.Path(weights.fetch("vgg19", convert_torchvision)).is_file()
    assert server.requests["vgg19-dcbb9e9d.pth"] == 2


def test_a_download_killed_midway_leaves_no_file_a_later_run_takes(server, tmp_path):
    import time

    cache = tmp_path / "cache"
    server.modes["lpips-v0.1-alex.pth"] = "hold"  # half sent, then the server waits
    proc = subprocess.Popen(_fetch_command("lpips_alex"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait_holding(120), "the download did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
    ready = pathlib.Path(weights.path_of("lpips_alex"))
    assert not ready.exists()
    left = _files(cache)
    assert left and all(pathlib.Path(name).name.startswith(".") and ".partial" in name
               for name in left), left
    server.release()
    server.modes.clear()
    assert weights.fetch("lpips_alex") == str(ready)
    assert ready.read_bytes() == LPIPS_ALEX.read_bytes()
    # The killed run's partial file, once untouched for long, goes at the next fetch.
    old = time.time() - 2 * 3600
    for name in left:
        os.utime(cache / name, (old, old))
    server.stop()  # only the cache is touched
    ready.unlink()
    with pytest.raises(weights.DownloadError):
        weights.fetch("lpips_alex")
    assert _files(cache) == []


def test_a_wrong_hash_is_refused_named_and_deleted(server, tmp_path, stand_ins, monkeypatch):
    server.modes["lpips-v0.1-alex.pth"] = "corrupt"  # same size, one byte changed
    expected = weights_server.sha256(LPIPS_ALEX)
    with pytest.raises(weights.HashMismatchError) as caught:
        weights.fetch("lpips_alex")
    message = str(caught.value)
    assert message.startswith(f"the download of {server.url('lpips-v0.1-alex.pth')} "
                              f"(lpips-v0.1-alex.pth) has SHA-256 ")
    assert f"not the publisher's {expected}: refused; it was deleted" in message
    assert _files(tmp_path / "cache") == []

    # A file put in the cache by hand is checked the same way; a wrong one is refused (and
    # left where the user put it), a right one taken in without any download.
    server.stop()
    by_hand = pathlib.Path(weights.by_hand_path("lpips_alex"))
    assert by_hand == tmp_path / "cache" / "lpips-v0.1-alex.pth"
    by_hand.write_bytes(b"not the file")
    with pytest.raises(weights.HashMismatchError, match=f"^{by_hand} .*is 12 bytes, not the "
                       "publisher's 5531: refused; replace it with http://127.0.0.1"):
        weights.fetch("lpips_alex")
    assert by_hand.exists()
    by_hand.write_bytes(LPIPS_ALEX.read_bytes())
    assert pathlib.Path(weights.fetch("lpips_alex")).read_bytes() == LPIPS_ALEX.read_bytes()
    assert not by_hand.exists()
    # A size the table gives that the file does not have: refused too, before any use.
    table = write_table(tmp_path / "wrong.json", server, stand_ins,
                        vgg19={"size": 1234, "sha256": "dcbb9e9d"})
    server.start()
    monkeypatch.setenv(weights.TABLE_VARIABLE, str(table))
    with pytest.raises(weights.HashMismatchError, match=r"is \d+ bytes, not the publisher's 1234"):
        weights.fetch("vgg19", convert_torchvision)
    assert not pathlib.Path(weights.path_of("vgg19")).exists()
    assert _files(tmp_path / "cache") == ["lpips_alex-" + weights_server.sha256(LPIPS_ALEX)[:8]
                                          + "/lpips-v0.1-alex.pth"]


def test_the_server_down_is_one_line_naming_file_url_and_path(server, tmp_path):
    server.stop()
    out = subprocess.run(_fetch_command("vgg19"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[0].startswith(f"error: cannot download vgg19-dcbb9e9d.pth from "
                               f"{server.url('vgg19-dcbb9e9d.pth')} (")
    assert lines[0].endswith(f"; download it by hand and put it at "
                             f"{tmp_path / 'cache' / 'vgg19-dcbb9e9d.pth'}, where the next run "
                             "checks it and takes it in")
    assert _files(tmp_path / "cache") == []
    # An unknown name, and the release's own weights (no plain download).
    with pytest.raises(weights.errors.ConfigError, match="no known weights are called 'vgg'"):
        weights.fetch("vgg")
    with pytest.raises(weights.NoDownloadError) as caught:
        weights.fetch("isnet_places2")
    assert "https://github.com/GuardSkill/Large-Scale-Feature-Inpainting" in str(caught.value)
    assert ("`python -m isnet_jax.convert --generator InpaintingModel_gen.pth --discriminator "
            "InpaintingModel_dis.pth --output weights/places2`") in str(caught.value)
    # Named as a checkpoint (inpaint, export, eval): the same line, not "no checkpoint found".
    from isnet_jax import checkpoint

    with pytest.raises(weights.NoDownloadError, match="mega.nz, no plain download"):
        checkpoint.resolve("isnet_places2")


@pytest.mark.slow
def test_a_read_only_or_full_cache_is_one_line(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        out = subprocess.run(_fetch_command("lpips_alex", "ro"), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
    finally:
        cache.chmod(0o755)
    assert out.returncode == 2, out.stderr[-3000:]
    assert _error_lines(out.stderr) == [
        f"error: cannot write the weights cache {cache} (Permission denied); make it writable "
        f"or set {weights.CACHE_VARIABLE} to a folder that is"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and server.requests == {}
    assert _files(cache) == []

    # A disk that fills during the download (this process may not write files past 1 MB).
    out = subprocess.run(_fetch_command("vgg19", f"fsize={1 << 20}"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert _error_lines(out.stderr) == [
        f"error: cannot write the weights cache {cache} (File too large); make it writable "
        f"or set {weights.CACHE_VARIABLE} to a folder that is"], out.stderr[-3000:]
    assert _files(cache) == []


@pytest.mark.slow
def test_a_gs_cache_is_written_once_and_read(server, gcs, gs_dir, monkeypatch, vgg19_file):
    from etils import epath
    from helpers.tiny import tiny_config

    from isnet_jax.models import build, vgg
    from isnet_jax.torch_io import pth

    monkeypatch.setenv(weights.CACHE_VARIABLE, gs_dir)
    path = weights.fetch("vgg19", convert_torchvision)
    folder = f"vgg19-{weights_server.sha256(vgg19_file)[:8]}"
    assert path == f"{gs_dir}/{folder}/vgg19.npz"
    # Only the converted file: no download, no partial object.
    assert [p.name for p in epath.Path(gs_dir).iterdir()] == [folder]
    assert [p.name for p in (epath.Path(gs_dir) / folder).iterdir()] == ["vgg19.npz"]
    assert weights.fetch("vgg19", convert_torchvision) == path
    assert server.requests == {"vgg19-dcbb9e9d.pth": 1}
    # What training loads from it: the published kernels.
    config = tiny_config(**{"loss.perceptual_weight": 0.1})
    net = build.load_vgg(config)
    assert isinstance(net, vgg.VGG19)
    np.testing.assert_array_equal(np.asarray(net.convs[0].kernel.get_value()),
                                  pth.load_pth(vgg19_file)["0.weight"].transpose(2, 3, 1, 0))
    assert server.requests == {"vgg19-dcbb9e9d.pth": 1}


@pytest.mark.slow
def test_several_processes_download_once(server, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent("""
        import sys
        import jax
        jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
        from isnet_jax import cli, weights
        sys.exit(cli.run_cli(lambda: print(weights.fetch("lpips_alex")) or 0, "interrupted"))
    """)

    def run_both(cache: pathlib.Path) -> list[subprocess.CompletedProcess]:
        env = _env(**{weights.CACHE_VARIABLE: str(cache)})
        procs = [subprocess.Popen([sys.executable, "-c", code, f"127.0.0.1:{port}", str(i)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        try:
            return [subprocess.CompletedProcess(p.args, p.wait(300), *p.communicate())
                    for p in procs]
        finally:
            for p in procs:
                p.kill()

    outs = run_both(tmp_path / "shared")
    assert [o.returncode for o in outs] == [0, 0], [o.stderr[-2000:] for o in outs]
    assert {o.stdout.strip() for o in outs} == {
        str(tmp_path / "shared" / f"lpips_alex-{weights_server.sha256(LPIPS_ALEX)[:8]}"
            / "lpips-v0.1-alex.pth")}
    assert server.requests == {"lpips-v0.1-alex.pth": 1}

    # Process 0 cannot download: both stop with its one line (the other does not wait).
    server.stop()
    outs = run_both(tmp_path / "empty")
    assert [o.returncode for o in outs] == [2, 2], [o.stderr[-2000:] for o in outs]
    first, second = (_error_lines(o.stderr) for o in outs)
    assert len(first) == 1 and first[0].startswith("error: cannot download lpips-v0.1-alex.pth")
    assert second == [f"error: process 0 could not fetch lpips-v0.1-alex.pth: {first[0][7:]}"]
    assert _files(tmp_path / "empty") == []


# ---------------------------------------------------------------------------------------------
# The command lines


def _main(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isnet_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_paper_config_starts_as_typed_fetching_vgg19_once(tmp_path, tiny_tfds, vgg19_file):
    """``python -m isnet_jax.main --config=configs/places2.py --workdir=W`` trains with VGG on
    (4 blocks, the release's losses), given only where the data is, its size and the steps."""
    from helpers import tiny_dataset

    as_typed = ["--config=configs/places2.py"]
    data_size_steps = [  # the only overrides: all else is the paper config
        f"--config.data.data_dir={tiny_tfds}", f"--config.data.name={tiny_dataset.NAME}",
        "--config.image_size=32", "--config.batch_size=2", "--config.num_train_steps=2"]
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    with serve({"vgg19": vgg19_file}) as server:
        env = _env(**{weights.CACHE_VARIABLE: str(cache), weights.TABLE_VARIABLE: str(
            write_table(tmp_path / "table.json", server, {"vgg19": vgg19_file}))})
        out = _main(*as_typed, f"--workdir={workdir}", *data_size_steps, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Training isnet (blocks=4, " in out.stderr and "step 2/2: " in out.stderr
        step = out.stderr.split("step 2/2: ")[1].splitlines()[0]
        assert " perc " in step and " style " in step  # the VGG losses are on
        assert server.requests == {"vgg19-dcbb9e9d.pth": 1}
        assert _files(cache) == [f"vgg19-{weights_server.sha256(vgg19_file)[:8]}/vgg19.npz"]

        # (A second fetch reads the cache: test_a_gs_cache_is_written_once_and_read.)

        # The server stopped and an empty cache: one line naming the file, its URL and where
        # to put it; nothing partial, no workdir.
        server.stop()
        empty, new = tmp_path / "empty", tmp_path / "new"
        out = _main(*as_typed, f"--workdir={new}", *data_size_steps,
                    env=dict(env, **{weights.CACHE_VARIABLE: str(empty)}))
    assert out.returncode == 2, out.stderr[-3000:]
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[0].startswith(f"error: cannot download vgg19-dcbb9e9d.pth from "
                               f"{server.url('vgg19-dcbb9e9d.pth')} (")
    assert f"put it at {empty / 'vgg19-dcbb9e9d.pth'}" in lines[0]
    assert _files(empty) == [] and not new.exists()


@pytest.mark.slow
def test_eval_turns_fid_and_lpips_on_by_name(tmp_path, monkeypatch):
    """``fid_weights=inception`` and ``lpips_net=alex``, no paths: what ``--mode=eval`` loads
    before evaluating fetches their files once, and both metrics are on. (The eval's table with
    those rows: tests/docs/test_doc_readme.py, with the same files given by path.)"""
    from helpers.fid_lpips_weights import write_weight_files
    from helpers.tiny import tiny_config

    from isnet_jax import sharding
    from isnet_jax.evaluators import fid_lpips

    published = write_weight_files(tmp_path / "published")
    files = {"inception": published["inception"], "alexnet": published["alexnet"],
             "lpips_alex": published["lin_alex"]}
    config = tiny_config(**{"eval.fid_weights": "inception", "eval.lpips_net": "alex"})
    with serve(files) as server:
        monkeypatch.setenv(weights.CACHE_VARIABLE, str(tmp_path / "cache"))
        monkeypatch.setenv(weights.TABLE_VARIABLE,
                           str(write_table(tmp_path / "table.json", server, files)))
        perceptual = fid_lpips.PerceptualMetrics.from_config(config, sharding.create_mesh(None))
    assert perceptual.fid and perceptual.lpips and perceptual.not_computed() == ""
    assert server.requests == {"pt_inception-2015-12-05-6726825d.pth": 1,
                               "alexnet-owt-7be5be79.pth": 1, "lpips-v0.1-alex.pth": 1}
    assert sorted(_files(tmp_path / "cache")) == sorted(
        f"{name}-{weights_server.sha256(path)[:8]}/{weights.KNOWN[name].ready_file}"
        for name, path in files.items())
