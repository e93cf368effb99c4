"""The web demo: a page that captions a photo and shows each word's attention, and its JSON API.

    app = create_app(load_captioner("runs/20261127-101500-shapes_conv_gru"))

    GET  /               the page (captioning/apps/static/index.html, its script and style under /static/)
    POST /api/caption    multipart form, the photo in the field "image" ->
                         {"filename", "caption", "beams": [{"caption", "score"}, ...] (the TOP_BEAMS best),
                          "words", "attention": one PNG data URL per word, or null,
                          "attention_note": why there is no attention (a decoder without it), or null}

A bad upload (not an image, empty, truncated, a decompression bomb, over MAX_UPLOAD_BYTES)
is answered 4xx with {"error": message}, the message `make caption` prints for the same
file (images.ImageLoadError, naming the uploaded file). The model is loaded once, before
the app is made; requests run it one at a time (a Keras model's calls are not promised to
be thread-safe), in a worker thread so the server keeps answering meanwhile.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from captioning.captioner import Captioner, load
from captioning.config import ConfigError
from captioning.data.images import ImageLoadError, read_rgb_bytes
from captioning.plots.attention import upsample
from captioning.runs import latest_run

STATIC_DIR = Path(__file__).resolve().parent / "static"
# `make export`'s one-file model; the demo's default when it exists (else the newest run).
DEFAULT_MODEL = Path("models") / "flickr8k.keras"
# A phone's full-resolution JPEG is 3-12 MB; 20 MB leaves room for them and still bounds
# what one request makes the server hold in memory.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# The multipart headers and boundaries around the file: a few hundred bytes in practice.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
TOP_BEAMS = 3  # the page lists the three best beams
# The longer side of each attention picture, in pixels: legible beside the caption without
# sending megabytes of PNG for a 12-word caption.
OVERLAY_SIDE = 320
# Unattended regions keep this much of their brightness, so the photo stays recognizable.
OVERLAY_FLOOR = 0.2


def load_captioner(model_or_run: str | Path | None = None) -> Captioner:
    """The demo's one seam to the model on disk.

    model_or_run: a one-file model (``*.keras``) or a run directory, read by ``captioning.load``;
        None: DEFAULT_MODEL if it exists, else the newest trained run (as `make caption` picks).
    """
    if model_or_run is None:
        model_or_run = DEFAULT_MODEL if DEFAULT_MODEL.is_file() else latest_run()
    captioner = load(model_or_run)  # a file that is missing or not a model: ModelFileError naming it
    # Uploads are seen once: caching their arrays on disk would only fill the image cache.
    captioner.reader.cache = None
    return captioner


class UploadError(ValueError):
    """A request the demo cannot caption for a reason other than the image's content."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def too_large(name: str) -> ImageLoadError:
    return ImageLoadError(name, f"file too large (the upload limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB)")


def filename_in(body_start: bytes) -> str:
    """The first multipart part's filename, read from the raw body: a request stopped for
    its size is never parsed, yet its error should still name the file."""
    match = re.search(rb'filename="([^"\r\n]*)"', body_start[:MULTIPART_OVERHEAD_BYTES])
    return match.group(1).decode("utf-8", "replace") if match else "upload"


async def capped_body(request: Request) -> bytes:
    """The request body, read no further than one maximal upload: a larger one is an
    ImageLoadError (413) before anything is parsed or decoded."""
    limit = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or (declared.isdigit() and int(declared) > limit):
            raise too_large(filename_in(b"".join(chunks)))
    return b"".join(chunks)


async def read_upload(request: Request) -> tuple[str, bytes]:
    """The multipart field "image" of a request -> (the file's name, its bytes)."""
    body = await capped_body(request)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except MultiPartException as error:
        raise UploadError(f"malformed upload: {error}", 400) from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise UploadError("no photo: send it as the multipart form field 'image' "
                          "(curl -F image=@photo.jpg)", 400)
    name = upload.filename or "upload"
    data = await upload.read()
    await form.close()
    if len(data) > MAX_UPLOAD_BYTES:
        raise too_large(name)
    return name, data


def png_data_url(pixels: np.ndarray) -> str:
    """pixels: (height, width, 3) uint8 -> "data:image/png;base64,..."."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attention_overlays(photo: np.ndarray, attention: np.ndarray) -> list[str]:
    """photo: (height, width, 3) uint8, the upload; attention: (words, grid_height,
    grid_width), word k's weights over the encoder's grid (which covers the whole photo:
    the encoder's input is the photo resized without keeping its aspect ratio).

    Returns one PNG data URL per word: the photo, its longer side OVERLAY_SIDE pixels,
    bright where the word looked and dimmed (to OVERLAY_FLOOR) where it did not."""
    height, width = photo.shape[:2]
    scale = OVERLAY_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    shown = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR), dtype=np.float32)  # (h, w, 3)
    overlays = []
    for attention_map in attention:
        weight = upsample(attention_map, size[1], size[0])[..., None]  # (h, w, 1), peak 1
        shaded = shown * (OVERLAY_FLOOR + (1.0 - OVERLAY_FLOOR) * weight)
        overlays.append(png_data_url(np.clip(shaded, 0, 255).astype(np.uint8)))
    return overlays


class CaptionService:
    """One loaded captioner, shared by every request, run by one request at a time."""

    def __init__(self, captioner: Captioner):
        self.captioner = captioner
        self._model_lock = threading.Lock()

    def warm_up(self) -> None:
        """Captions a gray picture, so the first visitor does not wait for the model's
        functions to compile (seconds)."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
        self.describe(buffer.getvalue(), "warm-up.png")

    def describe(self, data: bytes, name: str) -> dict:
        """An uploaded photo's bytes -> the API's answer (see the module docstring).
        Raises ImageLoadError naming ``name`` for anything that is not a usable image."""
        photo = read_rgb_bytes(data, name)  # (height, width, 3) uint8; the command line's checks
        with tempfile.TemporaryDirectory(prefix="caption-upload-") as folder:
            path = str(Path(folder) / "upload")  # Pillow tells the format from the bytes
            Path(path).write_bytes(data)
            try:
                with self._model_lock:
                    beams = self.captioner.top_captions(path, TOP_BEAMS)
                    try:
                        maps, note = self.captioner.attention_maps(path), None
                    except ConfigError as error:  # a decoder without attention says so
                        maps, note = None, str(error)
                    caption = maps.caption if maps is not None else self.captioner.caption_paths([path])[0]
            except ImageLoadError as error:  # name the upload, not the temporary file
                raise ImageLoadError(name, error.reason) from None
        return {
            "filename": name,
            "caption": caption,
            "beams": [{"caption": text, "score": score} for text, score in beams],
            "words": maps.words if maps is not None else None,
            "attention": attention_overlays(photo, maps.attention) if maps is not None else None,
            "attention_note": note,
        }


def create_app(captioner: Captioner) -> Starlette:
    """The demo's ASGI app around an already loaded captioner (see load_captioner)."""
    service = CaptionService(captioner)

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    async def caption(request: Request) -> JSONResponse:
        try:
            name, data = await read_upload(request)
            answer = await run_in_threadpool(service.describe, data, name)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status_code)
        except ImageLoadError as error:
            status_code = 413 if error.reason.startswith("file too large") else 400
            return JSONResponse({"error": str(error)}, status_code=status_code)
        return JSONResponse(answer)

    app = Starlette(routes=[
        Route("/", page),
        Route("/api/caption", caption, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ])
    app.state.service = service
    return app


def serve(captioner: Captioner, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves the demo until Ctrl-C."""
    import uvicorn

    app = create_app(captioner)
    app.state.service.warm_up()
    print(f"captioning demo on http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
