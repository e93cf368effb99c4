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

A source that knows what each image shows can offer metrics beyond the caption metrics
(``Dataset.extra_metrics``): shapes knows the objects it drew, so it scores the colour,
shape and relation words of a caption (``shapes_words``). Evaluation asks
``extra_metrics(data_config, ...)`` and never the data set's name.
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


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered caption source."""

    # (data_config, split) -> the split's images and captions.
    load_split: Callable[..., list[CaptionedImage]]
    # (data_config, split, image_paths, captions) -> {metric name: value} beyond the caption
    # metrics, for generated captions of those images of that split; None: the source offers none.
    extra_metrics: Callable[..., dict] | None = None


# Data set name (``data.name``) -> Dataset. Filled in at the bottom of this file, after the
# names above exist, because the adapters import them from this package.
DATASETS: dict[str, Dataset] = {}


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r} (data.name); valid names: {', '.join(sorted(DATASETS))}")


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """The images and captions of one split of the data set ``data_config.name`` selects.

    data_config: ``captioning.config.DataConfig``.
    split: one of ``SPLITS``.
    Raises DatasetError for an unknown data set or split, or a split with no images.
    """
    check_dataset_name(data_config.name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    captioned_images = DATASETS[data_config.name].load_split(data_config, split)
    if not captioned_images:
        raise DatasetError(
            f"data set {data_config.name!r} split {split!r} (root {data_config.root}) has no images"
        )
    return captioned_images


def extra_metrics(data_config, split: str, image_paths: list[str], captions: list[str]) -> dict:
    """The metrics the data set ``data_config.name`` offers beyond the caption metrics (see
    ``Dataset.extra_metrics``) for ``captions`` of ``image_paths`` from ``split``; {} when none."""
    check_dataset_name(data_config.name)
    metrics = DATASETS[data_config.name].extra_metrics
    return metrics(data_config, split, image_paths, captions) if metrics is not None else {}


from captioning.data.datasets import coco, csv_source, flickr, karpathy, shapes, shapes_words  # noqa: E402  (needs the names defined above)

DATASETS["shapes"] = Dataset(shapes.load_split, extra_metrics=shapes_words.shapes_word_accuracies)
DATASETS["flickr8k"] = Dataset(flickr.load_flickr8k_split)
DATASETS["flickr30k"] = Dataset(flickr.load_flickr30k_split)
DATASETS["coco"] = Dataset(coco.load_split)
DATASETS["karpathy"] = Dataset(karpathy.load_split)
DATASETS["csv"] = Dataset(csv_source.load_split)
