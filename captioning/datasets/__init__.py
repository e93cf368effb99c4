"""Caption sources: every data set is read into the same list of ``CaptionedImage``.

A data set is a function ``load_split(data_config, split) -> list[CaptionedImage]``
registered in ``DATASETS`` under the name that ``data_config.name`` selects:

    from captioning.datasets import load_split
    train_images = load_split(config.data, "train")
    train_images[0].image_path   # "data/shapes/train/images/train_00000.png"
    train_images[0].captions     # ("a small red circle", ...)

Adding a source means writing its module (for example ``flickr8k.py``) with a
``load_split`` function and adding one line to the registry at the bottom of this file.
``read_caption_csv`` reads the ``image,caption`` CSV layout that several sources share.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Callable

SPLITS = ("train", "val", "test")

# How many missing image names an error message lists before it stops.
MISSING_NAMES_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image file and its reference captions (five for shapes and Flickr8k)."""

    image_path: str
    captions: tuple[str, ...]


class DatasetError(ValueError):
    """Data on disk is missing or malformed; the message names the file and the problem."""


def read_caption_csv(csv_path: str | Path, images_dir: str | Path) -> list[CaptionedImage]:
    """Reads a CSV with header ``image,caption`` into one ``CaptionedImage`` per image.

    An image usually has several rows (one per caption); images come back in the order
    their first row appears, captions in row order. Image names are file paths relative
    to ``images_dir``. Blank lines are skipped; other columns are ignored.

    Raises DatasetError when the file is missing, the header lacks ``image`` or
    ``caption``, a row has an empty image name or caption (with its line number), or
    images named in the CSV are not on disk (how many, and the first few names).
    """
    csv_path = Path(csv_path)
    images_dir = Path(images_dir)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: caption file not found")

    captions_by_image: dict[str, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{csv_path}: file is empty; expected a header line 'image,caption'")
        columns = [name.strip() for name in header]
        missing_columns = [name for name in ("image", "caption") if name not in columns]
        if missing_columns:
            raise DatasetError(
                f"{csv_path}: line 1: header {','.join(columns)!r} lacks column(s) "
                f"{', '.join(missing_columns)}; expected 'image,caption'"
            )
        image_column = columns.index("image")
        caption_column = columns.index("caption")
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            line_number = reader.line_num
            if len(row) <= max(image_column, caption_column):
                raise DatasetError(
                    f"{csv_path}: line {line_number}: expected {len(columns)} fields "
                    f"({','.join(columns)}), got {len(row)}"
                )
            image_name = row[image_column].strip()
            caption = row[caption_column].strip()
            if not image_name:
                raise DatasetError(f"{csv_path}: line {line_number}: empty image name")
            if not caption:
                raise DatasetError(f"{csv_path}: line {line_number}: empty caption for image {image_name!r}")
            captions_by_image.setdefault(image_name, []).append(caption)

    missing_images = [name for name in captions_by_image if not (images_dir / name).is_file()]
    if missing_images:
        shown = ", ".join(missing_images[:MISSING_NAMES_SHOWN])
        more = " ..." if len(missing_images) > MISSING_NAMES_SHOWN else ""
        raise DatasetError(
            f"{csv_path}: {len(missing_images)} of {len(captions_by_image)} images named in the file "
            f"are missing from {images_dir}: {shown}{more}"
        )
    return [
        CaptionedImage(image_path=str(images_dir / name), captions=tuple(captions))
        for name, captions in captions_by_image.items()
    ]


# Data set name -> load_split(data_config, split). Filled in at the bottom of this file,
# after the names above exist, because the adapters import them from this package.
DATASETS: dict[str, Callable[..., list[CaptionedImage]]] = {}


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """The images and captions of one split of the data set ``data_config.name`` selects.

    data_config: ``captioning.config.DataConfig``.
    split: one of ``SPLITS``.
    Raises DatasetError for an unknown data set or split, or a split with no images.
    """
    if data_config.name not in DATASETS:
        raise DatasetError(
            f"unknown data set {data_config.name!r} (data.name); valid names: {', '.join(sorted(DATASETS))}"
        )
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    captioned_images = DATASETS[data_config.name](data_config, split)
    if not captioned_images:
        raise DatasetError(
            f"data set {data_config.name!r} split {split!r} (root {data_config.root}) has no images"
        )
    return captioned_images


from captioning.datasets import coco, csv_source, flickr, karpathy, shapes  # noqa: E402  (needs the names defined above)

DATASETS["shapes"] = shapes.load_split
DATASETS["flickr8k"] = flickr.load_flickr8k_split
DATASETS["flickr30k"] = flickr.load_flickr30k_split
DATASETS["coco"] = coco.load_split
DATASETS["karpathy"] = karpathy.load_split
DATASETS["csv"] = csv_source.load_split
