"""Caption sources: every data set is read into the same list of ``CaptionedImage``.

A data set is a function ``load_split(data_config, split) -> list[CaptionedImage]``
registered in ``DATASETS`` under the name that ``data_config.name`` selects:

    from captioning.data.datasets import load_split
    train_images = load_split(config.data, "train")
    train_images[0].image_path   # "data/shapes/train/images/train_00000.png"
    train_images[0].captions     # ("a small red circle", ...)

Adding a source means writing its module (for example ``flickr8k.py``) with a
``load_split`` function and adding one line to the registry at the bottom of this file.
The split rules and file readers that several sources share are in ``csv_source``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image file and its reference captions (five for shapes and Flickr8k)."""

    image_path: str
    captions: tuple[str, ...]


class DatasetError(ValueError):
    """Data on disk is missing or malformed; the message names the file and the problem."""


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


from captioning.data.datasets import coco, csv_source, flickr, karpathy, shapes  # noqa: E402  (needs the names defined above)

DATASETS["shapes"] = shapes.load_split
DATASETS["flickr8k"] = flickr.load_flickr8k_split
DATASETS["flickr30k"] = flickr.load_flickr30k_split
DATASETS["coco"] = coco.load_split
DATASETS["karpathy"] = karpathy.load_split
DATASETS["csv"] = csv_source.load_split
