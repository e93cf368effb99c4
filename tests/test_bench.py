"""make bench, in its tiny --quick mode: every measurement runs and lands in the JSON.

The quick sizes say nothing about speed; only the full bench (make bench) is compared
with the targets."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.bench import TARGETS, format_table, meets_target, random_tokens, synthetic_photos
from benchmarks.decoder_bench import FEATURE_SHAPE, attention_step_flops, flickr8k_like_tokens
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID

KEYS = ["feature_extraction_vs_predict", "cached_training_speedup", "batched_beam_speedup",
        "cache_vs_decode_speedup", "training_peak_memory_gb", "rnn_epoch_seconds", "attention_epoch_seconds",
        "attention_flops_utilization", "batch_caption_images_per_second", "batch_vs_per_call_speedup"]


@pytest.mark.slow
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
    for decoder in ("rnn", "attention"):  # each decoder's epoch is also timed in bfloat16
        epoch = report["details"][f"{decoder}_epoch_seconds"]
        assert epoch["bfloat16_speedup"] == pytest.approx(epoch["epoch_seconds"] / epoch["bfloat16_epoch_seconds"])
    assert 0.05 < report["training_peak_memory_gb"] < 8  # a TensorFlow process, not a number of KiB or bytes
    batch = report["details"]["batch_vs_per_call_speedup"]
    assert len(batch["per_call_seconds"]) == 1 and batch["per_call_seconds"][0] > 1  # a whole `caption` process
    assert report["batch_vs_per_call_speedup"] == pytest.approx(
        batch["per_call_seconds"][0] * report["batch_caption_images_per_second"], rel=0.01)
    printed = capsys.readouterr().out
    for key in KEYS:
        assert TARGETS[key][0] in printed  # the table


def test_the_table_says_which_targets_are_met():
    results = {"feature_extraction_vs_predict": 0.9, "cached_training_speedup": 19.0, "batched_beam_speedup": 8.0,
               "cache_vs_decode_speedup": 3.5, "training_peak_memory_gb": 3.0, "rnn_epoch_seconds": 45.0,
               "attention_epoch_seconds": 91.0, "attention_flops_utilization": 0.39}
    assert [meets_target(key, value) for key, value in results.items()] == [True, False, True, True, False, True,
                                                                            False, False]
    lines = format_table(results).splitlines()
    assert [line.endswith("NOT met") for line in lines[2:]] == [False, True, False, False, True, False, True, True]


def test_synthetic_flickr8k_captions_have_flickr8ks_lengths():
    """decoder_bench: word counts drawn from Flickr8k's histogram (mean 10.9 words), cut at
    max_length - 2 words as the packer cuts them, each caption <start> ... <end> then padding."""
    tokens = flickr8k_like_tokens(2000, 24, 2504)  # (2000, 5, 24)
    words = (tokens > END_ID).sum(axis=-1)
    assert 10.6 < words.mean() < 11.2 and words.max() == 22 and words.min() >= 2
    assert np.all(tokens[:, :, 0] == START_ID)
    ends = np.argmax(tokens == END_ID, axis=-1)
    assert np.all(ends == words + 1) and np.all((tokens != PAD_ID).sum(axis=-1) == words + 2)


def test_attention_step_flops_counts_every_matmul():
    """A known answer worked by hand: 1 image, 1 caption row of 2 steps, 1 real target;
    units 2, attention 3, embedding 4, vocabulary 5, LSTM (gates 8), deep output layer."""
    decoder = SimpleNamespace(units=2, attention_units=3, embedding_dim=4, vocab_size=5, state_count=2,
                              cell_name="lstm", attention_gate=True, output_layer="deep", attention_placement="input")
    captions = np.array([[[1, 7]]])
    targets = np.array([[[7, 0]]])
    regions, channels = FEATURE_SHAPE  # 49, 768
    per_image = regions * channels * 3 + channels * 2 * 2
    per_step = 2 * 3 + regions * 3 + regions * channels + 2 + (channels + 2 + 4) * 8
    per_token = (2 + channels) * 4 + 4 * 5
    assert attention_step_flops(decoder, 1, captions, targets) == 6 * (per_image + 2 * per_step + per_token)
    # attention after the cell: the cell's input is [word, mean image], the image's gates once per
    # caption, and W_h h, the scores and the gate at the one real target token instead of both steps
    decoder.attention_placement = "output"
    per_image += channels * 4
    attended = 2 * 3 + regions * 3 + 2
    per_step -= channels * 8 + attended
    per_caption = 4 * 8
    per_token += attended
    assert attention_step_flops(decoder, 1, captions, targets) == 6 * (per_image + per_caption + 2 * per_step + per_token)


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
