"""Drives the inpainting page (``python -m isnet_jax.app``) in headless Chromium, as a user would.

Used by ``tests/test_app.py``, and on its own to take the README's screenshot with any
checkpoint and photo (the same code as the test)::

    python tests/helpers/browser.py --checkpoint CKPT --photo photo.png --stroke 0.3,0.5,0.7,0.5 \\
        --screenshot docs/app.png

Chromium and ChromeDriver are Debian's (``apt-get install chromium chromium-driver``; ``.ci/run``
installs them); selenium is told their paths, so it never looks for or downloads a browser.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import portpicker
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
WINDOW = (1400, 1000)


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver, as .ci/run does)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install -e ".[test]"'
    return None


class AppProcess:
    """``python -m isnet_jax.app`` in a subprocess on a free localhost port."""

    def __init__(self, checkpoint: os.PathLike, log: pathlib.Path, *extra: str):
        self.port = portpicker.pick_unused_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        cmd = [sys.executable, "-m", "isnet_jax.app", "--checkpoint", str(checkpoint),
               "--port", str(self.port), *extra]
        env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
        self.started = time.perf_counter()
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds from the start of the process to its "serving on" line."""
        while time.perf_counter() - self.started < timeout:
            if "serving on " in self.log.read_text():
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.2)
        raise TimeoutError(f"the app did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()[-5000:]

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a user stops the server; returns the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                # The editor draws with WebGL; headless Chromium has it only in software.
                "--enable-unsafe-swiftshader", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_for(condition, timeout: float, what: str):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the page re-rendered what was found: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout} s for {what}")


class Page:
    """The page's controls, found by the ``elem_id`` values that ``isnet_jax.app`` sets."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By

        self.driver, self.url, self.by = driver, url, By
        self.photo_size = (0, 0)  # (width, height) of the uploaded photo

    def find(self, css: str):
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def open(self) -> None:
        self.driver.get(self.url)
        wait_for(lambda: self.find("#photo input[type=file]"), 60, "the photo editor")

    def upload_photo(self, path: pathlib.Path) -> None:
        self.find("#photo input[type=file]")[0].send_keys(str(path))
        self.photo_size = Image.open(path).size
        wait_for(self._zoom, 30, "the photo on the canvas")

    def upload_mask(self, path: pathlib.Path) -> None:
        if not self.find("#mask input[type=file]"):  # the mask box sits in a closed accordion
            next(b for b in self.find("button") if "mask file" in b.text).click()
        wait_for(lambda: self.find("#mask input[type=file]"), 10, "the mask upload")
        self.find("#mask input[type=file]")[0].send_keys(str(path))

    def _zoom(self) -> float | None:
        text = [z.text for z in self.find("#photo .zoom-number")]
        return float(text[0].rstrip("%")) / 100 if text and text[0].endswith("%") else None

    def set_brush_size(self, radius: int) -> None:
        """The editor's brush-size slider (1..100 px), set with the keyboard as a user can."""
        from selenium.webdriver.common.keys import Keys

        self.find("#photo button[aria-label='Brush Size']")[0].click()
        slider = wait_for(lambda: self.find("#photo input[type=range]"), 10, "the size slider")[0]
        slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * (radius - 1))
        assert slider.get_attribute("value") == str(radius), slider.get_attribute("value")
        self.find("#photo button[aria-label='Brush']")[0].click()  # back to painting
        wait_for(lambda: not self.find("#photo input[type=range]"), 10, "the slider to close")

    def paint(self, points: list[tuple[float, float]]) -> None:
        """One brush stroke with real mouse events through ``points`` (x, y in photo pixels).

        The editor shows the photo centred on its canvas at the zoom it displays."""
        from selenium.webdriver.common.action_chains import ActionChains

        canvas = self.find("#photo canvas")[-1]
        zoom = self._zoom()
        image_w, image_h = self.photo_size
        offsets = [((x - image_w / 2) * zoom, (y - image_h / 2) * zoom) for x, y in points]
        chain = ActionChains(self.driver, duration=20)
        chain.move_to_element_with_offset(canvas, *map(round, offsets[0])).click_and_hold()
        for (x0, y0), (x1, y1) in zip(offsets, offsets[1:], strict=False):
            steps = max(1, round(max(abs(x1 - x0), abs(y1 - y0)) / 8))
            for _ in range(steps):  # small moves: the editor draws between mouse events
                chain.move_by_offset(round((x1 - x0) / steps), round((y1 - y0) / steps))
        chain.release().perform()

    def choose_mode(self, mode: str) -> None:
        self.find(f"input[type=radio][value='{mode}']")[0].click()

    def click_inpaint(self) -> None:
        self.find("#inpaint")[0].click()

    def first_inpaint_messages(self, timeout: float = 60.0) -> list[str]:
        """Click Inpaint right after an upload and return the messages it shows.

        Gradio hands the editor's photo to the server after an upload round trip of its own,
        which the canvas does not wait for: on a loaded machine the first click can come
        before it, and the page then rightly says the photo box is empty. Click again until
        the server has the photo (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self.click_inpaint()
            messages = self.visible_messages()
            empty = messages and messages[0].startswith("The photo box is empty")
            if not empty or time.monotonic() > deadline:
                return messages
            self.close_messages()
            time.sleep(1.0)

    def visible_messages(self) -> list[str]:
        """The messages once their toast is on screen (the text exists before it shows)."""
        wait_for(
            lambda: any(t.is_displayed() for t in self.find(".toast-body")), 30, "a message"
        )
        return self.messages()

    def messages(self) -> list[str]:
        texts = (t.get_attribute("textContent").strip() for t in self.find(".toast-message-text"))
        return [text for text in texts if text]

    def close_messages(self) -> None:
        for button in self.find(".toast-close"):
            button.click()
        wait_for(lambda: not self.messages(), 10, "the messages to close")

    def status(self) -> str:
        return " ".join(s.text for s in self.find("#status"))

    def result_url(self) -> str | None:
        images = self.find("#result img")
        return images[0].get_attribute("src") if images else None

    def inpaint(self, timeout: float = 120.0) -> np.ndarray:
        """Clicks Inpaint and returns the result image the page shows, as served to it."""
        before = self.result_url()
        self.click_inpaint()
        url = wait_for(
            lambda: (u := self.result_url()) and u != before and u, timeout, "the result image"
        )
        wait_for(self.status, 10, "the status line")
        with urllib.request.urlopen(url, timeout=30) as response:
            return np.asarray(Image.open(io.BytesIO(response.read())))

    def screenshot(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))


def compact(path: pathlib.Path, width: int) -> None:
    """Shrinks a screenshot for the docs: trimmed to the page's content, ``width`` px wide,
    256 colours (a PNG a fifth of the size; the photos' gradients survive it)."""
    image = Image.open(path).convert("RGB")
    ink = np.asarray(image.convert("L")) < 250
    rows, cols = np.nonzero(ink[:, :-20])  # the last columns hold the scroll bar
    box = (max(cols.min() - 10, 0), 0, min(cols.max() + 10, image.width), rows.max() + 10)
    image = image.crop(box)
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot of the page after one stroke.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--photo", required=True, type=pathlib.Path)
    parser.add_argument("--stroke", default="0.3,0.5,0.7,0.5",
                        help="x0,y0,x1,y1,... as fractions of the photo's width and height")
    parser.add_argument("--screenshot", required=True, type=pathlib.Path)
    parser.add_argument("--width", type=int, default=0, help="shrink the screenshot to this width")
    parser.add_argument("--mode", default="", help="strategy to choose (default: the page's)")
    parser.add_argument("--brush", type=int, default=0, help="brush radius (default: the page's)")
    parser.add_argument("app_args", nargs="*", help="more arguments for isnet_jax.app")
    args = parser.parse_args()
    reason = missing_browser()
    if reason:
        raise SystemExit(reason)
    width, height = Image.open(args.photo).size
    fractions = [float(v) for v in args.stroke.split(",")]
    pairs = zip(fractions[::2], fractions[1::2], strict=True)
    points = [(fx * width, fy * height) for fx, fy in pairs]
    log = pathlib.Path(tempfile.gettempdir()) / "isnet_jax_screenshot_app.log"
    app = AppProcess(args.checkpoint, log, *args.app_args)
    driver = None
    try:
        print(f"app ready in {app.wait_ready():.1f} s")
        driver = chrome()
        page = Page(driver, app.url)
        page.open()
        page.upload_photo(args.photo)
        if args.brush:
            page.set_brush_size(args.brush)
        page.paint(points)
        if args.mode:
            page.choose_mode(args.mode)
        page.inpaint()
        print(page.status(), page.messages())
        page.screenshot(args.screenshot)
        if args.width:
            compact(args.screenshot, args.width)
    finally:
        if driver is not None:
            driver.quit()
        app.stop()


if __name__ == "__main__":
    main()
