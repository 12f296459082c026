"""A local web page to inpaint your own photos: upload, paint the hole, get the result.

    pip install -e ".[app]"
    python -m isnet_jax.app --checkpoint CKPT [--host 127.0.0.1] [--port 7860]

Built on gradio, the usual way model demos are served. The page offers: upload a photo, paint
the hole with a brush (the editor's own size control, undo and clear) or upload a mask file
(or both: their holes are joined), choose the strategy (``auto``, ``crop``, ``resize``, ``pad``:
see :class:`isnet_jax.inpainter.Inpainter`), Inpaint, the result beside the input with a PNG
download.
The same call is gradio's API endpoint ``/inpaint``, so ``gradio_client`` can drive it::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result_png, status = client.predict(
        {"background": handle_file("photo.jpg"), "layers": [], "composite": None},
        handle_file("mask.png"), "hole_black", "auto", api_name="/inpaint")

The mask polarity is one of ``masks.POLARITIES``: ``hole_black`` (the default: black = hole,
white = known, as in training) or ``hole_white``.

The model is loaded and compiled once at start (for the ``--size`` crops that crop and resize
modes run); pad mode compiles once per new image size. Requests queue and run one at a time.
The server binds to 127.0.0.1 unless ``--host`` says otherwise and never opens a public share
link. Bad input (not an image, no hole, all hole, a photo above ``--max-megapixels``, a mask of
another size, an unknown polarity) gets one message on the page and the server goes on serving.
A mistake in the command (a bad flag, a missing or damaged checkpoint, no gradio) is one
``error:`` line and exit status 2; Ctrl-C stops the server with one line and status 130.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from isnet_jax import cli, compilation_cache, errors, images, masks
from isnet_jax import inpainter as inpainter_lib
from isnet_jax.sizes import MULTIPLE

# A local tool: no usage statistics leave the machine (gradio sends them unless told not to).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:
    import gradio as gr
except ImportError:  # the app is an optional extra
    gr = None

MAX_MEGAPIXELS = 40.0  # a 40 MP RGBA photo is 160 MB per copy; the page holds a few
BRUSH_COLOUR = "rgba(255, 0, 200, 0.6)"  # see-through: the user sees what is under the stroke
PHOTO_ID, MASK_ID, BUTTON_ID, RESULT_ID, STATUS_ID = "photo", "mask", "inpaint", "result", "status"
EDITOR_HEIGHT = 480  # px on the page; the photo and the result are shown at the same size
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _require_gradio() -> None:
    if gr is None:
        raise errors.UserError(
            'the web page needs gradio; install it with pip install -e ".[app]" in the '
            "isnet-jax checkout"
        )


def _reject(message: str) -> Exception:
    """The page's message for bad input, and one line in the server's log (no traceback)."""
    print(f"rejected: {message}", flush=True)
    return gr.Error(message, print_exception=False)


def _file_name(payload: Any) -> str:
    name = getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the file"
    return html.escape(str(name).rsplit("/", 1)[-1])


def _unreadable(what: str, payload: Any, error: BaseException) -> Exception:
    if isinstance(error, Image.DecompressionBombError):
        return _reject(f"The {what} {_file_name(payload)}: {images.too_large(error)}.")
    return _reject(
        f"The {what} {_file_name(payload)} is not an image this page can read "
        "(PNG, JPEG, WebP, TIFF, BMP, ...); upload an image file."
    )


def _report_unreadable(component: Any, what: str) -> Any:
    """Makes a component's decoding of an upload fail with one message naming the file.

    gradio answers a file PIL cannot open with a bare "Error". The instance's ``preprocess``
    is wrapped rather than the class subclassed: gradio writes a ``.pyi`` stub beside the
    source of every Component subclass, which would land in this package.
    """
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except (*UNREADABLE, Image.DecompressionBombError) as e:
            named = getattr(payload, "background", None) or payload
            raise _unreadable(what, named, e) from None

    component.preprocess = checked
    return component


def _check_polarity(component: Any) -> Any:
    """Makes the polarity choice answer an unknown value (an API call's, say the old spelling
    ``hole-white``) with the message that names the right spelling, not gradio's own."""
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        try:
            masks.check_polarity(payload)
        except errors.ConfigError as e:
            raise _reject(html.escape(str(e), quote=False)) from None
        return preprocess(payload)

    component.preprocess = checked
    return component


def _painted_known(layers: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The editor's paint layers -> bool (H, W), True = known: any painted pixel is hole."""
    known = np.ones(shape, bool)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.shape[:2] != shape:
            raise _reject(
                f"the paint layer is {layer.shape[1]}x{layer.shape[0]} but the photo is "
                f"{shape[1]}x{shape[0]}; clear the drawing and paint again"
            )
        alpha = layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else layer
        if alpha.ndim == 3:
            alpha = alpha.max(axis=-1)
        known &= alpha == 0
    return known


class App:
    """The page's request handler around one :class:`~isnet_jax.inpainter.Inpainter`."""

    def __init__(
        self, inpainter: inpainter_lib.Inpainter, *, max_megapixels: float = MAX_MEGAPIXELS
    ):
        self.inpainter = inpainter
        self.max_megapixels = max_megapixels

    def inpaint(
        self,
        photo: dict | None,
        mask: np.ndarray | None,
        polarity: str = masks.DEFAULT_POLARITY,
        mode: str = "auto",
    ) -> tuple[np.ndarray, str]:
        """One click of Inpaint: returns the composite and a status line; raises ``gr.Error``
        with the message to show for bad input."""
        background = None if photo is None else photo.get("background")
        if background is None:
            raise _reject(
                "The photo box is empty: upload a photo (PNG, JPEG, WebP, ...), then paint over "
                "the area to fill. A file the browser cannot show as an image does not load."
            )
        image = np.asarray(background)
        h, w = image.shape[:2]
        if h * w > self.max_megapixels * 1e6:
            raise _reject(
                f"The photo is {w}x{h} = {h * w / 1e6:.1f} megapixels, above this page's limit "
                f"of {self.max_megapixels:g} (--max-megapixels); scale it down first."
            )
        if image.ndim == 3 and image.shape[-1] == 4 and (image[..., 3] == 255).all():
            image = image[..., :3]  # an opaque photo: write RGB, not a constant alpha channel
        known = _painted_known(photo.get("layers") or [], (h, w))
        if mask is not None:
            grey = np.asarray(mask)
            if grey.ndim == 3:
                grey = np.asarray(Image.fromarray(grey[..., :3]).convert("L"))
            if grey.shape != (h, w):
                raise _reject(
                    f"The mask is {grey.shape[1]}x{grey.shape[0]} but the photo is {w}x{h}; "
                    "upload a mask of the photo's size."
                )
            known &= masks.mask_to_known(grey, polarity)
        hole, problem = inpainter_lib.hole_verdict(known)
        if problem == "no hole":
            raise _reject(
                "There is no hole to fill: paint over the area to replace, or upload a mask "
                f"({'white' if polarity == 'hole_white' else 'black'} = hole with {polarity})."
            )
        if problem == "all hole":
            raise _reject(
                "The hole covers the whole photo: nothing is left to fill it from. Paint only "
                "the area to replace (or check the mask polarity)."
            )
        start = time.perf_counter()
        done = self.inpainter.inpaint(image, known, mode=mode)
        shapes = ", ".join(sorted({f"{sw}x{sh}" for sh, sw in done.network_shapes}))
        runs = f"{len(done.windows)} crop(s) at {shapes}" if done.mode == "crop" else f"at {shapes}"
        status = (
            f"Filled {100 * hole:.1f} % of the {w}x{h} photo in {done.mode} mode ({runs}) in "
            f"{time.perf_counter() - start:.2f} s."
        )
        if problem == "beyond training":
            status += f" That is {inpainter_lib.BEYOND_TRAINING}."
            if mask is not None:
                other = masks.other_polarity(polarity)
                status += f" If the mask marks what to keep, choose {other}."
        return done.image, status


def build(
    inpainter: inpainter_lib.Inpainter, *, max_megapixels: float = MAX_MEGAPIXELS,
    title: str = "",
) -> Any:
    """The page as a ``gr.Blocks``, queued one request at a time; ``.launch()`` serves it."""
    _require_gradio()
    app = App(inpainter, max_megapixels=max_megapixels)
    strategies = (
        "auto: crop for photos larger than twice the training size, pad for the others; "
        "crop: the model at its training size on a crop around each hole; resize: the whole "
        "photo at the training size; pad: the whole photo at full resolution (slow when large)"
    )
    with gr.Blocks(title="ISNet inpainting", analytics_enabled=False) as demo:
        gr.Markdown(f"## ISNet inpainting\n{title}")
        with gr.Row(equal_height=False):
            with gr.Column():
                photo = gr.ImageEditor(
                    label="Photo: upload, then paint over what to remove",
                    type="numpy",
                    image_mode="RGBA",
                    sources=("upload", "clipboard"),
                    brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed"),
                    layers=False,
                    transforms=(),
                    format="png",
                    height=EDITOR_HEIGHT,
                    elem_id=PHOTO_ID,
                )
                with gr.Accordion("... or upload a mask file", open=False):
                    mask = gr.Image(
                        label="Mask (same size as the photo)",
                        type="numpy",
                        image_mode="L",
                        sources=("upload",),
                        format="png",
                        elem_id=MASK_ID,
                    )
                    polarity = gr.Radio(
                        list(masks.POLARITIES),
                        value=masks.DEFAULT_POLARITY,
                        label="Mask polarity",
                        info="hole_black: black marks the hole, white is kept (the NVIDIA "
                        "masks; what training reads); hole_white: white marks the hole",
                    )
                mode = gr.Radio(
                    list(inpainter_lib.RESIZE_MODES), value="auto", label="Strategy",
                    info=strategies)
                button = gr.Button("Inpaint", variant="primary", elem_id=BUTTON_ID)
            with gr.Column():
                result = gr.Image(
                    label="Result",
                    type="numpy",
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    height=EDITOR_HEIGHT,
                    elem_id=RESULT_ID,
                )
                status = gr.Markdown(label="status", elem_id=STATUS_ID)
        _report_unreadable(photo, "photo")
        _report_unreadable(mask, "mask")
        _check_polarity(polarity)
        button.click(
            app.inpaint,
            inputs=[photo, mask, polarity, mode],
            outputs=[result, status],
            api_name="inpaint",
            concurrency_limit=1,
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def warm_up(inpainter: inpainter_lib.Inpainter) -> float:
    """Compiles the forward pass that crop and resize modes run; returns the seconds taken."""
    start = time.perf_counter()
    size = inpainter.size
    inpainter.predict(np.zeros((1, size, size, 3), np.float32), np.ones((1, size, size, 1)))
    return time.perf_counter() - start


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.app",
        description="Serve a local web page that inpaints photos with an ISNet checkpoint.",
    )
    cli.add_model_arguments(parser, crop_margin=inpainter_lib.CROP_MARGIN)
    cli.add_compilation_cache_argument(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 serves your network (default: %(default)s, this machine)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help="largest photo the page accepts (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cli.check_model_arguments(parser, args, multiple=MULTIPLE)
    if args.max_megapixels <= 0:
        parser.error(f"--max-megapixels must be positive, got {args.max_megapixels}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run_cli(lambda: serve(args), "the server stopped")


def serve(args: argparse.Namespace) -> int:
    """Loads the model, serves the page until Ctrl-C (which propagates) and returns 0."""
    _require_gradio()
    start = time.perf_counter()
    inpainter = cli.load_inpainter(args)
    about = cli.generator_line(inpainter.meta, args.checkpoint)
    print(f"{about}; {cli.running_on(inpainter)}", flush=True)
    why = "jax compiles it" if inpainter.runtime == "jax" else "onnxruntime prepares it"
    print(f"running the {args.size}x{args.size} forward pass once ({why}) ...", flush=True)
    print(f"ready in {warm_up(inpainter):.1f} s; "
          f"{compilation_cache.report(cli.cached_export_note(inpainter))}", flush=True)
    demo = build(inpainter, max_megapixels=args.max_megapixels, title=html.escape(about))
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=True,
        quiet=True,
    )
    print(
        f"serving on http://{args.host}:{args.port}/ (started in "
        f"{time.perf_counter() - start:.1f} s); Ctrl-C stops",
        flush=True,
    )
    try:
        # gradio's block_thread() would swallow Ctrl-C and print its own line: wait here, so
        # that Ctrl-C ends as every command's does (cli.run_cli).
        while demo.is_running:
            time.sleep(0.1)
    finally:
        demo.close(verbose=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
