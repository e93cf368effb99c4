"""Feature cache: a frozen encoder's region features, computed once per split and reused.

When the encoder is frozen, re-running it every epoch is wasted work: its output never
changes. The features of one (data set, split, encoder, weights, image size) are computed
once, with a progress bar, into a float16 ``.npy`` file that training memory-maps.

    cache_root/<key>/features.npy      (images, regions, channels) float16
    cache_root/<key>/manifest.json     what the key stands for, written last

The key hashes everything that changes the numbers: the image files' paths and sizes, the
encoder section, the weights file's content, the image size and normalization. An
interrupted computation leaves ``features.partial.npy`` and ``progress.json``; the next run
checks the partial file's shape against the manifest it will write, and continues from
the last finished batch instead of starting over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from captioning.config import EncoderConfig, ImagesConfig
from captioning.files import write_json

FORMAT_VERSION = 1
FEATURES_FILE = "features.npy"
PARTIAL_FILE = "features.partial.npy"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"


# Encoder fields that change nothing the frozen backbone computes: how many layers a later
# fine-tuning phase unfreezes. Left out of the key, so a frozen run and the first phase of a
# fine-tuned run share their features (and keys made before the field existed stay valid).
NOT_IN_KEY = ("fine_tune_layers",)


def encoder_is_frozen(config: EncoderConfig) -> bool:
    """Only a pretrained backbone that nothing fine-tunes during training.epochs gives the same
    features every epoch; with encoder.fine_tune_layers that is phase 1 (train.py)."""
    return config.name != "conv_stack" and not config.trainable and not config.fine_tune_last_block


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(paths: list[str], encoder: EncoderConfig, images: ImagesConfig, normalization: str) -> tuple[str, dict]:
    """(hex key, the description it hashes). Image files are identified by path, size and mtime:
    hashing every image's bytes would cost as much as decoding it."""
    listing = hashlib.sha256()
    for path in paths:
        status = os.stat(path)
        listing.update(f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    weights = encoder.weights
    weights_digest = _file_digest(Path(weights)) if Path(weights).is_file() else weights
    description = {
        "format_version": FORMAT_VERSION,
        "images": len(paths),
        "image_listing_sha256": listing.hexdigest(),
        "encoder": {name: value for name, value in dataclasses.asdict(encoder).items() if name not in NOT_IN_KEY}
                   | {"weights": weights_digest},
        "image_size": [images.y_size, images.x_size],
        "normalization": normalization,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
    return key, description


class FeatureCache:
    def __init__(self, cache_root: str | Path):
        self.cache_root = Path(cache_root)

    def features(self, paths: list[str], encoder_config: EncoderConfig, images_config: ImagesConfig, normalization: str,
                 encode_batches, batch_size: int, label: str = "") -> np.ndarray:
        """Memory-mapped (images, regions, channels) float16 features, computing what is missing.

        encode_batches(paths) yields float32 feature batches (batch, regions, channels) for
        consecutive ``batch_size`` slices of ``paths``.
        """
        key, description = cache_key(paths, encoder_config, images_config, normalization)
        folder = self.cache_root / key
        final_path = folder / FEATURES_FILE
        if (folder / MANIFEST_FILE).is_file() and final_path.is_file():
            features = np.load(final_path, mmap_mode="r", allow_pickle=False)
            if features.shape[0] == len(paths):
                return features
        folder.mkdir(parents=True, exist_ok=True)
        self._compute(paths, folder, encode_batches, batch_size, label)
        os.replace(folder / PARTIAL_FILE, final_path)
        (folder / PROGRESS_FILE).unlink(missing_ok=True)
        write_json(folder / MANIFEST_FILE, description)
        return np.load(final_path, mmap_mode="r", allow_pickle=False)

    def _compute(self, paths, folder: Path, encode_batches, batch_size: int, label: str) -> None:
        partial_path, progress_path = folder / PARTIAL_FILE, folder / PROGRESS_FILE
        done = 0
        features = None
        if partial_path.is_file() and progress_path.is_file():
            try:
                done = int(json.loads(progress_path.read_text())["images_done"])
                features = np.load(partial_path, mmap_mode="r+", allow_pickle=False)
                if features.shape[0] != len(paths) or done % batch_size or done > len(paths):
                    features, done = None, 0  # another batch size or image list: not trusted
            except (OSError, ValueError, KeyError):
                features, done = None, 0
        if done:
            print(f"{label}: resuming feature extraction at image {done} of {len(paths)}")
        progress_bar = keras.utils.Progbar(len(paths), unit_name="image")
        progress_bar.update(done)
        for start, batch in zip(range(done, len(paths), batch_size), encode_batches(paths[done:])):
            batch = np.asarray(batch, dtype=np.float16)  # (batch, regions, channels)
            if features is None:
                features = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np.float16,
                                                     shape=(len(paths), *batch.shape[1:]))
            features[start:start + len(batch)] = batch
            if (start // batch_size) % 10 == 9 or start + len(batch) == len(paths):
                features.flush()
                write_json(progress_path, {"images_done": start + len(batch)})
            progress_bar.update(start + len(batch))
        features.flush()
        del features
