"""The on-disk cache of normalized images: ``ImageCache.load`` is ``load_image`` whose
results are kept as ``.npy`` files with a SQLite table of what the cache holds (source
file, content hash, size, normalization scheme, cache file).

Like images.py it imports only numpy, the standard library and captioning's files and
images modules, so data tools can use it without starting TensorFlow.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from captioning.data.images import check_sizes, get_normalization, pixels_from_bytes, read_file_bytes
from captioning.files import cache_write_error, cache_writes

logger = logging.getLogger(__name__)

# Bump when anything that changes the cached arrays changes (resize filter, conversion
# rules, normalization constants): old cache entries then stop matching and are rebuilt.
CACHE_FORMAT_VERSION = 1

_TABLE_COLUMNS = (
    "cache_key",
    "source_path",
    "content_sha256",
    "x_size",
    "y_size",
    "normalization",
    "format_version",
    "cache_file",
    "array_sha256",
    "created_at",
    "file_size",
    "file_mtime_ns",
    "stat_recorded_ns",
)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS entries (
    cache_key      TEXT PRIMARY KEY,  -- sha256 of the fields that determine the array
    source_path    TEXT NOT NULL,     -- absolute path the entry was (last) built from
    content_sha256 TEXT NOT NULL,     -- sha256 of the source file's bytes
    x_size         INTEGER NOT NULL,
    y_size         INTEGER NOT NULL,
    normalization  TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    cache_file     TEXT NOT NULL,     -- .npy path relative to the cache directory
    array_sha256   TEXT NOT NULL,     -- sha256 of the array bytes (see _read_entry for when it is checked)
    created_at     TEXT NOT NULL,     -- UTC, ISO 8601
    file_size      INTEGER,           -- the .npy file's size and mtime when its checksum last matched,
    file_mtime_ns  INTEGER,           --   and when that was (time.time_ns()); NULL in tables
    stat_recorded_ns INTEGER          --   written before these columns existed
)
"""

# Columns added after the first release, with their types: an older table gains them.
_ADDED_COLUMNS = {"file_size": "INTEGER", "file_mtime_ns": "INTEGER", "stat_recorded_ns": "INTEGER"}

# A cache file whose size and mtime are those recorded with its last matching checksum is
# read without hashing it again, but only when the record was taken this many nanoseconds
# after the mtime: a file changed within the same filesystem timestamp tick as it was
# written (ticks are milliseconds on Linux, 2 s on FAT) could otherwise keep its mtime.
_SETTLED_NS = 2_000_000_000

# Seconds a process waits for another process's write lock on index.sqlite.
_SQLITE_TIMEOUT_SECONDS = 60.0


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


class ImageCache:
    """``load_image`` with its results kept as ``.npy`` files under ``cache_dir``.

    An entry is keyed by the sha256 of the image file's bytes, x_size, y_size, the
    normalization and CACHE_FORMAT_VERSION: an image edited in place is never served
    stale, and identical files at two paths share one entry. The table
    ``cache_dir/index.sqlite`` has one row per entry (see ``entries()``), including a
    sha256 of the array; a missing, truncated or altered ``.npy`` file, or one with the
    wrong shape or dtype, is logged, discarded and rebuilt from the image. The checksum is
    skipped on a read while the file keeps the size and mtime it had when the checksum
    last matched (``_read_entry``): a hit is then a stat, a table lookup and a file read.

    ``load`` may be called from several threads at once (tf.data does); several
    processes may share one cache directory (files are replaced atomically and SQLite
    serializes the table writes). Failures to decode the image are raised as
    ImageLoadError and never cached. A full disk or a read-only cache directory raises one
    CacheWriteError naming the directory (an entry whose row could not be written loses its
    file too); a read-only directory whose entries are all there still serves them.

    Attributes:
        cache_dir: Path of the cache directory (created if missing).
        hits: loads answered from the cache.
        misses: loads that decoded the image (no entry, or a damaged one).
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        # One connection shared by all threads; every use holds self._lock.
        self._lock = threading.Lock()
        with cache_writes(self.cache_dir, "image cache", _CACHE_SETTING):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(
                self.cache_dir / "index.sqlite",
                timeout=_SQLITE_TIMEOUT_SECONDS,
                check_same_thread=False,
                isolation_level=None,  # autocommit: every statement is its own transaction
            )
            with self._lock:
                self._connection.execute(_CREATE_TABLE)
                present = {row[1] for row in self._connection.execute("PRAGMA table_info(entries)")}
                for column, column_type in _ADDED_COLUMNS.items():
                    if column not in present:
                        try:
                            self._connection.execute(f"ALTER TABLE entries ADD COLUMN {column} {column_type}")
                        except sqlite3.OperationalError as error:  # another process added it meanwhile
                            if _sqlite_write_failure(error):
                                raise
        except sqlite3.OperationalError as error:
            reason = _sqlite_write_failure(error)
            if reason is None:
                raise
            raise cache_write_error(self.cache_dir, "image cache", _CACHE_SETTING, reason) from error

    # -- public ---------------------------------------------------------------------

    def load(
        self, path: str | os.PathLike, x_size: int, y_size: int, normalization: str
    ) -> np.ndarray:
        """Same contract as ``load_image``: float32 (y_size, x_size, 3).

        The image file is read (and hashed) on every call; only the decode, resize and
        normalization are skipped on a hit. The returned array is the caller's to modify.
        """
        check_sizes(x_size, y_size)
        get_normalization(normalization)
        x_size, y_size = int(x_size), int(y_size)
        data = read_file_bytes(path)
        content_sha256 = hashlib.sha256(data).hexdigest()
        cache_key = hashlib.sha256(
            f"{CACHE_FORMAT_VERSION}|{content_sha256}|{x_size}|{y_size}|{normalization}".encode()
        ).hexdigest()

        row = self._find_row(cache_key)
        if row is not None:
            pixels = self._read_entry(row, path)
            if pixels is not None:
                with self._lock:
                    self.hits += 1
                return pixels
            self._discard_row(row)

        # Decode from the same bytes we hashed, so the key always matches the content.
        pixels = pixels_from_bytes(data, path, x_size, y_size, normalization)
        with self._lock:
            self.misses += 1
        self._write_entry(
            cache_key=cache_key,
            source_path=os.path.abspath(os.fspath(path)),
            content_sha256=content_sha256,
            x_size=x_size,
            y_size=y_size,
            normalization=normalization,
            pixels=pixels,
        )
        return pixels

    def entries(self) -> list[dict]:
        """Rows of the table, oldest first, as dicts keyed by column name.

        Columns: cache_key, source_path, content_sha256, x_size, y_size, normalization,
        format_version, cache_file (relative to cache_dir), array_sha256, created_at.
        """
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {', '.join(_TABLE_COLUMNS)} FROM entries ORDER BY created_at, rowid"
            ).fetchall()
        return [dict(zip(_TABLE_COLUMNS, row)) for row in rows]

    def close(self) -> None:
        """Closes the table's database connection; the cache is unusable afterwards."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageCache({str(self.cache_dir)!r}, hits={self.hits}, misses={self.misses})"

    # -- internals ------------------------------------------------------------------

    def _find_row(self, cache_key: str) -> dict | None:
        with self._lock:
            row = self._connection.execute(
                f"SELECT {', '.join(_TABLE_COLUMNS)} FROM entries WHERE cache_key = ?",
                (cache_key,),
            ).fetchone()
        return None if row is None else dict(zip(_TABLE_COLUMNS, row))

    def _read_entry(self, row: dict, path: str | os.PathLike) -> np.ndarray | None:
        """The cached array if its file is intact, else None (after logging why).

        The array's sha256 is checked unless the file's size and mtime are the ones
        recorded when it last matched (and that record is settled, see _SETTLED_NS):
        hashing 600 KB (224 x 224 float32) costs about three times the read itself. A
        file altered in place gets a new mtime, so it is checked and rebuilt.
        """
        cache_file = self.cache_dir / row["cache_file"]
        expected_shape = (row["y_size"], row["x_size"], 3)
        try:
            status = cache_file.stat()
            pixels = np.load(cache_file, allow_pickle=False)
        except FileNotFoundError:
            problem = "cache file is missing"
        except (OSError, ValueError, EOFError, SyntaxError, MemoryError) as error:
            problem = f"cache file is unreadable ({type(error).__name__}: {error})"
        else:
            if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
                problem = f"cache file holds dtype {getattr(pixels, 'dtype', None)}, not float32"
            elif pixels.shape != expected_shape:
                problem = f"cache file holds shape {pixels.shape}, not {expected_shape}"
            elif _is_settled(row, status):
                return pixels
            elif _array_sha256(pixels) != row["array_sha256"]:
                problem = "cache file checksum does not match the table"
            else:
                if time.time_ns() - status.st_mtime_ns >= _SETTLED_NS:  # else the record would not be settled
                    self._record_stat(row["cache_key"], status)
                return pixels
        logger.warning(
            "Rebuilding damaged image cache entry %s for %s: %s",
            cache_file,
            os.fspath(path),
            problem,
        )
        return None

    def _record_stat(self, cache_key: str, status: os.stat_result) -> None:
        """Remembers the size and mtime of a cache file whose checksum has just matched."""
        try:
            with self._lock:
                self._connection.execute(
                    "UPDATE entries SET file_size = ?, file_mtime_ns = ?, stat_recorded_ns = ? WHERE cache_key = ?",
                    (status.st_size, status.st_mtime_ns, time.time_ns(), cache_key),
                )
        except sqlite3.OperationalError as error:  # locked too long: the next read checks again
            logger.warning("Could not record image cache file status %s: %s", cache_key, error)

    def _discard_row(self, row: dict) -> None:
        """Forgets a damaged entry (only if no other thread has rebuilt it meanwhile).

        The damaged file itself is left to be overwritten by the rebuild: deleting it
        could remove a file another thread has just rebuilt under the same name.
        """
        with self._lock:
            self._connection.execute(
                "DELETE FROM entries WHERE cache_key = ? AND array_sha256 = ? "
                "AND created_at = ?",
                (row["cache_key"], row["array_sha256"], row["created_at"]),
            )

    def _write_entry(
        self,
        *,
        cache_key: str,
        source_path: str,
        content_sha256: str,
        x_size: int,
        y_size: int,
        normalization: str,
        pixels: np.ndarray,
    ) -> None:
        """Writes the .npy file atomically, then its table row.

        A full disk or a read-only directory raises CacheWriteError naming the cache
        directory (the temporary file is gone, and a file whose row could not be written is
        removed). Other failures to write are logged, not raised: the caller already has its
        array, and the next load simply tries again.
        """
        # Two-character subdirectories keep any one directory small (COCO has 120k images).
        relative_file = Path(cache_key[:2]) / f"{cache_key}.npy"
        cache_file = self.cache_dir / relative_file
        try:
            with cache_writes(self.cache_dir, "image cache", _CACHE_SETTING):
                cache_file.parent.mkdir(exist_ok=True)
                _write_npy_atomically(cache_file, pixels)
                status = cache_file.stat()
        except OSError as error:
            logger.warning("Could not write image cache file %s: %s", cache_file, error)
            return
        created_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        row = (
            cache_key,
            source_path,
            content_sha256,
            x_size,
            y_size,
            normalization,
            CACHE_FORMAT_VERSION,
            relative_file.as_posix(),
            _array_sha256(pixels),
            created_at,
            status.st_size,
            status.st_mtime_ns,
            time.time_ns(),
        )
        try:
            with self._lock:
                self._connection.execute(
                    f"INSERT OR REPLACE INTO entries ({', '.join(_TABLE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_TABLE_COLUMNS))})",
                    row,
                )
        except sqlite3.OperationalError as error:  # e.g. locked by another process too long
            reason = _sqlite_write_failure(error)
            if reason is None:
                logger.warning("Could not record image cache entry %s: %s", cache_file, error)
                return
            cache_file.unlink(missing_ok=True)  # no file without its row
            raise cache_write_error(self.cache_dir, "image cache", _CACHE_SETTING, reason) from error


# What to change to move the image cache, named by its write errors.
_CACHE_SETTING = "images.cache_dir (or set images.cache=false)"

# SQLite's messages for the failures a cache cannot work around (it reports no errno).
_SQLITE_WRITE_FAILURES = {"disk is full": "no space left on the device",
                          "readonly database": "the folder or index.sqlite is read-only",
                          "unable to open database file": "cannot create index.sqlite there (read-only or no permission)"}


def _sqlite_write_failure(error: sqlite3.OperationalError) -> str | None:
    message = str(error)
    return next((reason for text, reason in _SQLITE_WRITE_FAILURES.items() if text in message), None)


def _is_settled(row: dict, status: os.stat_result) -> bool:
    """Whether the file is as it was when its checksum last matched (see _SETTLED_NS)."""
    return (row["file_size"] == status.st_size and row["file_mtime_ns"] == status.st_mtime_ns
            and row["stat_recorded_ns"] is not None and row["stat_recorded_ns"] - status.st_mtime_ns >= _SETTLED_NS)


def _write_npy_atomically(destination: Path, array: np.ndarray) -> None:
    """Saves ``array`` so that readers see either no file or the complete file.

    Writes a temporary file in the destination's directory, flushes and fsyncs it, then
    renames it over the destination (os.replace is atomic within one file system).
    """
    file_descriptor, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.stem}.", suffix=".tmp"
    )
    try:
        with os.fdopen(file_descriptor, "wb") as file:
            np.save(file, array, allow_pickle=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, destination)
    except BaseException:
        try:
            os.unlink(temporary_name)
        except FileNotFoundError:
            pass
        raise
