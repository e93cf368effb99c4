"""Atomic file writes: a reader never sees half a file, an interrupted write leaves none.

Caches shared by several processes (data/image_cache.py, training/features.py) also use ``locked`` (an
exclusive lock on a file beside the entry) and ``cache_writes`` (a full disk or a read-only
folder becomes one CacheWriteError naming the folder, after removing the half-written entry).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside ``path``; renames it over ``path`` if the block succeeds.

    The temporary name keeps ``path``'s suffixes (``x.weights.h5`` -> ``x.tmp123.weights.h5``)
    so writers that check the extension (Keras) accept it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = path.name.partition(".")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.tmp", suffix=dot + suffixes)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporaries (left by a killed writer)."""
    return name.startswith(".") and ".tmp" in name


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_csv_rows(path: str | Path, rows: list[dict]) -> None:
    """A CSV of ``rows`` whose columns are every key of any row, in the order first seen."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(column for row in rows for column in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


class CacheWriteError(RuntimeError):
    """A cache folder cannot take a write: the disk is full, or the folder is read-only."""


# The errors a cache cannot work around, and what they mean to the user.
WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the filesystem is read-only", errno.EACCES: "no permission to write in it",
                  errno.EPERM: "no permission to write in it"}


def write_failure(error: BaseException) -> str | None:
    """What a failed write means if a cache cannot work around it (WRITE_FAILURES), else None."""
    return WRITE_FAILURES.get(getattr(error, "errno", None)) if isinstance(error, OSError) else None


def cache_write_error(folder: str | Path, what: str, setting: str, reason: str) -> CacheWriteError:
    return CacheWriteError(f"{folder}: cannot write the {what} ({reason}); free space there or make it writable, "
                           f"or point {setting} at another folder")


@contextlib.contextmanager
def cache_writes(folder: str | Path, what: str, setting: str, half_written=()):
    """Inside, a write failing for a reason in WRITE_FAILURES removes the ``half_written``
    paths (what an entry left unfinished; missing ones are fine) and raises one
    CacheWriteError naming ``folder`` and the config ``setting`` that moves the cache."""
    try:
        yield
    except OSError as error:
        reason = write_failure(error)
        if reason is None:
            raise
        for path in half_written:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
        raise cache_write_error(folder, what, setting, reason) from error


@contextlib.contextmanager
def locked(lock_path: str | Path):
    """Holds an exclusive lock on ``lock_path`` (created if missing; left in place) for the
    block: other processes taking it wait. fcntl.flock: local filesystems, and NFS where the
    server supports it."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
