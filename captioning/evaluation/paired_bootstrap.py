"""Is one config's CIDEr-D lead over another larger than the noise of which images were scored?

A paired bootstrap over images (Koehn 2004, for BLEU; here per-image CIDEr-D): both configs
captioned the same images, so their per-image difference is resampled, image by image with
replacement, and the middle 95 % of the resampled mean differences is the interval. A lead
whose interval holds 0 is not one the images can resolve. It measures the images' noise
only: training seeds vary too, which the table's "± std" column shows.

    differences = per_image_a - per_image_b          # (images,) float, aligned by image
    low, high = bootstrap_interval(differences)      # mean(differences) lies between them

Per-image CIDEr-D comes from a run's ``captions_<split>.csv`` (its ``cider`` column,
evaluate.py), averaged over a config's seeds (``per_image_scores``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the resampling is fixed, so a table reads the same every time it is made
SCORE_COLUMN = "cider"  # per-image CIDEr-D in captions_<split>.csv


def bootstrap_interval(differences, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float]:
    """(low, high): the central ``level`` of the means of ``resamples`` resamples of the
    per-image ``differences`` (drawn with replacement, as many as there are images)."""
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 1 or differences.size == 0:
        raise ValueError(f"a paired bootstrap needs one difference per image, got shape {differences.shape}")
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie between 0 and 1, got {level}")
    generator = np.random.default_rng(seed)
    drawn = generator.integers(0, differences.size, size=(resamples, differences.size))  # (resamples, images)
    means = differences[drawn].mean(axis=1)  # (resamples,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def read_image_scores(captions_path: Path) -> dict[str, float]:
    """{image path: per-image CIDEr-D} from a ``captions_<split>.csv``."""
    captions_path = Path(captions_path)
    if not captions_path.is_file():
        raise ValueError(f"{captions_path}: no captions file, so no per-image scores to compare")
    with open(captions_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or SCORE_COLUMN not in rows[0]:
        raise ValueError(f"{captions_path}: no '{SCORE_COLUMN}' column (written by evaluations since the paired "
                         f"bootstrap was added); evaluate the run again to add it")
    return {row["image"]: float(row[SCORE_COLUMN]) for row in rows}


def per_image_scores(captions_paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """(images, scores): the images every file scored, in the first file's order, and their
    CIDEr-D averaged over the files (a config's seeds); (images,) float64."""
    tables = [read_image_scores(path) for path in captions_paths]
    images = list(tables[0])
    for path, table in zip(captions_paths[1:], tables[1:]):
        if set(table) != set(images):
            raise ValueError(f"{path} scored other images than {captions_paths[0]}: a paired comparison needs the same ones")
    scores = np.array([[table[image] for image in images] for table in tables]).mean(axis=0)  # (images,)
    return images, scores


def paired_difference(images_a: list[str], scores_a: np.ndarray, images_b: list[str],
                      scores_b: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of a's per-image score minus b's, over the images both scored."""
    if set(images_a) != set(images_b):
        raise ValueError(f"a paired comparison needs the same images: {len(set(images_a) ^ set(images_b))} "
                         f"images are scored on one side only")
    position = {image: index for index, image in enumerate(images_b)}
    differences = scores_a - scores_b[[position[image] for image in images_a]]  # (images,)
    low, high = bootstrap_interval(differences)
    return float(differences.mean()), low, high


def format_difference(mean: float, low: float, high: float) -> str:
    """"+0.018 [+0.006, +0.030]"."""
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
