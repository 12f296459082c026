"""The default install has no TensorFlow: the demo trains, evaluates, inpaints and serves the
page in processes where TensorFlow cannot be found (every finder on ``sys.meta_path`` answers
"no such module" for it: what Python sees where it is not installed, ``find_spec`` included);
the TensorBoard events they write hold what the run logged and saved; and every path that
still needs TensorFlow says in one ``error:`` line which extra installs it."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import portpicker
import pytest
from helpers.paths import REPO
from helpers.tiny import TINY_FLAGS
from PIL import Image

from isnet_jax import extras, progress

# Hides TensorFlow from every finder (a process that has not imported it yet).
NO_TF = """
import sys
class _Hidden:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
"""
# Runs module argv[1] as ``python -m`` would, without TensorFlow.
_RUN_MODULE = NO_TF + (
    "import runpy\nrunpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n")
TF_LINE = "needs tensorflow, which is not installed: pip install 'isnet-jax[tf]'"


def without_tf(module: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _RUN_MODULE, module, *args]


def _run(module: str, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run(without_tf(module, *args), cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == status, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo, 4 steps with TINY_FLAGS, then ``--mode=eval``, both without TensorFlow."""
    workdir = tmp_path_factory.mktemp("no_tf") / "run"
    train = _run("isnet_jax.main", f"--workdir={workdir}", *TINY_FLAGS,
                 "--config.num_train_steps=4")
    evaluation = _run("isnet_jax.main", f"--workdir={workdir}", "--mode=eval", *TINY_FLAGS,
                      "--config.num_train_steps=4", "--config.eval.num_images_final=4")
    return workdir, train.stderr, evaluation.stderr


def _events(folder):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0,
                                                                            "images": 0})
    events.Reload()
    return events


def _logged_scalars(log: str) -> dict[tuple[int, str], float]:
    """The LoggingWriter's ``[STEP] a=1.5, b=2`` lines: {(step, tag): value}."""
    logged = {}
    for step, values in re.findall(r"\] \[(\d+)\] (\S+=.*)$", log, re.MULTILINE):
        for item in values.split(", "):
            tag, value = item.rsplit("=", 1)
            logged[int(step), tag] = float(value)
    return logged


def _png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.slow
def test_the_demo_trains_and_evaluates_without_tensorflow(run):
    workdir, train_log, eval_log = run
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"]
    assert "step 4/4: G " in train_log
    assert "compilation: " in train_log  # what it compiled and kept (compilation_cache.py)
    # The progress report: rate, share, steps, ETA and the data loader's share of the time.
    assert re.search(r"Progress: \d+\.\d steps/s, 50\.0% \(2/4\), ETA: \d+m \(\d+m : "
                     r"\d+\.\d% data\)", train_log), train_log[-3000:]
    assert "Traceback" not in train_log + eval_log
    results = json.loads((workdir / "eval" / "step_4" / "results.json").read_text())
    assert results["bands"]["all"]["images"] == 4


@pytest.mark.slow
def test_events_hold_what_the_run_logged_and_saved(run):
    """Every scalar the log shows, at its step and value (to the log's 6 digits); the sample
    grid and the eval sheets, pixel for pixel the PNGs saved beside them; the config as the
    hyperparameters; the final evaluation's numbers as results.json has them."""
    from flax import traverse_util
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from isnet_jax import train as train_lib
    from isnet_jax.configs import demo

    workdir, train_log, eval_log = run
    for folder, log in ((workdir, train_log), (workdir / "eval", eval_log)):
        events = _events(folder)
        logged = _logged_scalars(log)
        written = {(e.step, tag): e.value for tag in events.Tags()["scalars"]
                   for e in events.Scalars(tag)}
        assert written.keys() == logged.keys()
        for key, value in logged.items():
            assert written[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key

    events = _events(workdir)
    tags = set(events.Tags()["scalars"])
    assert {*train_lib.METRICS, "data_wait_fraction", "skipped_images", "steps_per_sec",
            "uptime", "eval/psnr", "eval/mean_fill/psnr", "eval/telea/ssim"} <= tags
    assert [e.step for e in events.Scalars("g_loss")] == [2, 4]
    [sample] = events.Images("samples")
    assert sample.step == 4
    saved = np.asarray(Image.open(workdir / "samples" / "step_00000004.png"))
    np.testing.assert_array_equal(_png_pixels(sample.encoded_image_string), saved)

    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[
            hparams_metadata.SESSION_START_INFO_TAG])
    # The "[Hyperparameters] {...}" log line, and the demo config's own keys.
    logged = ast.literal_eval(re.search(r"\[Hyperparameters\] (\{.*\})$", train_log,
                                        re.MULTILINE).group(1))
    assert set(start.hparams) == set(logged) == set(
        traverse_util.flatten_dict(demo.get_config().to_dict(), sep="."))
    assert (logged["image_size"], logged["batch_size"], logged["num_train_steps"]) == (32, 2, 4)
    for key, value in logged.items():
        got = start.hparams[key]
        if isinstance(value, bool):
            assert got.bool_value == value, key
        elif isinstance(value, int | float):
            assert got.number_value == pytest.approx(value), key
        else:
            assert got.string_value == value, key

    events = _events(workdir / "eval")
    step_dir = workdir / "eval" / "step_4"
    results = json.loads((step_dir / "results.json").read_text())
    expected = {f"{band}/{k}": v for band, values in results["bands"].items()
                for k, v in values.items()}
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, value in expected.items():
        [event] = events.Scalars(tag)
        assert event.step == 4 and event.value == pytest.approx(value, rel=1e-6, nan_ok=True)
    assert set(events.Tags()["images"]) == {f"{band}/sheet" for band in results["bands"]}
    for band in results["bands"]:
        [sheet] = events.Images(f"{band}/sheet")
        saved = np.asarray(Image.open(step_dir / f"sheet_{band.rstrip('%')}.png"))
        np.testing.assert_array_equal(_png_pixels(sheet.encoded_image_string), saved)


@pytest.mark.slow
def test_inpaint_and_the_page_without_tensorflow(run, tmp_path):
    import skimage.data

    workdir, _, _ = run
    photo, mask, out = tmp_path / "photo.png", tmp_path / "mask.png", tmp_path / "out"
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(photo)
    known = np.full((64, 64), 255, np.uint8)
    known[20:40, 24:44] = 0
    Image.fromarray(known).save(mask)
    model = ["--checkpoint", str(workdir), "--size", "32", "--crop-margin", "8"]
    done = _run("isnet_jax.inpaint", *model, "--input", str(photo), "--mask", str(mask),
                "--output", str(out))
    assert "done: 1 written" in done.stdout
    assert np.asarray(Image.open(out / "photo.png")).shape == (64, 64, 3)

    if not extras.installed("gradio"):
        pytest.skip('the page needs gradio: pip install -e ".[app]"')
    port = portpicker.pick_unused_port()
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        app = subprocess.Popen(without_tf("isnet_jax.app", *model, "--port", str(port)),
                               cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while "serving on " not in log.read_text():
            assert app.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as page:
            assert page.status == 200
            assert "ISNet inpainting" in page.read().decode()
    finally:
        app.terminate()
        app.wait(timeout=60)


# --- What still needs TensorFlow: one line naming the extra ---------------------------------


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_tf_exports_name_the_extra(tiny_checkpoint, tmp_path, fmt):
    out = _run("isnet_jax.export", "--checkpoint", str(tiny_checkpoint), "--format", fmt,
               "--output", str(tmp_path / "out"), status=2)
    assert out.stderr.splitlines() == [f"error: --format {fmt} {TF_LINE}"]
    assert not list(tmp_path.iterdir())


def _python_without_tf(code: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", NO_TF + code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_export_library_names_the_extra(tiny_checkpoint, tmp_path):
    out = _python_without_tf(
        "from isnet_jax import checkpoint, errors, export\n"
        f"generator, _ = checkpoint.restore_generator({str(tiny_checkpoint)!r})\n"
        "try:\n"
        f"    export.export(generator, 'savedmodel', {str(tmp_path / 'out')!r})\n"
        "except errors.MissingExtraError as e:\n"
        "    print(e)\n")
    assert out.stdout.splitlines()[-1] == f"the savedmodel and tflite exports {TF_LINE}"
    assert not list(tmp_path.iterdir())


def test_the_benchmark_rows_of_tf_runtimes_name_the_extra():
    out = _run("isnet_jax.benchmarks.export", "--runtimes", "jax,savedmodel", status=2)
    assert out.stderr.splitlines() == [
        f"error: the savedmodel and tflite rows {TF_LINE}; or leave them out: --runtimes "
        "jax,stablehlo,onnx; see python -m isnet_jax.benchmarks.export --help"]


def test_an_unprepared_tfds_dataset_names_the_extra_for_preparing(tmp_path):
    out = _python_without_tf(
        "from isnet_jax import errors, input_pipeline\n"
        "try:\n"
        f"    input_pipeline.TfdsImages('celeb_a', 'train', {str(tmp_path)!r})\n"
        "except errors.MissingFileError as e:\n"
        "    print(repr(str(e)))\n")
    message = ast.literal_eval(out.stdout.splitlines()[-1])
    assert message.startswith(f"TFDS dataset 'celeb_a' is not prepared in {tmp_path}")
    assert message.endswith("; preparing needs TensorFlow: pip install 'isnet-jax[tf]'")
    assert "\n" not in message


def test_the_tiny_tfds_dataset_is_built_without_tensorflow(tmp_path):
    """TFDS itself builds it (JPEGs encoded by PIL) and reads it back, without TensorFlow."""
    out = _python_without_tf(
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from helpers import tiny_dataset\n"
        "from isnet_jax import input_pipeline\n"
        f"tiny_dataset.prepare({str(tmp_path)!r})\n"
        f"images = input_pipeline.TfdsImages(tiny_dataset.NAME, 'test', {str(tmp_path)!r})\n"
        "print(len(images), images[0][:2].hex())\n")
    assert out.stdout.split()[-2:] == ["12", "ffd8"]  # 12 test images, each a JPEG


def test_format_seconds_as_clu_wrote_it():
    assert progress.format_seconds(123456.7) == "1d10h17m"
    assert progress.format_seconds(59) == "0m"
    assert progress.format_seconds(3 * 3600 + 5) == "3h0m"
