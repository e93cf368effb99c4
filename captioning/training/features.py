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

Several workers (``runtime.strategy = "multi_worker"``) split the work: worker i of n
computes the i-th contiguous slice of the images (``distribution.shard_bounds``) into

    cache_root/<key>/shard-<i>-of-<n>.npy

(resumable the same way), the chief (worker 0) waits for all n shards, copies them in
order into ``features.npy`` and writes the manifest; the other workers wait for that
manifest and then memory-map the same file. This needs ``cache_root`` on a filesystem every
worker sees; without one, ``images.feature_cache_shared = false`` makes every worker
extract every image into a folder of its own (see training/training_data.py).

Two runs needing the same features at once (two ``make train`` on the same data and
encoder) do not both write them: the extraction holds ``features.lock`` (fcntl.flock), and
the run that waited for it finds the entry complete and memory-maps it. A full disk or a
read-only cache folder stops the run with one CacheWriteError naming the folder, after
removing the unfinished ``features.partial.npy`` and ``progress.json``: no half-written
entry stays behind.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from captioning.config import EncoderConfig, ImagesConfig
from captioning.files import cache_writes, file_sha256, locked, write_json
from captioning.training.distribution import Worker, shard_bounds

FORMAT_VERSION = 1
FEATURES_FILE = "features.npy"
PARTIAL_FILE = "features.partial.npy"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "features.lock"  # held while one process extracts or joins the key's features
CACHE_SETTING = "images.feature_cache_dir"
# Multi-worker extraction: how long a worker waits for the others' shards without any
# file changing (ten minutes covers a worker still starting TensorFlow and reading its data
# set index; a running extraction writes progress every ten batches), and how often it looks.
SHARD_STALL_SECONDS = 600.0
POLL_SECONDS = 1.0


# Encoder fields that change nothing the frozen backbone computes: how many layers a later
# fine-tuning phase unfreezes. Left out of the key, so a frozen run and the first phase of a
# fine-tuned run share their features (and keys made before the field existed stay valid).
NOT_IN_KEY = ("fine_tune_layers",)


def cache_key(paths: list[str], encoder: EncoderConfig, images: ImagesConfig, normalization: str,
              mirrored: bool = False) -> tuple[str, dict]:
    """(hex key, the description it hashes). Image files are identified by path, size and mtime:
    hashing every image's bytes would cost as much as decoding it. mirrored: the features of
    the images mirrored left-right (a key of their own; the unmirrored keys stay as they were)."""
    listing = hashlib.sha256()
    for path in paths:
        status = os.stat(path)
        listing.update(f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    weights = encoder.weights
    weights_digest = file_sha256(Path(weights)) if Path(weights).is_file() else weights
    description = {
        "format_version": FORMAT_VERSION,
        "images": len(paths),
        "image_listing_sha256": listing.hexdigest(),
        "encoder": {name: value for name, value in dataclasses.asdict(encoder).items() if name not in NOT_IN_KEY}
                   | {"weights": weights_digest},
        "image_size": [images.y_size, images.x_size],
        "normalization": normalization,
    } | ({"mirrored": True} if mirrored else {})
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
    return key, description


class FeatureCacheError(ValueError):
    """The shards of a multi-worker extraction did not all arrive."""


class FeatureCache:
    """cache_root/<key>/features.npy for each image list, encoder and image size.

    stall_seconds: under several workers, how long a worker waits without any shard file
    in the key's folder changing before it gives up (a worker died, or the folder is not
    on a filesystem every worker sees).
    """

    def __init__(self, cache_root: str | Path, stall_seconds: float = SHARD_STALL_SECONDS):
        self.cache_root = Path(cache_root)
        self.stall_seconds = stall_seconds

    def features(self, paths: list[str], encoder_config: EncoderConfig, images_config: ImagesConfig, normalization: str,
                 encode_batches, batch_size: int, label: str = "", worker: Worker = Worker(),
                 mirrored: bool = False) -> np.ndarray:
        """Memory-mapped (images, regions, channels) float16 features, computing what is missing.

        encode_batches(paths) yields float32 feature batches (batch, regions, channels) for
        consecutive ``batch_size`` slices of ``paths``.

        worker: with ``worker.count`` > 1, this process computes only its share of the images
        (``shard_bounds``) into ``shard-<index>-of-<count>.npy``; the chief waits for every
        shard, joins them into features.npy and writes the manifest, and the other workers
        wait for that manifest. Every worker must see the same ``cache_root``. mirrored: the
        entry of the mirrored images (encode_batches must mirror them).
        """
        key, description = cache_key(paths, encoder_config, images_config, normalization, mirrored)
        folder = self.cache_root / key
        final_path = folder / FEATURES_FILE
        if self._is_complete(folder, len(paths)):  # a complete entry is only read: a read-only cache serves it
            return np.load(final_path, mmap_mode="r", allow_pickle=False)
        with cache_writes(folder, "feature cache", CACHE_SETTING):
            folder.mkdir(parents=True, exist_ok=True)
            if worker.count > 1:
                self._compute_shard(paths, folder, encode_batches, batch_size, label, worker)
            if worker.is_chief:
                with locked(folder / LOCK_FILE), cache_writes(folder, "feature cache", CACHE_SETTING,
                                                              half_written=[folder / PARTIAL_FILE, folder / PROGRESS_FILE]):
                    if not self._is_complete(folder, len(paths)):  # else another run made it while this one waited
                        if worker.count == 1:
                            self._compute(paths, folder / PARTIAL_FILE, folder / PROGRESS_FILE, encode_batches,
                                          batch_size, label)
                        else:
                            self._join_shards(folder, len(paths), worker.count, label)
                        self._publish(folder, folder / PARTIAL_FILE, description)
                for index in range(worker.count if worker.count > 1 else 0):
                    (folder / shard_file_name(index, worker.count)).unlink(missing_ok=True)
            else:
                self._wait_for(folder, lambda: self._is_complete(folder, len(paths)), "the chief to join the shards")
        return np.load(final_path, mmap_mode="r", allow_pickle=False)

    @staticmethod
    def _is_complete(folder: Path, image_count: int) -> bool:
        final_path = folder / FEATURES_FILE
        if not ((folder / MANIFEST_FILE).is_file() and final_path.is_file()):
            return False
        return np.load(final_path, mmap_mode="r", allow_pickle=False).shape[0] == image_count

    @staticmethod
    def _publish(folder: Path, partial_path: Path, description: dict) -> None:
        """The finished file takes its final name, then the manifest (written last) says it is complete."""
        os.replace(partial_path, folder / FEATURES_FILE)
        (folder / PROGRESS_FILE).unlink(missing_ok=True)
        write_json(folder / MANIFEST_FILE, description)

    def _compute_shard(self, paths, folder: Path, encode_batches, batch_size: int, label: str, worker: Worker) -> None:
        """This worker's slice of ``paths`` into its shard file (resumable like the whole cache)."""
        shard_path = folder / shard_file_name(worker.index, worker.count)
        if shard_path.is_file():
            return
        start, stop = shard_bounds(len(paths), worker)
        partial_path = shard_path.with_name(shard_path.name.replace(".npy", ".partial.npy"))
        progress_path = shard_path.with_name(shard_path.name.replace(".npy", ".progress.json"))
        shard_lock = folder / f"{LOCK_FILE}.{worker.index}-of-{worker.count}"  # kept, like features.lock
        with locked(shard_lock), cache_writes(folder, "feature cache", CACHE_SETTING,
                                                                   half_written=[partial_path, progress_path]):
            if shard_path.is_file():
                return
            self._compute(paths[start:stop], partial_path, progress_path, encode_batches, batch_size,
                          f"{label} (worker {worker.index} of {worker.count}: images {start} to {stop - 1})")
            os.replace(partial_path, shard_path)
            progress_path.unlink(missing_ok=True)

    def _join_shards(self, folder: Path, image_count: int, worker_count: int, label: str) -> None:
        """Waits for every worker's shard, then copies them in worker order into features.partial.npy."""
        shard_paths = [folder / shard_file_name(index, worker_count) for index in range(worker_count)]
        self._wait_for(folder, lambda: all(path.is_file() for path in shard_paths), "every worker's shard")
        shards = [np.load(path, mmap_mode="r", allow_pickle=False) for path in shard_paths]
        shapes = {shard.shape[1:] for shard in shards if len(shard)}
        if sum(len(shard) for shard in shards) != image_count or len(shapes) != 1:
            raise FeatureCacheError(f"{folder}: the shards hold {[shard.shape for shard in shards]}, not the "
                                    f"{image_count} images of one feature shape; delete the folder and extract again")
        print(f"{label}: joining {worker_count} feature shards")
        joined = new_feature_file(folder / PARTIAL_FILE, (image_count, *shapes.pop()))
        start = 0
        for shard in shards:
            if len(shard):  # a worker with no share of a tiny split wrote an empty (0,) array
                joined[start:start + len(shard)] = shard
                start += len(shard)
        joined.flush()
        del joined

    def _wait_for(self, folder: Path, is_done, what: str) -> None:
        """Polls ``is_done()`` while the files in ``folder`` keep changing; gives up after
        ``stall_seconds`` without any change."""
        last_change, last_seen = time.monotonic(), None
        while not is_done():
            seen = _listing(folder)
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            elif time.monotonic() - last_change > self.stall_seconds:
                raise FeatureCacheError(
                    f"{folder}: waited {self.stall_seconds:.0f} s for {what} with no file changing. Is a worker down, "
                    "or is images.feature_cache_dir not on a filesystem every worker sees? Without one, set "
                    "images.feature_cache_shared=false (every worker then extracts all images itself).")
            time.sleep(POLL_SECONDS)

    def _compute(self, paths, partial_path: Path, progress_path: Path, encode_batches, batch_size: int, label: str) -> None:
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
        if not paths:  # a worker with no share of a tiny split
            np.save(partial_path, np.zeros((0,), dtype=np.float16), allow_pickle=False)
            return
        progress_bar = keras.utils.Progbar(len(paths), unit_name="image")
        progress_bar.update(done)
        for start, batch in zip(range(done, len(paths), batch_size), encode_batches(paths[done:])):
            batch = np.asarray(batch, dtype=np.float16)  # (batch, regions, channels)
            if features is None:
                features = new_feature_file(partial_path, (len(paths), *batch.shape[1:]))
            features[start:start + len(batch)] = batch
            if (start // batch_size) % 10 == 9 or start + len(batch) == len(paths):
                features.flush()
                write_json(progress_path, {"images_done": start + len(batch)})
            progress_bar.update(start + len(batch))
        features.flush()
        del features


def new_feature_file(path: Path, shape: tuple) -> np.memmap:
    """A writable float16 .npy of ``shape``, memory-mapped, its blocks reserved on disk.

    open_memmap alone makes a sparse file: on a full disk, writing its pages later would
    kill the process with SIGBUS. Reserving the blocks (posix_fallocate) makes a full disk
    an OSError (ENOSPC) here instead, which cache_writes reports."""
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a filesystem without it
                raise
    return features


def shard_file_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}.npy"


def _listing(folder: Path) -> list[tuple]:
    """(name, modification time, size) of the files in ``folder``; files replaced meanwhile are skipped."""
    listing = []
    for path in folder.iterdir():
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        listing.append((path.name, status.st_mtime_ns, status.st_size))
    return sorted(listing)
