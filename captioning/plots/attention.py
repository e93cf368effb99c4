"""The attention picture: the image once per generated word, with that word's attention map."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from captioning.files import atomic_path  # noqa: E402

COLUMNS = 5  # panels per row; a shapes caption of ~10 words fits in two rows


def upsample(attention_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """(grid_height, grid_width) float -> (height, width) float32, bilinear, over its maximum:
    the most attended region is 1, and uniform attention stays uniform (not stretched)."""
    resized = np.asarray(Image.fromarray(attention_map.astype(np.float32)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32)
    peak = resized.max()
    return resized / peak if peak > 0 else resized


def plot_attention(image: np.ndarray, words: list[str], attention: np.ndarray, path: str | Path,
                   title: str = "") -> None:
    """image: (height, width, 3) float in [0, 1]; words: the generated words, in order;
    attention: (len(words), grid_height, grid_width), word k's attention weights (each
    map sums to 1). Writes one PNG with a panel per word: the image, the upsampled map
    over it (brighter = more attention) and the word as the panel's title."""
    height, width = image.shape[:2]
    columns = max(1, min(COLUMNS, len(words)))
    rows = max(1, math.ceil(len(words) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows + 0.4), dpi=100, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, word, attention_map in zip(axes.flat, words, attention):
        axis.imshow(image)
        axis.imshow(upsample(attention_map, height, width), cmap="gray", alpha=0.6, vmin=0, vmax=1)
        axis.set_title(word)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
