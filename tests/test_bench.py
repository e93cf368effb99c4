"""make bench, in its tiny --quick mode: every measurement runs and lands in the JSON.

The quick sizes say nothing about speed; only the full bench (make bench) is compared
with the targets."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from captioning.bench import TARGETS, format_table, meets_target, random_tokens, synthetic_photos
from captioning.cli import main
from captioning.vocabulary import END_ID, PAD_ID, START_ID

KEYS = ["feature_extraction_vs_predict", "cached_training_speedup", "batched_beam_speedup",
        "cache_vs_decode_speedup", "training_peak_memory_gb"]


def test_quick_bench_writes_every_figure_as_a_positive_finite_number(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
    assert report["quick"] is True
    assert set(report["targets"]) == set(KEYS) == set(TARGETS)
    assert report["details"]["images"].startswith("synthetic")  # no data set needed
    assert report["details"]["training_peak_memory_gb"]["steps"] == 3
    assert 0.05 < report["training_peak_memory_gb"] < 8  # a TensorFlow process, not a number of KiB or bytes
    printed = capsys.readouterr().out
    for key in KEYS:
        assert TARGETS[key][0] in printed  # the table


def test_the_table_says_which_targets_are_met():
    results = {"feature_extraction_vs_predict": 0.9, "cached_training_speedup": 19.0, "batched_beam_speedup": 8.0,
               "cache_vs_decode_speedup": 3.5, "training_peak_memory_gb": 3.0}
    assert [meets_target(key, value) for key, value in results.items()] == [True, False, True, True, False]
    lines = format_table(results).splitlines()
    assert [line.endswith("NOT met") for line in lines[2:]] == [False, True, False, False, True]


def test_synthetic_photos_are_jpegs_of_the_asked_size_and_differ(tmp_path):
    paths = synthetic_photos(tmp_path, 3, (50, 30))
    pixels = []
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (50, 30)
            pixels.append(np.asarray(image, dtype=np.int16))
    assert np.abs(pixels[0] - pixels[1]).mean() > 10
    assert synthetic_photos(tmp_path / "again", 1, (50, 30))[0].endswith("photo_00000.jpg")


def test_random_captions_are_packed_like_real_ones():
    tokens = random_tokens(count=20, length=24, vocab_size=100)
    assert tokens.shape == (20, 5, 24) and tokens.dtype == np.int32
    assert (tokens[:, :, 0] == START_ID).all()
    assert ((tokens == END_ID).sum(axis=-1) == 1).all()
    lengths = np.argmax(tokens == END_ID, axis=-1) - 1  # words between <start> and <end>
    assert lengths.min() >= 8 and lengths.max() <= 16
    after_end = np.arange(24)[None, None, :] > np.argmax(tokens == END_ID, axis=-1)[:, :, None]
    assert (tokens[after_end] == PAD_ID).all()
