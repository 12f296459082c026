"""The inpainting page: driven in headless Chromium like a user, and through gradio's API.

One app process serves the whole module (``python -m isnet_jax.app`` on a free localhost port,
the tiny Generator(blocks=1) checkpoint, ``--size 32``, a 0.015 MP photo limit so a small photo
can be "too large"). The browser test needs Debian's chromium and chromium-driver (``.ci/run``
installs them) and skips, saying so, where they are missing. Its screenshot is written to
``$ISNET_JAX_TEST_ARTIFACTS`` (``.ci-artifacts/`` under ``.ci/run``), else to pytest's tmp dir.
"""

from __future__ import annotations

import os
import pathlib
import threading

import numpy as np
import pytest
from helpers.browser import AppProcess, Page, chrome, missing_browser
from PIL import Image

from isnet_jax import cli, masks
from isnet_jax.inpainter import Inpainter

gradio_client = pytest.importorskip(
    "gradio_client", reason='the page needs gradio: pip install -e ".[app]" (or ".[test]")'
)
SIZE, MARGIN, LIMIT_MP = 32, 8, 0.015
PHOTO = (128, 96)  # width, height: 0.0123 MP, under the limit; auto mode crops it (> 2 x 32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("app_files")
    paths = {name: folder / f"{name}.png" for name in ("photo", "other", "big", "broken")}
    Image.fromarray(data.chelsea()).resize(PHOTO, Image.Resampling.LANCZOS).save(paths["photo"])
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(paths["other"])
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(paths["big"])
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("not an image")
    for name, (w, h), box in [
        ("mask", PHOTO, (40, 30, 70, 50)),  # x0, y0, x1, y1 of the hole: white = hole
        ("other_mask", (72, 80), (10, 50, 30, 70)),
        ("small_mask", (20, 20), (5, 5, 10, 10)),
        ("empty_mask", PHOTO, (0, 0, 0, 0)),
        ("full_mask", PHOTO, (0, 0, *PHOTO)),
    ]:
        mask = np.zeros((h, w), np.uint8)
        mask[box[1] : box[3], box[0] : box[2]] = 255
        paths[name] = folder / f"{name}.png"
        Image.fromarray(mask).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def app(tiny_checkpoint, tmp_path_factory):
    process = AppProcess(
        tiny_checkpoint, tmp_path_factory.mktemp("app") / "app.log",
        "--size", str(SIZE), "--crop-margin", str(MARGIN), "--max-megapixels", str(LIMIT_MP),
        # The runtime the tests' own Inpainter runs: a random generator's outputs differ
        # between runtimes (tests/test_onnx_runtime.py compares them on trained weights).
        "--runtime", "jax",
    )
    try:
        process.startup_s = process.wait_ready()
        yield process
        # Stopped as a user stops it, with Ctrl-C: one line and status 130.
        status = process.interrupt()
        output = process.output()
        assert status == cli.EXIT_INTERRUPTED, output
        assert output.rstrip().splitlines()[-1] == "interrupted (Ctrl-C); the server stopped"
        assert "Traceback" not in output
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app.url, verbose=False)


def _photo(path: pathlib.Path) -> dict:
    return {"background": gradio_client.handle_file(str(path)), "layers": [], "composite": None}


def _segment_distance(shape: tuple[int, int], points: list[tuple[float, float]]) -> np.ndarray:
    """Distance in pixels from every pixel centre to the polyline through ``points`` (x, y)."""
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    best = np.full(shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        best = np.minimum(best, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return best


@pytest.mark.slow
def test_page_in_chromium_paints_a_stroke_and_shows_the_result(app, files, tmp_path_factory):
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    artifacts = pathlib.Path(
        os.environ.get("ISNET_JAX_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts")
    )
    driver = chrome()
    try:
        page = Page(driver, app.url)
        page.open()
        page.upload_photo(files["photo"])
        photo = np.asarray(Image.open(files["photo"]))

        # Inpaint before painting: one clear message, and the page goes on working.
        messages = page.first_inpaint_messages()
        assert len(messages) == 1 and messages[0].startswith("There is no hole to fill"), messages
        page.close_messages()

        stroke = [(24.0, 30.0), (64.0, 60.0), (104.0, 40.0)]  # photo pixels (x, y)
        page.set_brush_size(3)
        page.paint(stroke)
        result = page.inpaint()
        page.screenshot(artifacts / "app_e2e.png")
        assert page.messages() == [], page.messages()
        # The result offers its PNG for download: the link serves the image just read.
        (link,) = page.find("#result a[download]")
        assert link.get_attribute("href") == page.result_url()
        status = page.status()
        assert status.startswith("Filled") and "in crop mode" in status, status

        assert result.shape == photo.shape and result.dtype == np.uint8
        distance = _segment_distance(photo.shape[:2], stroke)
        changed = (result != photo).any(axis=-1)
        # The brush (radius 3 px) with its soft edge stays within 6 px of the path: everything
        # beyond is the photo, byte for byte.
        far = distance > 6
        assert far.mean() > 0.8
        np.testing.assert_array_equal(result[far], photo[far])
        near = distance <= 1
        assert changed[near].mean() > 0.9, changed[near].mean()
        assert 0.01 < changed.mean() < 0.2, changed.mean()

        # A file that claims to be a PNG but is not: one message naming it.
        page.upload_mask(files["broken"])
        page.click_inpaint()
        messages = page.visible_messages()
        assert messages == [
            "The mask broken.png is not an image this page can read (PNG, JPEG, WebP, TIFF, "
            "BMP, ...); upload an image file."
        ], messages
        page.screenshot(artifacts / "app_e2e_error.png")
    finally:
        driver.quit()
    assert app.proc.poll() is None, app.output()


@pytest.mark.slow
def test_api_reports_bad_input_and_keeps_serving(app, client, files):
    photo, mask = _photo(files["photo"]), gradio_client.handle_file(str(files["mask"]))
    cases = [
        (_photo(files["text"]), None, "The photo notes.txt is not an image this page can read"),
        (photo, gradio_client.handle_file(str(files["broken"])), "The mask broken.png is not"),
        (photo, gradio_client.handle_file(str(files["empty_mask"])), "There is no hole to fill"),
        (photo, gradio_client.handle_file(str(files["full_mask"])),
         "The hole covers the whole photo"),
        (_photo(files["big"]), mask, "The photo is 200x150 = 0.0 megapixels, above this page's "
         "limit of 0.015 (--max-megapixels)"),
        (photo, gradio_client.handle_file(str(files["small_mask"])),
         "The mask is 20x20 but the photo is 128x96; upload a mask of the photo's size."),
        (None, mask, "The photo box is empty"),
    ]
    for photo_value, mask_value, expected in cases:
        with pytest.raises(gradio_client.exceptions.AppError) as caught:
            client.predict(photo_value, mask_value, "hole_white", "auto", api_name="/inpaint")
        assert str(caught.value).startswith(expected), (expected, str(caught.value))
    # The old spelling of the polarity: the message names the one to write.
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        client.predict(photo, mask, "hole-white", "auto", api_name="/inpaint")
    assert str(caught.value).startswith(
        "unknown mask polarity 'hole-white': write hole_white (hole_black (black = hole"
    ), str(caught.value)
    # The server logged one line per rejection, no traceback, and still serves.
    assert app.output().count("rejected: ") >= len(cases) + 1
    assert "Traceback" not in app.output()
    path, status = client.predict(photo, mask, "hole_black", "pad", api_name="/inpaint")
    # 30x20 known pixels of 128x96 with hole_black: 95.1 % hole, beyond what the model saw.
    assert status.startswith("Filled 95.1 % of the 128x96 photo in pad mode (at 128x96)"), status
    assert status.endswith(
        "more hole than the model was trained on (up to 60 %). If the mask marks what to keep, "
        "choose hole_white."
    ), status
    assert np.asarray(Image.open(path)).shape == (96, 128, 3)
    assert app.startup_s < 60, app.startup_s  # "starts in seconds": measured ~ 10 s here


@pytest.mark.slow
def test_two_requests_at_once_get_their_own_results(app, client, files, tiny_checkpoint):
    inpainter = Inpainter.from_checkpoint(tiny_checkpoint, size=SIZE, margin=MARGIN)
    requests = [("photo", "mask", "crop"), ("other", "other_mask", "pad")]
    jobs, results = [], {}
    barrier = threading.Barrier(len(requests))

    def submit(photo: str, mask: str, mode: str) -> None:
        barrier.wait()  # both requests reach the queue together
        job = client.submit(_photo(files[photo]), gradio_client.handle_file(str(files[mask])),
                            "hole_white", mode, api_name="/inpaint")
        jobs.append(job)
        results[photo] = job.result(timeout=120)

    threads = [threading.Thread(target=submit, args=r) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == len(requests), results
    for photo, mask, mode in requests:
        image = np.asarray(Image.open(files[photo]))
        known = masks.load_known_mask(files[mask], "hole_white")
        expected = inpainter.inpaint(image, known, mode=mode)
        served = np.asarray(Image.open(results[photo][0]))
        assert f"in {mode} mode" in results[photo][1]
        assert served.shape == image.shape
        np.testing.assert_array_equal(served[known], image[known])
        assert np.abs(served.astype(int) - expected.image).max() <= 1, photo


def test_defaults_serve_this_machine_only():
    from isnet_jax import app as app_module

    args = app_module.parse_args(["--checkpoint", "CKPT"])
    assert (args.host, args.port, args.max_megapixels) == ("127.0.0.1", 7860, 40.0)
    with pytest.raises(SystemExit):
        app_module.parse_args(["--checkpoint", "CKPT", "--share"])  # no such option


def test_a_missing_checkpoint_is_one_line_and_status_2(tmp_path, capsys):
    from isnet_jax import app as app_module

    assert app_module.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: no Orbax checkpoint found at {tmp_path / 'nope'}"), lines
