"""Tests for captioning.data.images: reading awkward files, resizing, normalizing, caching.

Every image is generated here with Pillow; nothing is downloaded.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from captioning.data import images
from captioning.data.image_cache import ImageCache
from captioning.data.images import ImageLoadError, load_image, read_rgb

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random RGB pixels: compresses badly, so half a file is clearly truncated."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save_noise_png(path: Path, width: int = 32, height: int = 24, seed: int = 0) -> Path:
    noise_image(width, height, seed).save(path)
    return path


def assert_unit_image(pixels: np.ndarray, x_size: int, y_size: int) -> None:
    assert pixels.dtype == np.float32
    assert pixels.shape == (y_size, x_size, 3)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming width x height and no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------
# Reading every awkward kind of file
# ---------------------------------------------------------------------------------------


def test_rgb_png_and_jpeg_load_to_unit_range(tmp_path):
    image = noise_image(40, 30)
    image.save(tmp_path / "photo.png")
    image.save(tmp_path / "photo.jpg", quality=95)
    for name in ("photo.png", "photo.jpg"):
        pixels = load_image(tmp_path / name, x_size=20, y_size=12, normalization="unit")
        assert_unit_image(pixels, 20, 12)
    # A lossless file at its own size comes back exactly.
    same_size = load_image(tmp_path / "photo.png", 40, 30, "none")
    np.testing.assert_array_equal(same_size, np.asarray(image, dtype=np.float32))


def test_grayscale_l_becomes_three_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # (8, 16)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgb = read_rgb(tmp_path / "gray.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)
    assert_unit_image(load_image(tmp_path / "gray.png", 10, 6, "unit"), 10, 6)


def test_la_transparent_pixels_become_white(tmp_path):
    gray_alpha = np.zeros((4, 6, 2), dtype=np.uint8)  # black everywhere
    gray_alpha[:, :3, 1] = 255  # left half opaque black, right half fully transparent
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "la.png")
    rgb = read_rgb(tmp_path / "la.png")
    assert rgb.shape == (4, 6, 3)
    assert (rgb[:, :3] == 0).all()
    assert (rgb[:, 3:] == 255).all()
    assert_unit_image(load_image(tmp_path / "la.png", 6, 4, "unit"), 6, 4)


def test_palette_with_transparency_becomes_white(tmp_path):
    palette_image = Image.new("P", (6, 4), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # 0 black, 1 red
    for x in range(3):
        for y in range(4):
            palette_image.putpixel((x, y), 1)
    palette_image.save(tmp_path / "palette.png", transparency=0)  # index 0 is see-through
    assert Image.open(tmp_path / "palette.png").mode == "P"
    rgb = read_rgb(tmp_path / "palette.png")
    assert (rgb[:, :3] == [255, 0, 0]).all()
    assert (rgb[:, 3:] == 255).all(), "transparent palette pixels should be white, not black"
    assert_unit_image(load_image(tmp_path / "palette.png", 3, 2, "unit"), 3, 2)


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    rgba = np.zeros((5, 5, 4), dtype=np.uint8)  # transparent black
    rgba[2, 2] = [255, 0, 0, 255]  # one opaque red pixel
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    pixels = load_image(tmp_path / "rgba.png", 5, 5, "unit")
    assert_unit_image(pixels, 5, 5)
    np.testing.assert_array_equal(pixels[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(pixels[2, 2], [1.0, 0.0, 0.0])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 8), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg")  # pure cyan
    assert Image.open(tmp_path / "cyan.jpg").mode == "CMYK"
    rgb = read_rgb(tmp_path / "cyan.jpg")
    assert rgb.shape == (8, 16, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(axis=0), [0, 255, 255], atol=3)
    assert_unit_image(load_image(tmp_path / "cyan.jpg", 4, 2, "unit"), 4, 2)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 2560, 0]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [255, 128, 10, 0])
    pixels = load_image(tmp_path / "deep.png", 4, 1, "unit")
    np.testing.assert_allclose(pixels[0, :, 1], [1.0, 128 / 255, 10 / 255, 0.0], atol=1e-6)


def test_32_bit_integer_mode_i_is_scaled_like_16_bit(tmp_path):
    image = Image.fromarray(np.array([[65535, 32768]], dtype=np.int32), mode="I")
    image.save(tmp_path / "wide.tif")  # TIFF keeps 32-bit integers
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    rgb = read_rgb(tmp_path / "wide.tif")
    np.testing.assert_array_equal(rgb[0, :, 0], [255, 128])


def test_exif_orientation_is_applied(tmp_path):
    stored = np.full((20, 40, 3), 255, dtype=np.uint8)  # stored landscape, 40 wide
    stored[:5, :5] = [255, 0, 0]  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    rgb = read_rgb(tmp_path / "rotated.jpg")
    assert rgb.shape == (40, 20, 3)  # displayed portrait: 20 wide, 40 high
    # Turning clockwise moves the stored top-left corner to the top-right.
    np.testing.assert_allclose(rgb[1, -2], [255, 0, 0], atol=40)
    np.testing.assert_allclose(rgb[1, 1], [255, 255, 255], atol=40)
    pixels = load_image(tmp_path / "rotated.jpg", 10, 30, "unit")
    assert_unit_image(pixels, 10, 30)


def test_non_square_resize_keeps_axes(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)  # 60 wide, 40 high
    pixels[:, 30:] = 255  # right half white
    Image.fromarray(pixels).save(tmp_path / "halves.png")
    resized = load_image(tmp_path / "halves.png", x_size=24, y_size=16, normalization="unit")
    assert resized.shape == (16, 24, 3)
    assert resized[:, :10].max() < 0.05  # left stays black
    assert resized[:, 14:].min() > 0.95  # right stays white


def test_invalid_sizes_are_value_errors(tmp_path):
    path = save_noise_png(tmp_path / "image.png")
    for x_size, y_size in ((0, 4), (4, -1), (4.0, 4), (True, 4)):
        with pytest.raises(ValueError, match="_size"):
            load_image(path, x_size, y_size, "unit")


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def assert_load_error(path: Path, reason_words: tuple[str, ...]) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        load_image(path, 8, 8, "unit")
    error = caught.value
    assert isinstance(error, ValueError)
    assert path.name in str(error)
    assert error.path == str(path)
    assert any(word in error.reason for word in reason_words), error.reason
    assert error.reason in str(error)
    return error


def test_missing_file(tmp_path):
    assert_load_error(tmp_path / "nowhere.jpg", ("not found",))


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_load_error(tmp_path / "empty.png", ("empty",))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    noise_image(64, 64).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert_load_error(cut, ("truncated", "corrupt"))
    with pytest.raises(ImageLoadError, match="cut"):
        read_rgb(cut)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    assert_load_error(tmp_path / "notes.jpg", ("not an image",))


def test_decompression_bomb_over_module_limit(tmp_path, monkeypatch):
    path = save_noise_png(tmp_path / "big.png", width=20, height=20)
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    error = assert_load_error(path, ("decompression bomb",))
    assert "400" in error.reason  # names the pixel count
    monkeypatch.setattr(images, "MAX_PIXELS", 400)
    assert load_image(path, 8, 8, "unit").shape == (8, 8, 3)


def test_decompression_bomb_from_crafted_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_claiming(100_000, 100_000))  # 10^10 pixels, no data
    assert_load_error(path, ("decompression bomb",))


def test_pillow_decompression_bomb_warning_becomes_error(tmp_path, monkeypatch):
    path = save_noise_png(tmp_path / "big.png", width=20, height=20)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 300)  # warns above 300, errors above 600
    assert_load_error(path, ("decompression bomb",))


def test_image_load_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ImageLoadError("a/b.jpg", "empty file (0 bytes)")))
    assert (error.path, error.reason) == ("a/b.jpg", "empty file (0 bytes)")
    assert "a/b.jpg" in str(error)


# ---------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------


def random_pixels() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(0, 255, size=(5, 7, 3)).astype(np.float32)


def test_vgg16_matches_keras_preprocess_input():
    import keras

    pixels = random_pixels()
    ours = images.NORMALIZATIONS["vgg16"](pixels.copy())
    # keras modifies its input in place, so it gets its own copy.
    theirs = keras.applications.vgg16.preprocess_input(pixels.copy())
    assert ours.dtype == np.float32 and ours.shape == pixels.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    # The channel order really is reversed: blue minus its mean comes first.
    np.testing.assert_allclose(ours[..., 0], pixels[..., 2] - 103.939, atol=1e-4)


@pytest.mark.parametrize(
    "name, keras_mode", [("minus_one_to_one", "tf"), ("torch", "torch")]
)
def test_other_schemes_match_keras_modes(name, keras_mode):
    import keras

    pixels = random_pixels()
    theirs = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode=keras_mode)
    np.testing.assert_allclose(images.NORMALIZATIONS[name](pixels), theirs, atol=1e-5)


def test_unit_minus_one_to_one_and_none_ranges():
    extremes = np.array([[[0.0, 127.5, 255.0]]], dtype=np.float32)
    np.testing.assert_allclose(images.NORMALIZATIONS["unit"](extremes), [[[0.0, 0.5, 1.0]]])
    np.testing.assert_allclose(
        images.NORMALIZATIONS["minus_one_to_one"](extremes), [[[-1.0, 0.0, 1.0]]]
    )
    raw = images.NORMALIZATIONS["none"](extremes)
    np.testing.assert_array_equal(raw, extremes)
    assert raw is not extremes
    for function in images.NORMALIZATIONS.values():
        assert function(extremes).dtype == np.float32


def test_unknown_normalization_lists_valid_names(tmp_path):
    path = save_noise_png(tmp_path / "image.png")
    with pytest.raises(ValueError) as caught:
        load_image(path, 8, 8, "imagenet")
    message = str(caught.value)
    assert "imagenet" in message
    for name in images.NORMALIZATIONS:
        assert name in message
    with pytest.raises(ValueError, match="unit"):
        ImageCache(tmp_path / "cache").load(path, 8, 8, "imagenet")


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    with ImageCache(tmp_path / "cache") as image_cache:
        yield image_cache


def cache_file_of(cache: ImageCache, entry: dict) -> Path:
    return cache.cache_dir / entry["cache_file"]


def test_first_load_misses_and_records_an_entry(tmp_path, cache):
    path = save_noise_png(tmp_path / "image.png")
    pixels = cache.load(path, 16, 12, "unit")
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_array_equal(pixels, load_image(path, 16, 12, "unit"))

    assert (cache.cache_dir / "index.sqlite").is_file()
    [entry] = cache.entries()
    assert entry["source_path"] == str(path.resolve())
    assert entry["content_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (entry["x_size"], entry["y_size"], entry["normalization"]) == (16, 12, "unit")
    assert entry["array_sha256"] == hashlib.sha256(pixels.tobytes()).hexdigest()
    assert entry["created_at"]
    stored = np.load(cache_file_of(cache, entry), allow_pickle=False)
    assert cache_file_of(cache, entry).suffix == ".npy"
    np.testing.assert_array_equal(stored, pixels)


def test_second_load_is_a_hit_with_an_identical_array(tmp_path, cache):
    path = save_noise_png(tmp_path / "image.png")
    first = cache.load(path, 16, 12, "vgg16")
    second = cache.load(path, 16, 12, "vgg16")
    assert (cache.hits, cache.misses) == (1, 1)
    assert second.dtype == np.float32 and second.shape == (12, 16, 3)
    np.testing.assert_array_equal(first, second)
    assert len(cache.entries()) == 1


def test_table_persists_across_cache_objects(tmp_path):
    path = save_noise_png(tmp_path / "image.png")
    with ImageCache(tmp_path / "cache") as first_cache:
        expected = first_cache.load(path, 8, 8, "unit")
    with ImageCache(tmp_path / "cache") as second_cache:
        np.testing.assert_array_equal(second_cache.load(path, 8, 8, "unit"), expected)
        assert (second_cache.hits, second_cache.misses) == (1, 0)


def test_edited_image_at_same_path_is_not_served_stale(tmp_path, cache):
    path = tmp_path / "image.png"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(path)
    assert cache.load(path, 8, 8, "unit").max() == 0.0
    Image.new("RGB", (8, 8), (255, 255, 255)).save(path)  # same path, new content
    assert cache.load(path, 8, 8, "unit").min() == 1.0
    assert (cache.hits, cache.misses) == (0, 2)
    assert len(cache.entries()) == 2


def test_same_content_at_two_paths_shares_an_entry(tmp_path, cache):
    original = save_noise_png(tmp_path / "original.png")
    duplicate = tmp_path / "duplicate.png"
    shutil.copyfile(original, duplicate)
    first = cache.load(original, 8, 8, "unit")
    np.testing.assert_array_equal(cache.load(duplicate, 8, 8, "unit"), first)
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache.entries()) == 1


def test_size_and_normalization_are_separate_entries(tmp_path, cache):
    path = save_noise_png(tmp_path / "image.png")
    by_key = {
        (16, 12, "unit"): cache.load(path, 16, 12, "unit"),
        (12, 16, "unit"): cache.load(path, 12, 16, "unit"),
        (16, 12, "torch"): cache.load(path, 16, 12, "torch"),
    }
    assert (cache.hits, cache.misses) == (0, 3)
    assert {(e["x_size"], e["y_size"], e["normalization"]) for e in cache.entries()} == set(
        by_key
    )
    for (x_size, y_size, normalization), pixels in by_key.items():
        assert pixels.shape == (y_size, x_size, 3)
        np.testing.assert_array_equal(cache.load(path, x_size, y_size, normalization), pixels)
    assert cache.hits == 3


def truncate_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def replace_with_garbage(file: Path) -> None:
    file.write_bytes(b"definitely not an npy file")


def replace_with_float64(file: Path) -> None:
    np.save(file, np.load(file).astype(np.float64))


def replace_with_wrong_shape(file: Path) -> None:
    np.save(file, np.zeros((3, 3, 3), dtype=np.float32))


def delete(file: Path) -> None:
    file.unlink()


@pytest.mark.parametrize(
    "damage",
    [truncate_half, flip_last_byte, replace_with_garbage, replace_with_float64,
     replace_with_wrong_shape, delete],
)
def test_damaged_entry_is_rebuilt(tmp_path, cache, caplog, damage):
    path = save_noise_png(tmp_path / "image.png")
    expected = cache.load(path, 16, 12, "unit")
    [entry] = cache.entries()
    damage(cache_file_of(cache, entry))

    with caplog.at_level(logging.WARNING, logger="captioning.data.images"):
        rebuilt = cache.load(path, 16, 12, "unit")
    np.testing.assert_array_equal(rebuilt, expected)
    assert (cache.hits, cache.misses) == (0, 2)
    assert any("damaged image cache entry" in record.getMessage() for record in caplog.records)

    # The entry is whole again: the next load is a hit.
    [entry] = cache.entries()
    np.testing.assert_array_equal(np.load(cache_file_of(cache, entry)), expected)
    np.testing.assert_array_equal(cache.load(path, 16, 12, "unit"), expected)
    assert cache.hits == 1


def test_bad_source_image_raises_and_is_not_cached(tmp_path, cache):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ImageLoadError, match="notes.jpg"):
        cache.load(tmp_path / "notes.jpg", 8, 8, "unit")
    with pytest.raises(ImageLoadError, match="not found"):
        cache.load(tmp_path / "missing.png", 8, 8, "unit")
    assert cache.entries() == []
    assert list(cache.cache_dir.rglob("*.npy")) == []


def test_no_temporary_files_remain(tmp_path, cache):
    for seed in range(3):
        path = save_noise_png(tmp_path / f"image{seed}.png", seed=seed)
        cache.load(path, 8, 8, "unit")
        cache.load(path, 8, 4, "none")
    assert list(cache.cache_dir.rglob("*.tmp")) == []
    assert len(list(cache.cache_dir.rglob("*.npy"))) == 6


def test_parallel_loads_from_threads(tmp_path, cache):
    paths = [save_noise_png(tmp_path / f"image{seed}.png", seed=seed) for seed in range(5)]
    expected = {path: load_image(path, 12, 10, "unit") for path in paths}
    requests = [paths[index % len(paths)] for index in range(50)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda path: cache.load(path, 12, 10, "unit"), requests))

    for path, pixels in zip(requests, results):
        np.testing.assert_array_equal(pixels, expected[path])
    assert cache.hits + cache.misses == 50
    assert cache.misses >= len(paths)
    assert len(cache.entries()) == len(paths)
    assert list(cache.cache_dir.rglob("*.tmp")) == []


def count_array_checksums(monkeypatch) -> list:
    import captioning.data.image_cache as image_cache_module

    calls, real_checksum = [], image_cache_module._array_sha256
    monkeypatch.setattr(image_cache_module, "_array_sha256", lambda array: calls.append(1) or real_checksum(array))
    return calls


def age_file(file: Path, seconds: float) -> None:
    status = file.stat()
    os.utime(file, ns=(status.st_atime_ns, status.st_mtime_ns - int(seconds * 1e9)))


def test_a_settled_entry_is_read_without_hashing_it_again(tmp_path, cache, monkeypatch):
    """A hit hashes the array until its file has kept its size and mtime for a while after
    a matching checksum; from then on a hit is a stat and a read."""
    path = save_noise_png(tmp_path / "image.png")
    expected = cache.load(path, 16, 12, "unit")
    checksums = count_array_checksums(monkeypatch)
    cache.load(path, 16, 12, "unit")
    assert len(checksums) == 1  # just written: the mtime may not have ticked yet, so it is checked
    [entry] = cache.entries()
    age_file(cache_file_of(cache, entry), 10)  # as if written 10 s ago
    cache.load(path, 16, 12, "unit")
    assert len(checksums) == 2  # the mtime changed: checked, and now recorded as settled
    for _ in range(3):
        np.testing.assert_array_equal(cache.load(path, 16, 12, "unit"), expected)
    assert len(checksums) == 2 and cache.hits == 5


def test_a_settled_entry_altered_later_is_still_rebuilt(tmp_path, cache, caplog):
    path = save_noise_png(tmp_path / "image.png")
    expected = cache.load(path, 16, 12, "unit")
    [entry] = cache.entries()
    age_file(cache_file_of(cache, entry), 10)
    cache.load(path, 16, 12, "unit")  # recorded as settled
    flip_last_byte(cache_file_of(cache, entry))  # a new mtime
    with caplog.at_level(logging.WARNING, logger="captioning.data.images"):
        np.testing.assert_array_equal(cache.load(path, 16, 12, "unit"), expected)
    assert cache.misses == 2
    assert any("checksum does not match" in record.getMessage() for record in caplog.records)


def test_a_table_from_before_the_file_status_columns_gains_them(tmp_path):
    """A cache written by an older version keeps working: its table gets the new columns
    and its entries are checked by checksum until their status is recorded."""
    import sqlite3

    cache_dir = tmp_path / "old-cache"
    cache_dir.mkdir()
    with sqlite3.connect(cache_dir / "index.sqlite") as connection:
        connection.execute(
            "CREATE TABLE entries (cache_key TEXT PRIMARY KEY, source_path TEXT NOT NULL, content_sha256 TEXT NOT NULL, "
            "x_size INTEGER NOT NULL, y_size INTEGER NOT NULL, normalization TEXT NOT NULL, format_version INTEGER "
            "NOT NULL, cache_file TEXT NOT NULL, array_sha256 TEXT NOT NULL, created_at TEXT NOT NULL)")
    path = save_noise_png(tmp_path / "image.png")
    with ImageCache(cache_dir) as cache:
        expected = cache.load(path, 16, 12, "unit")
        np.testing.assert_array_equal(cache.load(path, 16, 12, "unit"), expected)
        [entry] = cache.entries()
        assert (cache.hits, cache.misses) == (1, 1)
        assert entry["file_size"] == cache_file_of(cache, entry).stat().st_size
