"""Image files -> resized, normalized float32 arrays, with an on-disk cache.

The pipeline for one image is

    bytes on disk -> read_rgb -> uint8 (height, width, 3)
                  -> resize (Pillow BICUBIC) -> uint8 (y_size, x_size, 3)
                  -> NORMALIZATIONS[name] -> float32 (y_size, x_size, 3)

``load_image`` runs it every time; ``ImageCache.load`` returns the same array but keeps
each result as a ``.npy`` file, so a second load is a file read. Every unreadable image
raises ``ImageLoadError`` (a ``ValueError``) naming the file and the reason.

Sizes are always given as ``x_size`` (width, columns) and ``y_size`` (height, rows);
arrays are row-major, so their shape is ``(y_size, x_size, 3)``.

This module imports only numpy, Pillow, the standard library and captioning.files, so
data tools can use it without starting TensorFlow.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
import sqlite3
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioning.files import cache_write_error, cache_writes

logger = logging.getLogger(__name__)

# Largest image (width * height, read from the file header before decoding) we agree to
# decode. 100 million pixels is a 10000 x 10000 photo, far above any captioning data set,
# and its decoded RGB copy (300 MB) still fits in memory. A crafted file claiming more is
# a decompression bomb. Pillow's own warning / error (Image.MAX_IMAGE_PIXELS, about 89
# million pixels) is turned into ImageLoadError too, so the stricter of the two applies.
MAX_PIXELS = 100_000_000

# Bump when anything that changes the cached arrays changes (resize filter, conversion
# rules, normalization constants): old cache entries then stop matching and are rebuilt.
CACHE_FORMAT_VERSION = 1

# Pillow filter used to resize. Pillow's BICUBIC widens its kernel by the reduction
# factor when shrinking, so it also antialiases (unlike a plain bicubic tap); we do not
# pass reducing_gap, so the result is exact rather than a faster approximation.
RESAMPLING = Image.Resampling.BICUBIC

# Modes holding one 16-bit (or 32-bit integer) channel. Pillow's convert("RGB") clips
# them at 255, which turns almost every 16-bit image white, so we scale them ourselves.
_WIDE_GRAYSCALE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes whose alpha channel must be composited onto white (palette and plain modes with a
# "transparency" entry in image.info are handled too).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

# warnings.catch_warnings changes process-wide state; this lock keeps our own threads
# from interleaving it (which could leave the "error" filter installed forever).
_PILLOW_OPEN_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An image file could not be turned into pixels.

    Attributes:
        path: the file, as given by the caller (str).
        reason: what went wrong, in words ("file not found", "empty file (0 bytes)",
            "truncated image data (...)", "not an image (...)", "decompression bomb (...)").
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):
        # Keeps the error picklable (multiprocessing workers send errors back).
        return (type(self), (self.path, self.reason))


# ---------------------------------------------------------------------------------------
# Reading: path -> uint8 RGB
# ---------------------------------------------------------------------------------------


def _read_file_bytes(path: str | os.PathLike) -> bytes:
    """Returns the file's bytes; a missing, unreadable or empty file is ImageLoadError."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not a file") from None
    except OSError as error:
        raise ImageLoadError(path, f"cannot read file ({error.strerror or error})") from error
    _check_not_empty(data, path)
    return data


def _check_not_empty(data: bytes, path: str | os.PathLike) -> None:
    if not data:
        raise ImageLoadError(path, "empty file (0 bytes)")


def _open_image(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Parses the header only (no pixel decode) and checks the pixel count."""
    try:
        with _PILLOW_OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"decompression bomb (too many pixels: {error})") from error
    except Exception as error:  # Pillow plugins raise many types for malformed headers.
        raise ImageLoadError(
            path, f"corrupt image header ({type(error).__name__}: {error})"
        ) from error

    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            path,
            f"decompression bomb (too many pixels: {width}x{height} = {width * height} "
            f"exceeds MAX_PIXELS = {MAX_PIXELS})",
        )
    if width == 0 or height == 0:
        raise ImageLoadError(path, f"image has no pixels ({width}x{height})")
    return image


def _wide_grayscale_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale -> 8-bit RGB by dropping the low byte.

    65535 -> 255 and 32768 -> 128: values are scaled (shifted right by 8), not clipped.
    Mode "I" is assumed to hold 16-bit data (as Pillow opens 16-bit PNGs); values outside
    0..65535 are clipped after the shift.
    """
    values = np.asarray(image).astype(np.int64)  # (height, width)
    gray = np.clip(values >> 8, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray, gray, gray], axis=-1))  # mode "RGB"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _to_rgb(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Any decoded Pillow image -> mode "RGB", 8 bits per channel."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _WIDE_GRAYSCALE_MODES:
        return _wide_grayscale_to_rgb(image)
    if image.mode == "F":
        raise ImageLoadError(
            path, "unsupported mode 'F' (32-bit float pixels have no known range)"
        )
    if _has_alpha(image):
        # Transparent pixels become white (the usual background of icons and diagrams),
        # instead of whatever colour happened to be stored under alpha = 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": Pillow's conversion is right.
    # (Embedded ICC profiles are not applied.)
    return image.convert("RGB")


def _decode_rgb(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Encoded bytes -> fully decoded, upright Pillow image in mode "RGB"."""
    image = _open_image(data, path)
    try:
        image.load()  # Decode every pixel now, so truncated data fails here.
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image, path)
        image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:  # e.g. a GIF frame larger than header
        raise ImageLoadError(path, f"decompression bomb (too many pixels: {error})") from error
    except Exception as error:  # Pillow decoders raise OSError, SyntaxError, zlib.error...
        message = f"{type(error).__name__}: {error}"
        if "truncated" in str(error).lower() or isinstance(error, EOFError):
            raise ImageLoadError(path, f"truncated image data ({message})") from error
        raise ImageLoadError(path, f"corrupt image data ({message})") from error
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as upright 8-bit RGB pixels.

    Applies the EXIF orientation tag, composites transparency onto white and converts
    grayscale, palette, CMYK and 16-bit images to RGB (16-bit by dropping the low byte).

    Returns:
        uint8 array (height, width, 3), height and width after EXIF rotation.

    Raises:
        ImageLoadError: the file is missing, empty, truncated, not an image, larger than
            MAX_PIXELS, or otherwise undecodable.
    """
    data = _read_file_bytes(path)
    return np.asarray(_decode_rgb(data, path), dtype=np.uint8)


def read_rgb_bytes(data: bytes, name: str) -> np.ndarray:
    """``read_rgb`` for bytes already in memory (an upload): the same checks and messages,
    naming ``name`` (the uploaded file's name) as the file.

    Returns:
        uint8 array (height, width, 3), upright.

    Raises:
        ImageLoadError: empty, truncated, not an image, larger than MAX_PIXELS, or otherwise
            undecodable.
    """
    _check_not_empty(data, name)
    return np.asarray(_decode_rgb(data, name), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Normalization: float32 0..255 -> whatever the encoder expects
# ---------------------------------------------------------------------------------------

# ImageNet channel statistics used by the Caffe and PyTorch conventions.
_IMAGENET_MEAN_BGR_255 = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _unit(pixels: np.ndarray) -> np.ndarray:
    """[0, 255] -> [0, 1]; for the conv stack trained from scratch."""
    return (pixels / np.float32(255.0)).astype(np.float32)


def _vgg16(pixels: np.ndarray) -> np.ndarray:
    """Caffe convention (keras vgg16/resnet50 preprocess_input): RGB -> BGR, minus mean."""
    return (pixels[..., ::-1] - _IMAGENET_MEAN_BGR_255).astype(np.float32)


def _minus_one_to_one(pixels: np.ndarray) -> np.ndarray:
    """[0, 255] -> [-1, 1]; the "tf" mode of MobileNet and Inception."""
    return (pixels / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def _torch(pixels: np.ndarray) -> np.ndarray:
    """[0, 255] -> [0, 1] -> minus ImageNet mean, over ImageNet std (keras "torch" mode)."""
    return ((pixels / np.float32(255.0) - _IMAGENET_MEAN_RGB) / _IMAGENET_STD_RGB).astype(
        np.float32
    )


def _none(pixels: np.ndarray) -> np.ndarray:
    """Raw [0, 255] values; for backbones (EfficientNet) that rescale inside the model."""
    return np.array(pixels, dtype=np.float32)  # a copy, so callers may modify it


# Name -> function taking float32 (height, width, 3) RGB in [0, 255] and returning a new
# float32 array of the same shape.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "unit": _unit,
    "vgg16": _vgg16,
    "minus_one_to_one": _minus_one_to_one,
    "torch": _torch,
    "none": _none,
}


# The inverse of each scheme, for looking at what an encoder gets: normalized float32
# (height, width, 3) -> RGB in [0, 255] (clip it before display).
DENORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "unit": lambda image: image * np.float32(255.0),
    "vgg16": lambda image: (image + _IMAGENET_MEAN_BGR_255)[..., ::-1],  # BGR minus mean -> RGB
    "minus_one_to_one": lambda image: (image + np.float32(1.0)) * np.float32(127.5),
    "torch": lambda image: (image * _IMAGENET_STD_RGB + _IMAGENET_MEAN_RGB) * np.float32(255.0),
    "none": lambda image: image,
}


def displayable(image: np.ndarray, normalization: str) -> np.ndarray:
    """An image as ``NORMALIZATIONS[normalization]`` made it -> float32 RGB in [0, 1] to show."""
    if normalization not in DENORMALIZATIONS:
        valid = ", ".join(sorted(DENORMALIZATIONS))
        raise ValueError(f"unknown normalization {normalization!r}; valid names: {valid}")
    rgb = DENORMALIZATIONS[normalization](np.asarray(image, dtype=np.float32))
    return np.clip(rgb / np.float32(255.0), 0.0, 1.0).astype(np.float32)


def get_normalization(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Returns NORMALIZATIONS[name]; an unknown name is a ValueError listing valid ones."""
    try:
        return NORMALIZATIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(NORMALIZATIONS))
        raise ValueError(f"unknown normalization {name!r}; valid names: {valid}") from None


def _check_sizes(x_size: int, y_size: int) -> None:
    for name, value in (("x_size", x_size), ("y_size", y_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------
# Loading without a cache
# ---------------------------------------------------------------------------------------


def _pixels_from_bytes(
    data: bytes, path: str | os.PathLike, x_size: int, y_size: int, normalization: str
) -> np.ndarray:
    return _resized_normalized(_decode_rgb(data, path), x_size, y_size, normalization)


def _resized_normalized(image: Image.Image, x_size: int, y_size: int, normalization: str) -> np.ndarray:
    """An RGB Pillow image -> float32 (y_size, x_size, 3), resized and normalized."""
    if image.size != (x_size, y_size):
        image = image.resize((x_size, y_size), RESAMPLING)
    pixels = np.asarray(image, dtype=np.float32)  # (y_size, x_size, 3), 0..255
    return np.ascontiguousarray(get_normalization(normalization)(pixels), dtype=np.float32)


def load_pil_image(image: Image.Image, x_size: int, y_size: int, normalization: str,
                   source: str = "a PIL image") -> np.ndarray:
    """``load_image`` for an image already in memory: converted to RGB as files are
    (transparency onto white, grayscale and palette expanded), resized and normalized.

    Returns float32 (y_size, x_size, 3); ``source`` names the image in errors."""
    _check_sizes(x_size, y_size)
    get_normalization(normalization)
    return _resized_normalized(_to_rgb(image, source), x_size, y_size, normalization)


def load_image(
    path: str | os.PathLike, x_size: int, y_size: int, normalization: str
) -> np.ndarray:
    """Reads, resizes (Pillow BICUBIC, aspect ratio not kept) and normalizes one image.

    Args:
        path: image file (any format Pillow reads).
        x_size: output width in pixels.
        y_size: output height in pixels.
        normalization: a key of NORMALIZATIONS ("unit", "vgg16", ...).

    Returns:
        float32 array (y_size, x_size, 3), RGB (BGR for "vgg16"), range set by the
        normalization.

    Raises:
        ValueError: bad size or unknown normalization (checked before reading the file).
        ImageLoadError: the file cannot be read as an image (see read_rgb).
    """
    _check_sizes(x_size, y_size)
    get_normalization(normalization)
    data = _read_file_bytes(path)
    return _pixels_from_bytes(data, path, x_size, y_size, normalization)


# ---------------------------------------------------------------------------------------
# The on-disk cache
# ---------------------------------------------------------------------------------------

_TABLE_COLUMNS = (
    "cache_key",
    "source_path",
    "content_sha256",
    "x_size",
    "y_size",
    "normalization",
    "format_version",
    "cache_file",
    "array_sha256",
    "created_at",
    "file_size",
    "file_mtime_ns",
    "stat_recorded_ns",
)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS entries (
    cache_key      TEXT PRIMARY KEY,  -- sha256 of the fields that determine the array
    source_path    TEXT NOT NULL,     -- absolute path the entry was (last) built from
    content_sha256 TEXT NOT NULL,     -- sha256 of the source file's bytes
    x_size         INTEGER NOT NULL,
    y_size         INTEGER NOT NULL,
    normalization  TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    cache_file     TEXT NOT NULL,     -- .npy path relative to the cache directory
    array_sha256   TEXT NOT NULL,     -- sha256 of the array bytes (see _read_entry for when it is checked)
    created_at     TEXT NOT NULL,     -- UTC, ISO 8601
    file_size      INTEGER,           -- the .npy file's size and mtime when its checksum last matched,
    file_mtime_ns  INTEGER,           --   and when that was (time.time_ns()); NULL in tables
    stat_recorded_ns INTEGER          --   written before these columns existed
)
"""

# Columns added after the first release, with their types: an older table gains them.
_ADDED_COLUMNS = {"file_size": "INTEGER", "file_mtime_ns": "INTEGER", "stat_recorded_ns": "INTEGER"}

# A cache file whose size and mtime are those recorded with its last matching checksum is
# read without hashing it again, but only when the record was taken this many nanoseconds
# after the mtime: a file changed within the same filesystem timestamp tick as it was
# written (ticks are milliseconds on Linux, 2 s on FAT) could otherwise keep its mtime.
_SETTLED_NS = 2_000_000_000

# Seconds a process waits for another process's write lock on index.sqlite.
_SQLITE_TIMEOUT_SECONDS = 60.0


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


class ImageCache:
    """``load_image`` with its results kept as ``.npy`` files under ``cache_dir``.

    An entry is keyed by the sha256 of the image file's bytes, x_size, y_size, the
    normalization and CACHE_FORMAT_VERSION: an image edited in place is never served
    stale, and identical files at two paths share one entry. The table
    ``cache_dir/index.sqlite`` has one row per entry (see ``entries()``), including a
    sha256 of the array; a missing, truncated or altered ``.npy`` file, or one with the
    wrong shape or dtype, is logged, discarded and rebuilt from the image. The checksum is
    skipped on a read while the file keeps the size and mtime it had when the checksum
    last matched (``_read_entry``): a hit is then a stat, a table lookup and a file read.

    ``load`` may be called from several threads at once (tf.data does); several
    processes may share one cache directory (files are replaced atomically and SQLite
    serializes the table writes). Failures to decode the image are raised as
    ImageLoadError and never cached. A full disk or a read-only cache directory raises one
    CacheWriteError naming the directory (an entry whose row could not be written loses its
    file too); a read-only directory whose entries are all there still serves them.

    Attributes:
        cache_dir: Path of the cache directory (created if missing).
        hits: loads answered from the cache.
        misses: loads that decoded the image (no entry, or a damaged one).
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        # One connection shared by all threads; every use holds self._lock.
        self._lock = threading.Lock()
        with cache_writes(self.cache_dir, "image cache", _CACHE_SETTING):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(
                self.cache_dir / "index.sqlite",
                timeout=_SQLITE_TIMEOUT_SECONDS,
                check_same_thread=False,
                isolation_level=None,  # autocommit: every statement is its own transaction
            )
            with self._lock:
                self._connection.execute(_CREATE_TABLE)
                present = {row[1] for row in self._connection.execute("PRAGMA table_info(entries)")}
                for column, column_type in _ADDED_COLUMNS.items():
                    if column not in present:
                        try:
                            self._connection.execute(f"ALTER TABLE entries ADD COLUMN {column} {column_type}")
                        except sqlite3.OperationalError as error:  # another process added it meanwhile
                            if _sqlite_write_failure(error):
                                raise
        except sqlite3.OperationalError as error:
            reason = _sqlite_write_failure(error)
            if reason is None:
                raise
            raise cache_write_error(self.cache_dir, "image cache", _CACHE_SETTING, reason) from error

    # -- public ---------------------------------------------------------------------

    def load(
        self, path: str | os.PathLike, x_size: int, y_size: int, normalization: str
    ) -> np.ndarray:
        """Same contract as ``load_image``: float32 (y_size, x_size, 3).

        The image file is read (and hashed) on every call; only the decode, resize and
        normalization are skipped on a hit. The returned array is the caller's to modify.
        """
        _check_sizes(x_size, y_size)
        get_normalization(normalization)
        x_size, y_size = int(x_size), int(y_size)
        data = _read_file_bytes(path)
        content_sha256 = hashlib.sha256(data).hexdigest()
        cache_key = hashlib.sha256(
            f"{CACHE_FORMAT_VERSION}|{content_sha256}|{x_size}|{y_size}|{normalization}".encode()
        ).hexdigest()

        row = self._find_row(cache_key)
        if row is not None:
            pixels = self._read_entry(row, path)
            if pixels is not None:
                with self._lock:
                    self.hits += 1
                return pixels
            self._discard_row(row)

        # Decode from the same bytes we hashed, so the key always matches the content.
        pixels = _pixels_from_bytes(data, path, x_size, y_size, normalization)
        with self._lock:
            self.misses += 1
        self._write_entry(
            cache_key=cache_key,
            source_path=os.path.abspath(os.fspath(path)),
            content_sha256=content_sha256,
            x_size=x_size,
            y_size=y_size,
            normalization=normalization,
            pixels=pixels,
        )
        return pixels

    def entries(self) -> list[dict]:
        """Rows of the table, oldest first, as dicts keyed by column name.

        Columns: cache_key, source_path, content_sha256, x_size, y_size, normalization,
        format_version, cache_file (relative to cache_dir), array_sha256, created_at.
        """
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {', '.join(_TABLE_COLUMNS)} FROM entries ORDER BY created_at, rowid"
            ).fetchall()
        return [dict(zip(_TABLE_COLUMNS, row)) for row in rows]

    def close(self) -> None:
        """Closes the table's database connection; the cache is unusable afterwards."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageCache({str(self.cache_dir)!r}, hits={self.hits}, misses={self.misses})"

    # -- internals ------------------------------------------------------------------

    def _find_row(self, cache_key: str) -> dict | None:
        with self._lock:
            row = self._connection.execute(
                f"SELECT {', '.join(_TABLE_COLUMNS)} FROM entries WHERE cache_key = ?",
                (cache_key,),
            ).fetchone()
        return None if row is None else dict(zip(_TABLE_COLUMNS, row))

    def _read_entry(self, row: dict, path: str | os.PathLike) -> np.ndarray | None:
        """The cached array if its file is intact, else None (after logging why).

        The array's sha256 is checked unless the file's size and mtime are the ones
        recorded when it last matched (and that record is settled, see _SETTLED_NS):
        hashing 600 KB (224 x 224 float32) costs about three times the read itself. A
        file altered in place gets a new mtime, so it is checked and rebuilt.
        """
        cache_file = self.cache_dir / row["cache_file"]
        expected_shape = (row["y_size"], row["x_size"], 3)
        try:
            status = cache_file.stat()
            pixels = np.load(cache_file, allow_pickle=False)
        except FileNotFoundError:
            problem = "cache file is missing"
        except (OSError, ValueError, EOFError, SyntaxError, MemoryError) as error:
            problem = f"cache file is unreadable ({type(error).__name__}: {error})"
        else:
            if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
                problem = f"cache file holds dtype {getattr(pixels, 'dtype', None)}, not float32"
            elif pixels.shape != expected_shape:
                problem = f"cache file holds shape {pixels.shape}, not {expected_shape}"
            elif _is_settled(row, status):
                return pixels
            elif _array_sha256(pixels) != row["array_sha256"]:
                problem = "cache file checksum does not match the table"
            else:
                if time.time_ns() - status.st_mtime_ns >= _SETTLED_NS:  # else the record would not be settled
                    self._record_stat(row["cache_key"], status)
                return pixels
        logger.warning(
            "Rebuilding damaged image cache entry %s for %s: %s",
            cache_file,
            os.fspath(path),
            problem,
        )
        return None

    def _record_stat(self, cache_key: str, status: os.stat_result) -> None:
        """Remembers the size and mtime of a cache file whose checksum has just matched."""
        try:
            with self._lock:
                self._connection.execute(
                    "UPDATE entries SET file_size = ?, file_mtime_ns = ?, stat_recorded_ns = ? WHERE cache_key = ?",
                    (status.st_size, status.st_mtime_ns, time.time_ns(), cache_key),
                )
        except sqlite3.OperationalError as error:  # locked too long: the next read checks again
            logger.warning("Could not record image cache file status %s: %s", cache_key, error)

    def _discard_row(self, row: dict) -> None:
        """Forgets a damaged entry (only if no other thread has rebuilt it meanwhile).

        The damaged file itself is left to be overwritten by the rebuild: deleting it
        could remove a file another thread has just rebuilt under the same name.
        """
        with self._lock:
            self._connection.execute(
                "DELETE FROM entries WHERE cache_key = ? AND array_sha256 = ? "
                "AND created_at = ?",
                (row["cache_key"], row["array_sha256"], row["created_at"]),
            )

    def _write_entry(
        self,
        *,
        cache_key: str,
        source_path: str,
        content_sha256: str,
        x_size: int,
        y_size: int,
        normalization: str,
        pixels: np.ndarray,
    ) -> None:
        """Writes the .npy file atomically, then its table row.

        A full disk or a read-only directory raises CacheWriteError naming the cache
        directory (the temporary file is gone, and a file whose row could not be written is
        removed). Other failures to write are logged, not raised: the caller already has its
        array, and the next load simply tries again.
        """
        # Two-character subdirectories keep any one directory small (COCO has 120k images).
        relative_file = Path(cache_key[:2]) / f"{cache_key}.npy"
        cache_file = self.cache_dir / relative_file
        try:
            with cache_writes(self.cache_dir, "image cache", _CACHE_SETTING):
                cache_file.parent.mkdir(exist_ok=True)
                _write_npy_atomically(cache_file, pixels)
                status = cache_file.stat()
        except OSError as error:
            logger.warning("Could not write image cache file %s: %s", cache_file, error)
            return
        created_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        row = (
            cache_key,
            source_path,
            content_sha256,
            x_size,
            y_size,
            normalization,
            CACHE_FORMAT_VERSION,
            relative_file.as_posix(),
            _array_sha256(pixels),
            created_at,
            status.st_size,
            status.st_mtime_ns,
            time.time_ns(),
        )
        try:
            with self._lock:
                self._connection.execute(
                    f"INSERT OR REPLACE INTO entries ({', '.join(_TABLE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_TABLE_COLUMNS))})",
                    row,
                )
        except sqlite3.OperationalError as error:  # e.g. locked by another process too long
            reason = _sqlite_write_failure(error)
            if reason is None:
                logger.warning("Could not record image cache entry %s: %s", cache_file, error)
                return
            cache_file.unlink(missing_ok=True)  # no file without its row
            raise cache_write_error(self.cache_dir, "image cache", _CACHE_SETTING, reason) from error


# What to change to move the image cache, named by its write errors.
_CACHE_SETTING = "images.cache_dir (or set images.cache=false)"

# SQLite's messages for the failures a cache cannot work around (it reports no errno).
_SQLITE_WRITE_FAILURES = {"disk is full": "no space left on the device",
                          "readonly database": "the folder or index.sqlite is read-only",
                          "unable to open database file": "cannot create index.sqlite there (read-only or no permission)"}


def _sqlite_write_failure(error: sqlite3.OperationalError) -> str | None:
    message = str(error)
    return next((reason for text, reason in _SQLITE_WRITE_FAILURES.items() if text in message), None)


def _is_settled(row: dict, status: os.stat_result) -> bool:
    """Whether the file is as it was when its checksum last matched (see _SETTLED_NS)."""
    return (row["file_size"] == status.st_size and row["file_mtime_ns"] == status.st_mtime_ns
            and row["stat_recorded_ns"] is not None and row["stat_recorded_ns"] - status.st_mtime_ns >= _SETTLED_NS)


def _write_npy_atomically(destination: Path, array: np.ndarray) -> None:
    """Saves ``array`` so that readers see either no file or the complete file.

    Writes a temporary file in the destination's directory, flushes and fsyncs it, then
    renames it over the destination (os.replace is atomic within one file system).
    """
    file_descriptor, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.stem}.", suffix=".tmp"
    )
    try:
        with os.fdopen(file_descriptor, "wb") as file:
            np.save(file, array, allow_pickle=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, destination)
    except BaseException:
        try:
            os.unlink(temporary_name)
        except FileNotFoundError:
            pass
        raise
