"""Features in shards: one (images, regions, channels) float16 array kept as several .npy files.

A COCO-sized feature cache (113,287 images x 49 x 768 float16: 8.5 GB) is too large to
write through one memory map or to hold as one file that every reader maps whole. Here it
is written and read in shards of at most ``max_shard_bytes`` each:

    folder/shard-00000-of-00006.npy ...    consecutive rows of the array, in order
    folder/shards.json                     {"shape", "dtype", "shard_rows"}, written last

Writing: rows arrive in chunks (any sizes; a chunk may straddle two shards) and go to the
file with plain writes after the .npy header, never through a memory map, so the writer
holds one chunk at a time. Each shard is renamed into place when complete (files.py's
``atomic_path``) and the index is written last, so a folder with ``shards.json`` is complete.

Reading: ``ShardedFeatures`` looks like a (images, regions, channels) array to
``pipeline.feature_dataset`` (``len``, ``shape``, ``dtype``, ``features[indices]``). Each
read maps the shards its rows live in (``np.load(mmap_mode="r")``), copies the rows out and
lets the maps go, so the pages read stay in the operating system's file cache and do not
pile up in the process's resident memory as one long-lived map of 8.5 GB would over an epoch.

The frozen-backbone feature cache (features.py) still keeps one features.npy per split;
this module is used by the COCO-sized rehearsal (coco_rehearsal.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from captioning.files import atomic_path, write_json

INDEX_FILE = "shards.json"
# Each shard at most this many bytes of data: a file that any filesystem and copy tool
# handles, a few per COCO-sized split (8.5 GB -> 6 shards).
MAX_SHARD_BYTES = 1_500_000_000


class ShardError(ValueError):
    """A shard folder that is incomplete or does not match its index."""


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.npy"


def rows_per_shard(row_shape: tuple[int, ...], dtype, max_shard_bytes: int) -> int:
    """The most rows of ``row_shape`` that fit in ``max_shard_bytes`` (at least one)."""
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, max_shard_bytes // row_bytes)


def write_shards(folder: str | Path, shape: tuple[int, ...], chunks: Iterable[np.ndarray], dtype=np.float16,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> "ShardedFeatures":
    """Writes ``chunks`` (arrays of shape (rows, *shape[1:]), in order, ``shape[0]`` rows in
    all) as shards of at most ``max_shard_bytes`` into ``folder``; returns their reader."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_FILE).unlink(missing_ok=True)  # incomplete until the index is written again
    total, row_shape = int(shape[0]), tuple(int(size) for size in shape[1:])
    per_shard = rows_per_shard(row_shape, dtype, max_shard_bytes)
    shard_rows = [min(per_shard, total - start) for start in range(0, total, per_shard)]
    chunk_iterator = iter(chunks)
    pending = np.zeros((0, *row_shape), dtype=dtype)  # rows of a chunk not yet written
    for index, rows in enumerate(shard_rows):
        with atomic_path(folder / shard_name(index, len(shard_rows))) as temporary, open(temporary, "wb") as handle:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (rows, *row_shape)}
            np.lib.format.write_array_header_1_0(handle, header)
            written = 0
            while written < rows:
                if not len(pending):
                    chunk = next(chunk_iterator, None)
                    if chunk is None:
                        raise ValueError(f"{folder}: the chunks ended after {sum(shard_rows[:index]) + written} "
                                         f"of {total} rows")
                    pending = np.asarray(chunk, dtype=dtype)
                    if pending.shape[1:] != row_shape:
                        raise ValueError(f"{folder}: a chunk of shape {pending.shape} does not hold rows "
                                         f"of {row_shape}")
                take = min(rows - written, len(pending))
                handle.write(np.ascontiguousarray(pending[:take]).tobytes())
                pending, written = pending[take:], written + take
    if len(pending) or next(chunk_iterator, None) is not None:
        raise ValueError(f"{folder}: the chunks hold more than the {total} rows of shape {tuple(shape)}")
    write_json(folder / INDEX_FILE, {"shape": [total, *row_shape], "dtype": np.dtype(dtype).name,
                                     "shard_rows": shard_rows})
    return ShardedFeatures(folder)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / INDEX_FILE).is_file()


class ShardedFeatures:
    """Read-only (images, *row_shape) array over a folder of shards (module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise ShardError(f"{self.folder}: no {INDEX_FILE}, so its shards are incomplete; write them again")
        index = json.loads(index_path.read_text())
        self.shape = tuple(index["shape"])
        self.dtype = np.dtype(index["dtype"])
        self.shard_rows = list(index["shard_rows"])
        self.paths = [self.folder / shard_name(number, len(self.shard_rows)) for number in range(len(self.shard_rows))]
        if sum(self.shard_rows) != self.shape[0]:
            raise ShardError(f"{index_path}: shard_rows add up to {sum(self.shard_rows)}, not {self.shape[0]} rows")
        for path, rows in zip(self.paths, self.shard_rows):
            expected = (rows, *self.shape[1:])
            if not path.is_file():
                raise ShardError(f"{path}: missing (the index {index_path} names it); write the shards again")
            found = self._map(path)
            if found.shape != expected or found.dtype != self.dtype:
                raise ShardError(f"{path}: holds {found.dtype} {found.shape}, the index says {self.dtype} {expected}")
        # shard k holds rows starts[k] to starts[k + 1] - 1
        self.starts = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)

    @staticmethod
    def _map(path: Path) -> np.ndarray:
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, indices) -> np.ndarray:
        """indices: an int, a slice or a 1-D integer array -> the rows, copied out of the shards
        ((len(indices), *row_shape), or row_shape for an int)."""
        if isinstance(indices, (int, np.integer)):
            return self[np.array([indices])][0]
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise IndexError(f"{self.folder}: rows are read with a 1-D index array, not shape {indices.shape}")
        indices = np.where(indices < 0, indices + len(self), indices)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.folder}: row index out of range for {len(self)} rows")
        rows = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        shards = np.searchsorted(self.starts, indices, side="right") - 1  # (len(indices),) the shard of each row
        for shard in np.unique(shards):
            wanted = shards == shard
            mapped = self._map(self.paths[shard])
            rows[wanted] = mapped[indices[wanted] - self.starts[shard]]
            del mapped  # the map goes; its pages stay in the file cache only
        return rows
