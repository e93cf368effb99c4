"""The web demo's API (make serve): a photo in, its caption, top beams and attention out;
bad uploads answered 4xx with the command line's message; concurrent requests share one
model, run one at a time."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import tiny_config
from demo_server import running, shapes_photos
from PIL import Image
from starlette.testclient import TestClient
from test_images import png_header_claiming

from captioning.apps import serve
from captioning.captioner import Captioner
from captioning.cli import main
from captioning.data.images import ImageLoadError, read_rgb
from captioning.data.vocabulary import Vocabulary
from captioning.models.caption_model import build_model
from captioning.models.model_file import ModelFileError
from captioning.runs import RunError


@pytest.fixture(scope="module")
def captioner(trained_attention_run):
    return serve.load_captioner(trained_attention_run)


@pytest.fixture(scope="module")
def client(captioner):
    with TestClient(serve.create_app(captioner)) as client:
        yield client


@pytest.fixture(scope="module")
def photos(trained_attention_run, tiny_data_root):
    return shapes_photos(tiny_data_root, 4)


def post(client, name: str, data: bytes):
    return client.post("/api/caption", files={"image": (name, data, "application/octet-stream")})


def png_size(data_url: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):]))) as picture:
        assert picture.format == "PNG"
        return picture.size


def test_a_photo_gets_its_caption_top_beams_and_one_attention_picture_per_word(client, captioner, photos):
    response = post(client, "square.png", photos[0].read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["filename"] == "square.png"
    assert answer["caption"] == captioner.caption_paths([str(photos[0])])[0]
    assert answer["beams"] == [{"caption": text, "score": score}
                               for text, score in captioner.top_captions(str(photos[0]), serve.TOP_BEAMS)]
    assert len(answer["beams"]) == 3
    maps = captioner.attention_maps(str(photos[0]))
    assert answer["words"] == maps.words and len(answer["attention"]) == len(maps.words) > 0
    with Image.open(photos[0]) as photo:
        width, height = photo.size
    longer = serve.OVERLAY_SIDE
    assert png_size(answer["attention"][0]) == ((longer, round(height * longer / width)) if width >= height
                                                 else (round(width * longer / height), longer))
    assert answer["attention_note"] is None


def test_an_overlay_is_bright_where_the_word_looked_and_dim_elsewhere():
    photo = np.full((40, 80, 3), 200, dtype=np.uint8)  # (height, width, 3), wider than tall
    attention = np.zeros((1, 2, 2), dtype=np.float32)
    attention[0, 0, 1] = 1.0  # all of the word's attention on the top right quarter
    (data_url,) = serve.attention_overlays(photo, attention)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))
    assert pixels.shape == (160, 320, 3)
    assert pixels[20, 300].min() >= 190  # top right: the photo as it is
    assert pixels[140, 20].max() <= 200 * serve.OVERLAY_FLOOR + 2  # bottom left: dimmed


def cli_reason(tmp_path: Path, data: bytes) -> str:
    """What `make caption` says about a file holding ``data``."""
    path = tmp_path / "file"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError) as error:
        read_rgb(path)
    return error.value.reason


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BAD_UPLOADS = {
    "notes.txt": (b"just some words, not a picture\n", "not an image"),
    "empty.png": (b"", "empty file"),
    "half.png": (truncated_png(), "truncated"),
    "bomb.png": (png_header_claiming(100_000, 100_000), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_a_bad_upload_gets_a_400_with_the_command_lines_message_naming_the_file(client, photos, tmp_path, name):
    data, kind = BAD_UPLOADS[name]
    response = post(client, name, data)
    assert response.status_code == 400
    assert kind in response.json()["error"]
    assert response.json()["error"] == f"cannot load image {name}: {cli_reason(tmp_path, data)}"
    assert post(client, "good.png", photos[1].read_bytes()).status_code == 200  # still serving


@pytest.mark.parametrize("size", [serve.MAX_UPLOAD_BYTES + 1, 3 * serve.MAX_UPLOAD_BYTES])
def test_an_upload_over_20_mb_gets_a_413_naming_the_file(client, photos, size):
    response = post(client, "huge.jpg", b"\xff" * size)
    assert response.status_code == 413
    assert response.json()["error"] == "cannot load image huge.jpg: file too large (the upload limit is 20 MB)"
    assert post(client, "good.png", photos[1].read_bytes()).status_code == 200


def test_an_upload_of_exactly_20_mb_is_decoded(client):
    response = post(client, "big.png", b"\x00" * serve.MAX_UPLOAD_BYTES)
    assert response.status_code == 400 and "not an image" in response.json()["error"]


def test_a_request_without_the_image_field_gets_a_400_saying_how_to_send_it(client):
    response = client.post("/api/caption", files={"photo": ("a.png", b"x")})
    assert response.status_code == 400 and "'image'" in response.json()["error"]
    response = client.post("/api/caption", content=b"not multipart", headers={"content-type": "text/plain"})
    assert response.status_code == 400 and "'image'" in response.json()["error"]


def test_the_page_and_its_script_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="image"' in page.text and "/static/demo.js" in page.text
    script = client.get("/static/demo.js")
    assert script.status_code == 200 and "/api/caption" in script.text


def test_a_decoder_without_attention_says_so_instead_of_failing(tmp_path, photos):
    config = tiny_config(tmp_path)
    vocabulary = Vocabulary.build(["a red square", "a blue circle"])
    with TestClient(serve.create_app(Captioner(config, build_model(config, vocabulary.size), vocabulary))) as client:
        response = post(client, "square.png", photos[0].read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["attention"] is None and answer["words"] is None
    assert "no attention to show" in answer["attention_note"]
    assert len(answer["beams"]) == 3 and isinstance(answer["caption"], str)


def test_16_concurrent_requests_are_all_answered_correctly_by_one_model_run_one_at_a_time(
        trained_attention_run, photos, monkeypatch):
    loads = []
    load_run = Captioner.from_run
    monkeypatch.setattr(Captioner, "from_run",
                        lambda run_dir, overrides=(): loads.append(run_dir) or load_run(run_dir, overrides))
    captioner = serve.load_captioner(trained_attention_run)
    expected = {photo.name: (captioner.caption_paths([str(photo)])[0],
                             [text for text, _ in captioner.top_captions(str(photo), serve.TOP_BEAMS)])
                for photo in photos}

    active, most_active, lock = [0], [0], threading.Lock()  # model calls running at once
    original_top_captions = captioner.top_captions

    def counting_top_captions(*arguments):
        with lock:
            active[0] += 1
            most_active[0] = max(most_active[0], active[0])
        try:
            return original_top_captions(*arguments)
        finally:
            with lock:
                active[0] -= 1

    captioner.top_captions = counting_top_captions
    uploads = [photos[index % len(photos)] for index in range(16)] + [None] * 4  # and 4 bad ones among them

    with running(serve.create_app(captioner)) as url:
        def send(photo):
            name, data = (photo.name, photo.read_bytes()) if photo is not None else ("notes.txt", b"words")
            return name, httpx.post(f"{url}/api/caption", files={"image": (name, data)}, timeout=120)

        with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
            answers = list(pool.map(send, uploads))

    for name, response in answers:
        if name == "notes.txt":
            assert response.status_code == 400 and "not an image" in response.json()["error"]
            continue
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["filename"], answer["caption"], [beam["caption"] for beam in answer["beams"]]) == \
            (name, *expected[name])
    assert len(loads) == 1
    assert most_active[0] == 1


def test_load_captioner_reads_a_run_and_names_what_it_cannot_load(trained_attention_run, tmp_path, monkeypatch):
    captioner = serve.load_captioner(trained_attention_run)
    assert isinstance(captioner, Captioner) and captioner.reader.cache is None  # uploads stay out of the cache
    monkeypatch.chdir(tmp_path)  # no models/, no runs/
    with pytest.raises(RunError, match="no trained run"):
        serve.load_captioner()
    with pytest.raises(ModelFileError, match="model.keras"):
        serve.load_captioner(tmp_path / "model.keras")


def test_load_captioner_prefers_the_exported_model_through_captioning_load(trained_attention_run, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_file = tmp_path / serve.DEFAULT_MODEL
    model_file.parent.mkdir()
    model_file.write_bytes(b"stands for an exported model")
    loaded = []
    monkeypatch.setattr(serve, "load", lambda path: loaded.append(Path(path)) or
                        Captioner.from_run(trained_attention_run))
    assert isinstance(serve.load_captioner(), Captioner)
    assert loaded == [serve.DEFAULT_MODEL]


def test_serve_command_loads_the_model_once_and_serves_it_on_the_port(trained_attention_run, monkeypatch):
    served = []
    monkeypatch.setattr(serve, "serve", lambda captioner, host, port: served.append((captioner, host, port)))
    assert main(["serve", "--model", str(trained_attention_run), "--port", "8123"]) == 0
    (captioner, host, port), = served
    assert isinstance(captioner, Captioner) and (host, port) == ("127.0.0.1", 8123)
    assert main(["serve", "--model", str(trained_attention_run / "missing")]) == 2  # a clear error, no traceback
