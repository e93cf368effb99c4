"""Caches shared by runs: two processes filling one cache at once, a full disk, a read-only folder.

Two `make train` runs on the same data and encoder read and write the same image cache
(images.py: atomic .npy files, SQLite rows) and feature cache (features.py: one extraction
under features.lock, the other run waits and reads it). A full disk (ENOSPC, injected) or
a read-only folder gives one CacheWriteError naming the folder and leaves no half-written
entry. Tests may run as root, where chmod does not stop a write: the read-only cases then
inject the error the filesystem would give (EACCES) instead of skipping.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.config import EncoderConfig, ImagesConfig
from captioning.data.image_cache import ImageCache
from captioning.data.images import load_image
from captioning.files import CacheWriteError, is_temporary
from captioning.training.features import LOCK_FILE, FeatureCache

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 24  # images are cached at SIZE x SIZE

IMAGE_WORKER = """
import sys, time
from pathlib import Path
from captioning.data.image_cache import ImageCache
cache_dir, go, *paths = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.002)
cache = ImageCache(cache_dir)
for path in paths:
    cache.load(path, {size}, {size}, "unit")
print("misses", cache.misses, "hits", cache.hits)
""".format(size=SIZE)

FEATURE_WORKER = """
import sys, time
from pathlib import Path
import numpy as np
from captioning.config import EncoderConfig, ImagesConfig
from captioning.training.features import FeatureCache
root, go, log, out, *paths = sys.argv[1:]

def encode_batches(batch_paths):  # a slow fake encoder: (batch, 3 regions, 2 channels)
    for start in range(0, len(batch_paths), 4):
        with open(log, "a") as handle:
            handle.write(f"{start}\\n")
        time.sleep(0.05)
        yield np.stack([np.full((3, 2), len(path) + index, np.float32)
                        for index, path in enumerate(batch_paths[start:start + 4], start)])

while not Path(go).exists():
    time.sleep(0.002)
features = FeatureCache(root).features(paths, EncoderConfig(name="vgg16"), ImagesConfig(), "vgg16", encode_batches,
                                       batch_size=4, label="test")
np.save(out, np.asarray(features), allow_pickle=False)
"""


def write_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"image-{index:02d}.png"
        Image.fromarray(generator.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def start_together(scripts: list[list[str]], go: Path) -> list[str]:
    """Runs each argument list as ``python -c``; they start their work when ``go`` appears.
    Returns their outputs, after checking that each exited 0."""
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = [subprocess.Popen([sys.executable, "-c", *script], cwd=REPO_ROOT, env=environment,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for script in scripts]
    time.sleep(0.5)
    go.touch()
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output.decode()[-3000:]
        outputs.append(output.decode())
    return outputs


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_two_processes_fill_one_image_cache_at_once(tmp_path):
    paths = write_images(tmp_path / "images", 24)
    cache_dir = tmp_path / "cache"
    start_together([[IMAGE_WORKER, str(cache_dir), str(tmp_path / "go"), *paths]] * 2, tmp_path / "go")

    with ImageCache(cache_dir) as cache:
        entries = cache.entries()
        assert len(entries) == len(paths) == len({entry["cache_key"] for entry in entries})
        assert {entry["source_path"] for entry in entries} == {os.path.abspath(path) for path in paths}
        for path in paths:
            np.testing.assert_array_equal(cache.load(path, SIZE, SIZE, "unit"), load_image(path, SIZE, SIZE, "unit"))
        assert cache.hits == len(paths) and cache.misses == 0
    cache_files = [path for path in files_under(cache_dir) if path.suffix == ".npy"]
    assert len(cache_files) == len(paths)
    assert not [path for path in files_under(cache_dir) if is_temporary(path.name)]


@pytest.mark.slow
def test_two_processes_needing_the_same_features_extract_them_once(tmp_path):
    paths = write_images(tmp_path / "images", 10)
    root, log = tmp_path / "features", tmp_path / "encoder_calls.log"
    scripts = [[FEATURE_WORKER, str(root), str(tmp_path / "go"), str(log), str(tmp_path / f"out-{index}.npy"), *paths]
               for index in range(2)]
    start_together(scripts, tmp_path / "go")

    first, second = (np.load(tmp_path / f"out-{index}.npy", allow_pickle=False) for index in range(2))
    expected = np.stack([np.full((3, 2), len(path) + index, np.float16) for index, path in enumerate(paths)])
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert log.read_text().split() == ["0", "4", "8"], "one process extracted, the other waited and read its file"
    (folder,) = root.iterdir()
    assert sorted(path.name for path in folder.iterdir()) == ["features.lock", "features.npy", "manifest.json"]


def extract(root: Path, paths: list[str]) -> np.ndarray:
    def encode_batches(batch_paths):
        for start in range(0, len(batch_paths), 4):
            yield np.ones((len(batch_paths[start:start + 4]), 3, 2), np.float32)

    return FeatureCache(root).features(paths, EncoderConfig(name="vgg16"), ImagesConfig(), "vgg16", encode_batches,
                                       batch_size=4, label="test")


def no_space(*arguments, **options):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["reserving the file", "writing the progress"])
def test_a_full_disk_stops_feature_extraction_naming_the_folder_and_leaves_no_partial_entry(tmp_path, monkeypatch,
                                                                                           failing):
    paths = write_images(tmp_path / "images", 10)
    root = tmp_path / "features"
    with monkeypatch.context() as patch:
        if failing == "reserving the file":
            patch.setattr(os, "posix_fallocate", no_space)
        else:
            patch.setattr("captioning.training.features.write_json", no_space)
        with pytest.raises(CacheWriteError, match="no space left on the device") as raised:
            extract(root, paths)
    (folder,) = root.iterdir()
    assert str(folder) in str(raised.value) and "images.feature_cache_dir" in str(raised.value)
    assert [path.name for path in folder.iterdir()] == [LOCK_FILE], "no partial features, progress or manifest"
    assert extract(root, paths).shape == (10, 3, 2)  # space again: the next run extracts them


def test_a_full_disk_stops_the_image_cache_naming_the_folder_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    (path,) = write_images(tmp_path / "images", 1)
    cache_dir = tmp_path / "cache"

    def save_half_then_fail(file, array, allow_pickle):
        file.write(b"\x93NUMPY half an entry")
        raise OSError(errno.ENOSPC, "No space left on device")

    with ImageCache(cache_dir) as cache:
        monkeypatch.setattr("captioning.data.image_cache.np.save", save_half_then_fail)
        with pytest.raises(CacheWriteError, match="no space left on the device") as raised:
            cache.load(path, SIZE, SIZE, "unit")
        assert str(cache_dir) in str(raised.value) and "images.cache_dir" in str(raised.value)
        assert cache.entries() == []
    assert [path.name for path in files_under(cache_dir)] == ["index.sqlite"]


def test_a_cache_write_error_inside_tf_data_reaches_the_user_as_itself(tmp_path, monkeypatch):
    from captioning.data.pipeline import ImageReader, image_dataset

    paths = write_images(tmp_path / "images", 2)
    reader = ImageReader(ImagesConfig(x_size=SIZE, y_size=SIZE, cache_dir=str(tmp_path / "cache")), "unit")
    monkeypatch.setattr("captioning.data.image_cache.np.save", no_space)
    with pytest.raises(CacheWriteError, match=str(tmp_path / "cache")):
        with reader.reporting_errors():
            list(image_dataset(paths, reader, batch_size=2))


def writes_are_refused(folder: Path) -> bool:
    """Whether chmod 0o555 really stops writes in ``folder`` (not as root)."""
    probe = folder / "probe"
    try:
        probe.write_text("")
    except PermissionError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """read_only(folder): the folder and everything in it read-only; as root, where chmod
    does not stop writes, writes under it raise EACCES (as a read-only folder would) instead."""
    changed = []

    def make_read_only(folder: Path) -> None:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
            changed.append(path)
        if writes_are_refused(folder):
            return
        refuse_writes_under(folder, monkeypatch)

    yield make_read_only
    for path in changed:
        path.chmod(0o755 if path.is_dir() else 0o644)


def refuse_writes_under(folder: Path, monkeypatch) -> None:
    import sqlite3
    import tempfile

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder)

    def refused(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    original_mkdir, original_mkstemp, original_connect = Path.mkdir, tempfile.mkstemp, sqlite3.connect
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refused(self) if inside(self) and not self.is_dir()
                        else original_mkdir(self, *a, **k))
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, dir=None, **k: refused(dir) if dir and inside(dir)
                        else original_mkstemp(*a, dir=dir, **k))

    def connect(path, *arguments, **options):  # an existing table opens read-only, as SQLite does in such a folder
        if inside(path) and Path(path).is_file():
            return original_connect(f"file:{path}?mode=ro", *arguments, uri=True, **options)
        if inside(path):
            raise sqlite3.OperationalError("unable to open database file")
        return original_connect(path, *arguments, **options)

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_read_only_image_cache_serves_its_entries_and_refuses_new_ones_naming_the_folder(tmp_path, read_only):
    old_path, new_path = write_images(tmp_path / "images", 2)
    cache_dir = tmp_path / "cache"
    with ImageCache(cache_dir) as cache:
        expected = cache.load(old_path, SIZE, SIZE, "unit")
    files_before = files_under(cache_dir)
    read_only(cache_dir)
    with ImageCache(cache_dir) as cache:
        np.testing.assert_array_equal(cache.load(old_path, SIZE, SIZE, "unit"), expected)
        with pytest.raises(CacheWriteError, match="no permission to write|read-only") as raised:
            cache.load(new_path, SIZE, SIZE, "unit")
    assert str(cache_dir) in str(raised.value)
    assert files_under(cache_dir) == files_before


def test_a_read_only_folder_without_a_table_is_one_clear_error(tmp_path, read_only):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    read_only(cache_dir)
    with pytest.raises(CacheWriteError, match="index.sqlite") as raised:
        ImageCache(cache_dir)
    assert str(cache_dir) in str(raised.value)


def test_a_read_only_feature_cache_serves_complete_features_and_refuses_new_ones_naming_the_folder(tmp_path,
                                                                                                 read_only):
    paths = write_images(tmp_path / "images", 10)
    root = tmp_path / "features"
    expected = np.asarray(extract(root, paths[:6]))
    files_before = files_under(root)
    read_only(root)
    np.testing.assert_array_equal(extract(root, paths[:6]), expected)
    with pytest.raises(CacheWriteError, match="no permission to write") as raised:
        extract(root, paths)
    assert str(root) in str(raised.value) and "images.feature_cache_dir" in str(raised.value)
    assert files_under(root) == files_before
