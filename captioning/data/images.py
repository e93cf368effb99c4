"""Image files -> resized, normalized float32 arrays, with an on-disk cache.

The pipeline for one image is

    bytes on disk -> read_rgb -> uint8 (height, width, 3)
                  -> resize (Pillow BICUBIC) -> uint8 (y_size, x_size, 3)
                  -> NORMALIZATIONS[name] -> float32 (y_size, x_size, 3)

``load_image`` runs it every time; ``ImageCache.load`` returns the same array but keeps
each result as a ``.npy`` file (image_cache.py), so a second load is a file read. Every unreadable image
raises ``ImageLoadError`` (a ``ValueError``) naming the file and the reason.

Sizes are always given as ``x_size`` (width, columns) and ``y_size`` (height, rows);
arrays are row-major, so their shape is ``(y_size, x_size, 3)``.

This module imports only numpy, Pillow, the standard library and captioning.files, so
data tools can use it without starting TensorFlow.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Largest image (width * height, read from the file header before decoding) we agree to
# decode. 100 million pixels is a 10000 x 10000 photo, far above any captioning data set,
# and its decoded RGB copy (300 MB) still fits in memory. A crafted file claiming more is
# a decompression bomb. Pillow's own warning / error (Image.MAX_IMAGE_PIXELS, about 89
# million pixels) is turned into ImageLoadError too, so the stricter of the two applies.
MAX_PIXELS = 100_000_000


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


def read_file_bytes(path: str | os.PathLike) -> bytes:
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
    data = read_file_bytes(path)
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


def check_sizes(x_size: int, y_size: int) -> None:
    for name, value in (("x_size", x_size), ("y_size", y_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------
# Loading without a cache
# ---------------------------------------------------------------------------------------


def pixels_from_bytes(
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
    check_sizes(x_size, y_size)
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
    check_sizes(x_size, y_size)
    get_normalization(normalization)
    data = read_file_bytes(path)
    return pixels_from_bytes(data, path, x_size, y_size, normalization)
