"""Batch captioning: many image files (and folders of them) -> one row per image in a CSV or JSONL file.

    paths = image_paths(["a.jpg", "b.png", "some/folder/"])
    rows = caption_files(captioner, paths, top=3)      # the model is loaded once, by the caller
    write_rows(rows, "captions.csv")

A file that cannot be read becomes a row with its ``error`` and an empty caption; the
others go on. Each row: ``path``, ``caption`` (the best beam with ``top``), with ``top``
also ``log_probability`` and ``caption_2``, ``log_probability_2`` ... up to ``top``, then
``error`` (empty when the image was captioned).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioning.data.images import ImageLoadError
from captioning.files import write_csv_rows, write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = (".csv", ".jsonl")


class BatchCaptionError(ValueError):
    """A folder without images, or an output file of an unknown format."""


def image_paths(inputs: list[str]) -> list[str]:
    """Files as given, and for each folder its image files (by extension, any depth, sorted).

    A path that does not exist stays in the list: it becomes a row with its error."""
    paths = []
    for text in inputs:
        path = Path(text)
        if not path.is_dir():
            paths.append(text)
            continue
        found = sorted(str(child) for child in path.rglob("*")
                       if child.suffix.lower() in IMAGE_EXTENSIONS and child.is_file()
                       and not any(part.startswith(".") for part in child.relative_to(path).parts))
        if not found:
            raise BatchCaptionError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(found)
    return paths


def check_output_path(path: str | Path) -> None:
    if Path(path).suffix.lower() not in OUTPUT_FORMATS:
        raise BatchCaptionError(f"{path}: the output must end in {' or '.join(OUTPUT_FORMATS)}")


def read_or_error(reader, path: bytes) -> tuple[np.ndarray, bytes]:
    """An image for ``reader`` and b"", or zeros and the error's text when it cannot be read."""
    try:
        return reader(path.decode()), b""
    except ImageLoadError as error:
        return np.zeros(reader.shape, np.float32), str(error).encode()


def image_batches(paths: list[str], reader, batch_size: int):
    """tf.data batches of (images (batch, y_size, x_size, 3) float32, errors (batch,) string),
    read in parallel and in order; an unreadable image is zeros with its error."""
    import tensorflow as tf

    def read(path):
        image, error = tf.numpy_function(lambda value: read_or_error(reader, value), [path], (tf.float32, tf.string))
        return tf.ensure_shape(image, reader.shape), tf.ensure_shape(error, ())

    dataset = tf.data.Dataset.from_tensor_slices(paths)
    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def caption_files(captioner, paths: list[str], batch_size: int = 32, top: int | None = None,
                  progress: bool = False) -> list[dict]:
    """One row per path, in order (see the module docstring), captioned in batches.

    top: None for the model's sampler; n for the n best beams (beam search of the
    generation config's width, at least n) with their log-probabilities."""
    import keras

    rows = []
    progress_bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    for images, errors in image_batches(paths, captioner.reader, batch_size):
        errors = [error.decode() for error in errors.numpy()]
        if top is None:
            results = [[(caption, None)] for caption in captioner.caption_images(images)]
        else:
            results = captioner.top_captions_images(images, top)
        for error, beams in zip(errors, results):
            rows.append(caption_row(paths[len(rows)], beams, error, top))
        if progress_bar is not None:
            progress_bar.update(len(rows))
    return rows


def caption_row(path: str, beams: list[tuple[str, float | None]], error: str, top: int | None) -> dict:
    row = {"path": path}
    for rank in range(1, (top or 1) + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        caption, score = beams[rank - 1] if not error and rank <= len(beams) else ("", None)
        row[f"caption{suffix}"] = caption
        if top is not None:
            row[f"log_probability{suffix}"] = None if score is None else round(score, 4)
    row["error"] = error
    return row


def write_rows(rows: list[dict], path: str | Path) -> None:
    """CSV (one header line, then a line per image) or JSONL (one JSON object per line), atomically."""
    check_output_path(path)
    if Path(path).suffix.lower() == ".csv":
        write_csv_rows(path, rows)
    else:
        write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def failed_count(rows: list[dict]) -> int:
    return sum(1 for row in rows if row["error"])
