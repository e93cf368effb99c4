"""What the encoder sees: one image's way through it, as PNGs.

    inspect_image("photo.jpg", Path("runs/inspect/photo"), config, captioner=None)

writes into the output folder

    input.png                 the image as the encoder gets it: resized to x_size x y_size
                              and normalized, mapped back to colours for display
    filters_<layer>.png       the first convolution's kernels as RGB patches
    features_<k>_<layer>.png  for each block k: the channels with the highest mean activation
    attention.png             attention decoders only: one panel per generated word

With a ``captioner`` (a trained run), titles carry its caption; without one the encoder is
built fresh from ``config`` (its own weights: ImageNet, a file, or random), so any photo
can be inspected with any encoder in the registry. (The module is not called inspect.py:
that would shadow the standard library's ``inspect`` for scripts run from this folder.)
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from captioning.captioner import Captioner  # noqa: E402
from captioning.config import ConfigError, ExperimentConfig, load_config  # noqa: E402
from captioning.data.images import displayable, load_image, read_rgb  # noqa: E402
from captioning.files import atomic_path  # noqa: E402
from captioning.models.caption_model import image_shape  # noqa: E402
from captioning.models.encoders import build_encoder, normalization_for  # noqa: E402
from captioning.plots.attention import plot_attention  # noqa: E402
from captioning.runs import RunError, latest_run  # noqa: E402

TOP_CHANNELS = 16  # feature maps shown per block: a 4 x 4 grid stays legible
MAX_FILTERS = 64  # first-layer kernels shown: all of VGG16's 64, the first 64 of wider stems
DPI = 100
TILE_PIXELS = 96  # each panel's side in a grid; small maps and kernels are enlarged to it
LABEL_PIXELS = 16  # the band above each panel for its label
# Figure sizes in inches; each PNG is exactly (width * DPI, height * DPI) pixels.
INPUT_FIGURE = (5.0, 5.6)
GRID_FIGURE = (8.0, 8.8)

# Normalizations whose channels are BGR: the first convolution's kernel reads B, G, R.
BGR_NORMALIZATIONS = ("vgg16",)


def strongest_channels(feature_map: np.ndarray, count: int = TOP_CHANNELS) -> np.ndarray:
    """feature_map: (height, width, channels). Returns the indices of the ``count`` channels
    with the highest mean activation, highest first."""
    means = feature_map.mean(axis=(0, 1))  # (channels,)
    return np.argsort(-means, kind="stable")[:count]


def filter_patches(kernel: np.ndarray, bgr: bool, count: int = MAX_FILTERS) -> np.ndarray:
    """kernel: (size, size, 3, filters) of the convolution reading the image. Returns
    (min(count, filters), size, size, 3) RGB patches, each scaled to [0, 1] on its own (a
    filter's pattern, not its strength, is what shows)."""
    patches = np.moveaxis(np.asarray(kernel, dtype=np.float32), 3, 0)[:count]  # (filters, size, size, 3)
    if bgr:
        patches = patches[..., ::-1]
    low = patches.min(axis=(1, 2, 3), keepdims=True)
    span = patches.max(axis=(1, 2, 3), keepdims=True) - low
    return (patches - low) / np.where(span > 0, span, 1.0)


def _title(heading: str, caption: str | None, source: str) -> str:
    said = f"caption: {caption}" if caption is not None else f"no caption ({source})"
    return "\n".join(textwrap.wrap(heading, 90) + textwrap.wrap(said, 90))


def _save(figure, path: Path, title: str) -> Path:
    """Writes the PNG with its title also as text (the PNG "Description"), for tools and tests."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, metadata={"Description": title})
    plt.close(figure)
    return path


def _tile(rgb: np.ndarray) -> np.ndarray:
    """(height, width, 3) in [0, 1] -> (TILE_PIXELS, TILE_PIXELS, 3): enlarged without
    smoothing (a 3 x 3 kernel stays 9 squares), aspect kept, white around."""
    height, width = rgb.shape[:2]
    scale = TILE_PIXELS / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    enlarged = np.asarray(Image.fromarray(np.uint8(np.round(rgb * 255))).resize(size, Image.NEAREST))
    tile = np.full((TILE_PIXELS, TILE_PIXELS, 3), 255, np.uint8)
    top, left = (TILE_PIXELS - size[1]) // 2, (TILE_PIXELS - size[0]) // 2
    tile[top:top + size[1], left:left + size[0]] = enlarged
    return tile


def _plot_grid(panels: list[np.ndarray], labels: list[str], title: str, path: Path) -> Path:
    """panels: RGB (height, width, 3) arrays in [0, 1], each drawn with its label above it, in a
    square-ish grid under ``title``. One image of all panels, not one axes each: matplotlib
    spends seconds laying out 64 axes."""
    columns = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / columns)
    cell = TILE_PIXELS + LABEL_PIXELS
    mosaic = np.full((rows * cell, columns * cell, 3), 255, np.uint8)
    figure, axis = plt.subplots(figsize=GRID_FIGURE, dpi=DPI)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88)  # the top eighth for the title
    for number, (panel, label) in enumerate(zip(panels, labels)):
        top, left = (number // columns) * cell + LABEL_PIXELS, (number % columns) * cell + LABEL_PIXELS // 2
        mosaic[top:top + TILE_PIXELS, left:left + TILE_PIXELS] = _tile(panel)
        axis.text(left + TILE_PIXELS / 2, top - 3, label, ha="center", va="bottom", fontsize=7)
    axis.imshow(mosaic, interpolation="nearest")
    axis.axis("off")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path, title)


def plot_input(image: np.ndarray, normalization: str, path: Path, caption: str | None, source: str) -> Path:
    """image: (y_size, x_size, 3) as normalized for the encoder."""
    figure, axis = plt.subplots(figsize=INPUT_FIGURE, dpi=DPI)
    figure.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.86)
    axis.imshow(displayable(image, normalization))
    axis.axis("off")
    height, width = image.shape[:2]
    heading = f"encoder input: {width} x {height} px, normalization '{normalization}' (mapped back to colours)"
    title = _title(heading, caption, source)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path, title)


def plot_feature_map(name: str, feature_map: np.ndarray, path: Path, caption: str | None, source: str) -> Path:
    """feature_map: (height, width, channels) of one block; its strongest channels, each on its own scale."""
    height, width, channels = feature_map.shape
    shown = strongest_channels(feature_map)
    heading = (f"{name}: output {height} x {width} x {channels} (height x width x channels); the {len(shown)} "
               "channels with the highest mean activation")
    colour = matplotlib.colormaps["viridis"]
    panels, labels = [], []
    for channel in shown:
        values = feature_map[:, :, channel]
        span = values.max() - values.min()
        panels.append(colour((values - values.min()) / (span if span > 0 else 1.0))[..., :3])  # its own scale
        labels.append(f"channel {channel}: mean {values.mean():.3g}")
    return _plot_grid(panels, labels, _title(heading, caption, source), path)


def plot_filters(name: str, kernel: np.ndarray, bgr: bool, path: Path, caption: str | None, source: str) -> Path:
    """kernel: (size, size, 3, filters) of the convolution that reads the image."""
    patches = filter_patches(kernel, bgr)
    size, filters = kernel.shape[0], kernel.shape[3]
    heading = (f"{name}: first-layer filters, kernel {size} x {size} x 3 x {filters}; {len(patches)} shown as RGB, "
               "each scaled to its own range")
    return _plot_grid(list(patches), [str(number) for number in range(len(patches))],
                      _title(heading, caption, source), path)


def inspect_image(image_path: str | Path, out_dir: str | Path, config: ExperimentConfig, captioner: Captioner | None = None,
                  source: str = "") -> list[Path]:
    """Writes the PNGs listed in the module docstring for one image; returns their paths.

    captioner: a trained run's Captioner (its encoder, its caption, its attention), or None
    to build the encoder named by ``config.encoder`` fresh. source: how the titles name
    where the encoder came from.
    """
    image_path, out_dir = str(image_path), Path(out_dir)
    normalization = normalization_for(config.encoder)
    image = load_image(image_path, config.images.x_size, config.images.y_size, normalization)  # (y, x, 3)
    if captioner is not None:
        encoder, caption = captioner.model.encoder, captioner.caption_paths([image_path])[0]
    else:
        encoder, caption = build_encoder(config.encoder, image_shape(config)), None
    feature_maps = encoder.feature_maps(image[None])  # [(layer name, (1, height, width, channels))]; builds the encoder
    written = [plot_input(image, normalization, out_dir / "input.png", caption, source)]
    convolution = encoder.first_convolution()
    written.append(plot_filters(convolution.name, np.asarray(convolution.kernel), normalization in BGR_NORMALIZATIONS,
                                out_dir / f"filters_{convolution.name}.png", caption, source))
    for number, (name, feature_map) in enumerate(feature_maps):
        feature_map = np.asarray(feature_map)[0]  # (height, width, channels)
        written.append(plot_feature_map(name, feature_map, out_dir / f"features_{number}_{name}.png", caption, source))
    if captioner is not None and captioner.model.decoder.has_attention:
        maps = captioner.attention_maps(image_path)
        plot_attention(maps.image, maps.words, maps.attention, out_dir / "attention.png", title=maps.caption)
        written.append(out_dir / "attention.png")
    return written


def inspect(image_path: str | Path, out_dir: str | Path | None = None, run_dir: str | Path | None = None,
            experiment: str | Path | None = None, overrides: list[str] = (),
            default_experiment: str | Path | None = None) -> list[Path]:
    """``make inspect``: the encoder of ``run_dir``; else a fresh one from ``experiment``; else
    the latest run's; else a fresh one from ``default_experiment``. ``out_dir`` defaults to
    runs/inspect/<image name>. A bad image fails first, before any model is built."""
    read_rgb(image_path)
    if run_dir is None and experiment is None:
        try:
            run_dir = latest_run()
        except RunError:
            experiment = default_experiment
    if run_dir is not None and experiment is not None:
        raise ConfigError("give a run (RUN=) or an experiment (EXPERIMENT=), not both: a run has its own config")
    out_dir = Path(out_dir) if out_dir is not None else Path("runs") / "inspect" / Path(image_path).stem
    if run_dir is not None:
        captioner = Captioner.from_run(run_dir, overrides)
        return inspect_image(image_path, out_dir, captioner.config, captioner, source=f"run {run_dir}")
    config = load_config(experiment, overrides)
    source = f"no run: a fresh {config.encoder.name} encoder from {Path(experiment).name if experiment else 'the defaults'}"
    return inspect_image(image_path, out_dir, config, source=source)
