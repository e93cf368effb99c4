"""Tests for captioning.evaluation.paired_bootstrap and the per-image CIDEr-D it resamples."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from test_coco_metrics import GOOD_HYPOTHESES, REFERENCES, SHUFFLED_HYPOTHESES

from captioning.data.datasets import CaptionedImage
from captioning.data.vocabulary import spaced_words
from captioning.evaluation.cider import CiderD
from captioning.evaluation.evaluate import score_captions
from captioning.evaluation.paired_bootstrap import (
    bootstrap_interval,
    format_difference,
    paired_difference,
    per_image_scores,
    read_image_scores,
)

EXAMPLES = [CaptionedImage(f"image_{index}.jpg", tuple(references)) for index, references in enumerate(REFERENCES)]


def write_captions(path, scores: dict[str, float], column: str = "cider"):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "references", column])
        writer.writeheader()
        writer.writerows({"image": image, "caption": "a caption", "references": "a | b", column: score}
                         for image, score in scores.items())
    return path


def test_per_image_cider_averages_to_the_split_cider():
    """The per-image scores of the captions file are pycocoevalcap's CIDEr-D image by image:
    their mean is the split's cider, they match the self-critical reward's own CiderD (document
    frequencies from the same references) image by image, and the good captions beat the same
    captions on the wrong images on every image."""
    good_metrics, good = score_captions(EXAMPLES, GOOD_HYPOTHESES, "test")
    shuffled_metrics, shuffled = score_captions(EXAMPLES, SHUFFLED_HYPOTHESES, "test")
    assert good.shape == (len(EXAMPLES),)
    assert good.mean() == pytest.approx(good_metrics["cider"], abs=1e-9)
    assert shuffled.mean() == pytest.approx(shuffled_metrics["cider"], abs=1e-9)
    references = [[spaced_words(caption) for caption in example.captions] for example in EXAMPLES]
    reward = CiderD(references).scores([spaced_words(caption) for caption in GOOD_HYPOTHESES], references)
    np.testing.assert_allclose(good, reward, atol=1e-9)
    assert (good > shuffled).all()


def test_two_images_known_answer():
    """Differences 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the
    central 95 % of the means runs from 0 to 1."""
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)


def test_identical_differences_have_no_spread():
    assert bootstrap_interval([0.02] * 50) == pytest.approx((0.02, 0.02))


def test_the_interval_narrows_with_more_images_around_the_mean():
    """A true lead of 0.02 under per-image noise 0.2: 100 images cannot resolve it (the interval
    holds 0), 10,000 can; both intervals hold the observed mean, with about the normal
    approximation's width (2 x 1.96 x sd / sqrt(n))."""
    generator = np.random.default_rng(1)
    for images, resolved in [(100, False), (10_000, True)]:
        differences = 0.02 + 0.2 * generator.standard_normal(images)
        low, high = bootstrap_interval(differences)
        assert low < differences.mean() < high
        assert (low > 0) == resolved, (images, low, high)
        normal_width = 2 * 1.96 * differences.std(ddof=1) / np.sqrt(images)
        assert high - low == pytest.approx(normal_width, rel=0.15)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="one difference per image"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([0.1, 0.2], level=95)


def test_per_image_scores_average_the_seeds_and_pair_by_image(tmp_path):
    first = write_captions(tmp_path / "seed0.csv", {"a.jpg": 0.2, "b.jpg": 0.6})
    second = write_captions(tmp_path / "seed1.csv", {"b.jpg": 0.4, "a.jpg": 0.4})  # other order
    images, scores = per_image_scores([first, second])
    assert images == ["a.jpg", "b.jpg"] and scores == pytest.approx([0.3, 0.5])
    other = write_captions(tmp_path / "other.csv", {"b.jpg": 0.1, "a.jpg": 0.3})
    mean, low, high = paired_difference(images, scores, *per_image_scores([other]))
    assert mean == pytest.approx(((0.3 - 0.3) + (0.5 - 0.1)) / 2)
    assert low == pytest.approx(0.0) and high == pytest.approx(0.4)  # the two-image known answer, scaled
    assert format_difference(mean, low, high) == "+0.200 [+0.000, +0.400]"


def test_captions_of_other_images_or_without_scores_are_refused_naming_the_file(tmp_path):
    first = write_captions(tmp_path / "seed0.csv", {"a.jpg": 0.2, "b.jpg": 0.6})
    elsewhere = write_captions(tmp_path / "seed1.csv", {"a.jpg": 0.2, "c.jpg": 0.6})
    with pytest.raises(ValueError, match="seed1.csv scored other images"):
        per_image_scores([first, elsewhere])
    old = write_captions(tmp_path / "old.csv", {"a.jpg": 0.2}, column="bleu")
    with pytest.raises(ValueError, match="old.csv: no 'cider' column"):
        read_image_scores(old)
    with pytest.raises(ValueError, match="missing.csv: no captions file"):
        read_image_scores(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="same images"):
        paired_difference(["a.jpg"], np.array([0.1]), ["b.jpg"], np.array([0.2]))
