"""Atomic file writes: a reader never sees half a file, an interrupted write leaves none."""

from __future__ import annotations

import contextlib
import csv
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
