"""Feature shards (feature_shards.py) and the COCO-sized rehearsal (coco_rehearsal.py) at a tiny size."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.coco_rehearsal import (
    COCO_TRAIN_IMAGES,
    RehearsalError,
    batches_per_epoch,
    projected_epoch_seconds,
    run_rehearsal,
    sharded_features,
)
from benchmarks.decoder_bench import FEATURE_SHAPE
from benchmarks.feature_shards import INDEX_FILE, ShardedFeatures, ShardError, rows_per_shard, shard_name, write_shards

ROW_SHAPE = (3, 2)


def numbered_rows(count: int) -> np.ndarray:
    """(count, 3, 2) float16: row k holds k + 0.25 * (0..5), so every row is told apart."""
    return (np.arange(count)[:, None, None] + 0.25 * np.arange(6).reshape(ROW_SHAPE)).astype(np.float16)


def in_chunks(array: np.ndarray, sizes):
    start = 0
    for size in sizes:
        yield array[start:start + size]
        start += size


def test_rows_per_shard_fills_the_byte_budget_and_keeps_at_least_one_row():
    assert rows_per_shard((49, 768), np.float16, 1_500_000_000) == 19_929  # 75,264 bytes a row
    assert rows_per_shard(ROW_SHAPE, np.float16, 24) == 2
    assert rows_per_shard(ROW_SHAPE, np.float16, 5) == 1


def test_shards_written_from_chunks_that_straddle_them_read_back_as_one_array(tmp_path):
    expected = numbered_rows(23)
    # 5 rows (60 bytes) a shard -> 5 shards; chunks of 7, 1, 9, 6 rows cross shard ends
    features = write_shards(tmp_path / "shards", expected.shape, in_chunks(expected, [7, 1, 9, 6]),
                            max_shard_bytes=60)
    assert features.shard_rows == [5, 5, 5, 5, 3]
    assert sorted(path.name for path in (tmp_path / "shards").iterdir()) == \
        sorted([INDEX_FILE] + [shard_name(index, 5) for index in range(5)])  # no temporary left
    for path, rows in zip(features.paths, features.shard_rows):
        shard = np.load(path, mmap_mode="r", allow_pickle=False)  # each shard is a plain .npy
        assert isinstance(shard, np.memmap) and shard.shape == (rows, *ROW_SHAPE) and shard.dtype == np.float16
        assert path.stat().st_size <= 60 + 128  # the rows within the budget, plus the .npy header
    again = ShardedFeatures(tmp_path / "shards")
    assert (len(again), again.shape, again.dtype) == (23, (23, *ROW_SHAPE), np.float16)
    indices = np.random.default_rng(0).permutation(23)[:11]  # unsorted, several shards
    np.testing.assert_array_equal(again[indices], expected[indices])
    np.testing.assert_array_equal(again[np.sort(indices)], expected[np.sort(indices)])
    np.testing.assert_array_equal(again[3:17], expected[3:17])
    np.testing.assert_array_equal(again[-1], expected[-1])
    assert again[np.array([], dtype=np.int64)].shape == (0, *ROW_SHAPE)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_a_read_leaves_no_shard_mapped_so_an_epoch_of_reads_does_not_stay_resident(tmp_path):
    features = write_shards(tmp_path / "shards", (23, *ROW_SHAPE), [numbered_rows(23)], max_shard_bytes=60)

    def mapped_shards():
        maps = Path("/proc/self/maps").read_text()
        return [path for path in features.paths if str(path) in maps]

    held = np.load(features.paths[2], mmap_mode="r", allow_pickle=False)
    assert mapped_shards() == [features.paths[2]]  # a map that is kept shows here
    del held
    rows = features[np.arange(23)]
    assert rows.shape == (23, *ROW_SHAPE) and mapped_shards() == []


@pytest.mark.parametrize("sizes, message", [([10, 10], "ended after 20 of 23 rows"),
                                            ([23, 1], "more than the 23 rows")])
def test_chunks_of_the_wrong_total_are_refused(tmp_path, sizes, message):
    rows = numbered_rows(24)
    with pytest.raises(ValueError, match=message):
        write_shards(tmp_path / "shards", (23, *ROW_SHAPE), in_chunks(rows, sizes), max_shard_bytes=60)
    assert not (tmp_path / "shards" / INDEX_FILE).exists()  # never looks complete


def test_a_missing_index_or_a_wrong_shard_is_an_error_naming_the_file(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, (12, *ROW_SHAPE), [numbered_rows(12)], max_shard_bytes=60)
    bad = folder / shard_name(1, 3)
    np.save(bad, numbered_rows(4), allow_pickle=False)
    with pytest.raises(ShardError, match=f"{bad}: holds float16 \\(4, 3, 2\\)"):
        ShardedFeatures(folder)
    (folder / INDEX_FILE).unlink()
    with pytest.raises(ShardError, match="no shards.json"):
        ShardedFeatures(folder)


def test_projection_is_seconds_a_step_times_the_batches_of_a_coco_epoch():
    assert batches_per_epoch(COCO_TRAIN_IMAGES, 16) == 7_081  # 113,287 / 16 = 7,080.4
    assert batches_per_epoch(32, 16) == 2
    assert projected_epoch_seconds(0.5, COCO_TRAIN_IMAGES, 16) == pytest.approx(3_540.5)


@pytest.mark.slow
def test_a_tiny_rehearsal_trains_from_two_shards_and_reports_memory_and_the_projection(tmp_path, capsys):
    images = 200
    row_bytes = int(np.prod(FEATURE_SHAPE)) * 2
    out = tmp_path / "rehearsal.json"
    result = run_rehearsal(images=images, steps=2, warmup_steps=1, work_dir=tmp_path / "work", out=out,
                           max_shard_bytes=120 * row_bytes, vocabulary_words=40,
                           overrides=["decoder.units=16", "decoder.embedding_dim=8", "decoder.attention_units=8"])
    assert json.loads(out.read_text()) == result
    folder = tmp_path / "work" / f"features-{images}"
    features = ShardedFeatures(folder)
    assert result["shards"] == 2 and features.shard_rows == [120, 80]
    assert result["feature_gb"] == pytest.approx(images * row_bytes / 1e9)
    assert result["largest_shard_gb"] == pytest.approx(120 * row_bytes / 1e9)
    assert result["feature_write_seconds"] > 0 and result["epoch_feature_read_seconds"] > 0
    assert np.all(features[np.arange(images)] >= 0)  # written whole: ReLU-like features in every row
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    assert 0.05 < result["peak_rss_after_writing_gb"] <= result["peak_rss_gb"] <= peak_now  # bytes, this process
    assert result["batch"] == 16 and result["timed_steps"] == 2 and result["seconds_per_step"] > 0
    assert result["batches_per_coco_epoch"] == 7_081
    assert result["projected_coco_epoch_seconds"] == pytest.approx(result["seconds_per_step"] * 7_081)
    assert result["projected_epoch_seconds"] == pytest.approx(result["seconds_per_step"] * 13)  # 200 / 16
    printed = capsys.readouterr().out
    assert "2 shards" in printed and "projected COCO epoch on this machine" in printed
    reused, write_seconds = sharded_features(folder, images, 120 * row_bytes)
    assert write_seconds is None and reused.shard_rows == [120, 80]  # the next run of this size reuses them
    _, write_seconds = sharded_features(folder, images, 60 * row_bytes)
    assert write_seconds > 0 and ShardedFeatures(folder).shard_rows == [60, 60, 60, 20]  # smaller shards: rewritten


def test_the_cli_refuses_a_rehearsal_without_steps(capsys):
    assert main(["rehearsal", "--images", "10", "--steps", "0"]) == 2
    assert "at least one image" in capsys.readouterr().err
    with pytest.raises(RehearsalError):
        run_rehearsal(images=0)


def test_too_little_free_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import benchmarks.coco_rehearsal as rehearsal

    monkeypatch.setattr(rehearsal.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**9))
    with pytest.raises(RehearsalError, match="8.5 GB of features need writing but only 1.0 GB is free"):
        sharded_features(tmp_path / "features", COCO_TRAIN_IMAGES, 10**9)
    assert not list((tmp_path / "features").iterdir())
