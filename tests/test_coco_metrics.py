"""Tests for captioning.evaluation.coco_metrics: CIDEr-D, METEOR, ROUGE-L via pycocoevalcap, and its BLEU
checked against ours (captioning.evaluation.bleu, nltk).

Only one test starts the real METEOR jar (about 10 s); the others hide java or fake it.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from captioning.data.datasets import CaptionedImage
from captioning.evaluation import coco_metrics
from captioning.evaluation.bleu import bleu_scores
from captioning.evaluation.coco_metrics import (
    MetricUnavailable,
    cider_d_scores,
    coco_bleu_scores,
    coco_caption_scores,
    meteor_score,
    rouge_l_score,
)
from captioning.evaluation.evaluate import format_metrics, score_captions

# conftest.py stands a fixed number in for METEOR everywhere else; this file tests the real one.
pytestmark = pytest.mark.usefixtures("real_meteor")

# Six images, three references each, with case, punctuation, a possessive and a hyphen.
REFERENCES = [
    ["A brown dog's toy lies on the green grass.", "A dog is running on the grass.", "The brown dog sprints through a field."],
    ["Two children play with a red ball on the beach.", "Kids playing ball at the beach.", "Two young kids kick a ball near the ocean."],
    ["A man rides a bicycle down a city street.", "A cyclist in a t-shirt on a busy street.", "A man is riding his bike in the city."],
    ["A woman in a red coat walks her dog in the snow.", "A lady walking a dog through the snow.", "Woman and dog on a snowy path."],
    ["A group of people sit around a table eating dinner.", "Friends share a meal at a long table.", "People eating together at a dinner table."],
    ["A black cat sleeps on a wooden chair.", "The cat is asleep on a chair.", "A cat curled up on a chair by the window."],
]
GOOD_HYPOTHESES = [
    "A brown dog's toy is on the grass.",
    "Two kids play with a ball on the beach.",
    "A man in a t-shirt riding a bike down the street.",
    "A woman walks a dog in the snow.",
    "A group of people eating at a table.",
    "A cat is sleeping on a chair.",
]
PERFECT_HYPOTHESES = [image_references[0] for image_references in REFERENCES]
HEAD_HYPOTHESES = [" ".join(hypothesis.split()[:3]) for hypothesis in GOOD_HYPOTHESES]  # "A brown dog's", ...
SHUFFLED_HYPOTHESES = GOOD_HYPOTHESES[1:] + GOOD_HYPOTHESES[:1]  # each caption on the wrong image
UNRELATED_HYPOTHESES = ["Purple triangles fly above orange mountains."] * len(REFERENCES)  # no word in any reference

CAT_REFERENCES = ["the cat is on the mat", "there is a cat on the mat"]


# ---- BLEU: ours (nltk) against pycocoevalcap's ------------------------------------------

# Both implementations get the same tokens (our ``words``), so tokenization explains none of
# the difference. What is left is pycocoevalcap's guard against division by zero: each
# order's precision is (matches + 1e-15) / (n-grams + 1e-9), and the brevity penalty uses
# (c + 1e-15) / (r + 1e-9), which is just below 1 when c == r. On this fixture c = 53 > r = 52
# (no brevity penalty in either), and each precision shrinks by the relative 1e-9 / its
# n-gram count (53, 47, 41, 35): measured, ours minus theirs is 1.9e-11 for BLEU-1, 1.6e-11,
# 1.3e-11, and 1.0e-11 for BLEU-4. 1e-9 bounds it; swapping two BLEU orders moves a score by > 0.1.
# (For scale: pycocoevalcap's own PTB tokenization of the same captions -- "dog 's", "t-shirt"
# -- gives BLEU-4 0.418 instead of 0.441; that difference is why we feed both our tokens.)
BLEU_AGREEMENT = 1e-9


def test_our_bleu_agrees_with_pycocoevalcap_bleu_on_the_same_tokens():
    ours = bleu_scores(REFERENCES, GOOD_HYPOTHESES)
    theirs = coco_bleu_scores(REFERENCES, GOOD_HYPOTHESES)
    assert set(theirs) == {"coco_bleu_1", "coco_bleu_2", "coco_bleu_3", "coco_bleu_4"}
    for order in range(1, 5):
        assert theirs[f"coco_bleu_{order}"] == pytest.approx(ours[f"bleu_{order}"], abs=BLEU_AGREEMENT), order
    # Values far apart, so that a swap of two orders on either side fails the comparison above.
    values = [ours[f"bleu_{order}"] for order in range(1, 5)]
    assert all(higher - lower > 0.1 for higher, lower in zip(values, values[1:])), values
    assert values[3] == pytest.approx(0.4411686808602923, abs=1e-12)  # nonzero 4-gram matches: a real check


def test_bleu_differs_where_an_order_has_no_match_nltk_zero_pycocoevalcap_tiny():
    # the cat sat on the mat: p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3, c = r = 6 (test_metrics.py).
    # nltk: BLEU-4 = 0 (7e-78: it puts sys.float_info.min in place of p4 = 0).
    # pycocoevalcap: p4 = (0 + 1e-15) / (3 + 1e-9), BLEU-4 ~ 8e-5.
    ours = bleu_scores([CAT_REFERENCES], ["the cat sat on the mat"])
    theirs = coco_bleu_scores([CAT_REFERENCES], ["the cat sat on the mat"])
    assert ours["bleu_4"] == pytest.approx(0.0, abs=1e-70)
    assert theirs["coco_bleu_4"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1e-15 / 3) ** 0.25, rel=1e-6)
    assert theirs["coco_bleu_3"] == pytest.approx(ours["bleu_3"], abs=BLEU_AGREEMENT)


def test_bleu_differs_for_a_hypothesis_shorter_than_n_words():
    # "a cat sits" has no 4-gram: nltk counts one (unmatched) 4-gram for it, pycocoevalcap none.
    # Exact matches: nltk p4 = 3/4 -> BLEU-4 = 0.75 ** 0.25; pycocoevalcap p4 = 3/3 -> 1.
    references = [["a dog runs on the grass"], ["a cat sits"]]
    hypotheses = ["a dog runs on the grass", "a cat sits"]
    assert bleu_scores(references, hypotheses)["bleu_4"] == pytest.approx(0.75**0.25, abs=1e-12)
    assert coco_bleu_scores(references, hypotheses)["coco_bleu_4"] == pytest.approx(1.0, abs=BLEU_AGREEMENT)


# ---- CIDEr-D and ROUGE-L ----------------------------------------------------------------


def test_perfect_captions_score_rouge_l_one_and_a_high_cider():
    assert rouge_l_score(REFERENCES, PERFECT_HYPOTHESES) == pytest.approx(1.0, abs=1e-12)
    assert cider_d_scores(REFERENCES, PERFECT_HYPOTHESES)[0] > 3.0  # measured 3.93; CIDEr-D is x10, not bounded by 1


def test_unrelated_captions_score_zero():
    assert cider_d_scores(REFERENCES, UNRELATED_HYPOTHESES)[0] == 0.0
    assert rouge_l_score(REFERENCES, UNRELATED_HYPOTHESES) == 0.0


def test_cider_ranks_better_caption_sets_higher():
    ranked = [PERFECT_HYPOTHESES, GOOD_HYPOTHESES, HEAD_HYPOTHESES, SHUFFLED_HYPOTHESES, UNRELATED_HYPOTHESES]
    scores = [cider_d_scores(REFERENCES, hypotheses)[0] for hypotheses in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores), scores
    assert scores[3] < 0.1  # captions of other images: near 0 (measured 0.038)


def test_rouge_l_by_hand():
    # LCS("a cat on the mat", "the cat is on the mat") = "cat on the mat", 4 words:
    # P = 4/5, R = 4/6, F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    precision, recall = 4 / 5, 4 / 6
    expected = (1 + 1.44) * precision * recall / (recall + 1.44 * precision)
    assert rouge_l_score([["The cat is on the mat."]], ["A cat on the mat"]) == pytest.approx(expected, abs=1e-12)


def test_cider_of_a_single_image_is_zero_because_its_document_frequencies_come_from_the_scored_set():
    # idf = log(images) - log(document frequency) = log(1) - log(1) = 0 for every n-gram.
    assert cider_d_scores([["a dog runs on the grass"]], ["a dog runs on the grass"])[0] == 0.0


def test_mismatched_or_empty_input_raises_value_error():
    with pytest.raises(ValueError, match="2 hypotheses for 1 reference lists"):
        coco_caption_scores([CAT_REFERENCES], ["a cat", "a dog"])
    with pytest.raises(ValueError, match="at least one captioned image"):
        coco_caption_scores([], [])
    with pytest.raises(ValueError, match="at least one reference"):
        coco_caption_scores([[]], ["a cat"])


# ---- METEOR -----------------------------------------------------------------------------


def child_pids() -> set[int]:
    """Live child processes of this test process (Linux /proc)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to list child processes")
    children = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == os.getpid():
            children.add(int(stat_file.parent.name))
    return children


def fake_java(directory: Path, script: str) -> None:
    """Puts an executable ``java`` shell script alone on PATH."""
    java = directory / "java"
    java.write_text("#!/bin/sh\n" + script + "\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java on PATH")
def test_meteor_with_java_is_a_score_in_zero_one_and_leaves_no_process():
    before = child_pids()
    score = meteor_score(REFERENCES, GOOD_HYPOTHESES)
    assert isinstance(score, float) and 0.2 < score < 1.0, score  # measured 0.400
    assert child_pids() - before == set()


def test_without_java_meteor_is_none_and_named_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert shutil.which("java") is None
    scores = coco_caption_scores(REFERENCES, GOOD_HYPOTHESES)
    assert scores["meteor"] is None  # not 0
    assert [entry["metric"] for entry in scores["unavailable"]] == ["meteor"]
    assert "java is not on PATH" in scores["unavailable"][0]["reason"]
    assert scores["cider"] > 1.0 and 0.5 < scores["rouge_l"] < 1.0  # the others need no java
    with pytest.raises(MetricUnavailable, match="java"):
        meteor_score(REFERENCES, GOOD_HYPOTHESES)


def test_a_failing_java_process_makes_meteor_unavailable_with_its_message_every_time(monkeypatch, tmp_path):
    fake_java(tmp_path, 'echo "Error: Unable to access jarfile meteor-1.5.jar" >&2; exit 1')
    monkeypatch.setenv("PATH", str(tmp_path))
    before = child_pids()
    for _ in range(3):  # repeated calls neither hang on the scorer's lock nor leak processes
        scores = coco_caption_scores(REFERENCES, GOOD_HYPOTHESES)
        assert scores["meteor"] is None
        [entry] = scores["unavailable"]
        assert entry["metric"] == "meteor" and "Unable to access jarfile" in entry["reason"], entry
    assert child_pids() - before == set()


def test_a_hung_java_process_is_stopped_after_the_timeout(monkeypatch, tmp_path):
    fake_java(tmp_path, f"exec {shutil.which('sleep')} 60")  # never answers
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(coco_metrics, "METEOR_TIMEOUT_S", 0.5)
    before = child_pids()
    with pytest.raises(MetricUnavailable, match="ran past 0.5 s"):
        meteor_score(REFERENCES, GOOD_HYPOTHESES)
    assert child_pids() - before == set()


# ---- metrics.json -----------------------------------------------------------------------


def examples() -> list[CaptionedImage]:
    return [CaptionedImage(f"image_{index}.png", tuple(captions)) for index, captions in enumerate(REFERENCES)]


def test_score_captions_adds_meteor_rouge_l_and_cider(monkeypatch):
    monkeypatch.setattr(coco_metrics, "meteor_score", lambda references, hypotheses: 0.25)  # no 10 s java start
    metrics, _ = score_captions(examples(), GOOD_HYPOTHESES, "test")
    assert set(metrics) == {
        "split", "images", "bleu_1", "bleu_2", "bleu_3", "bleu_4",
        "meteor", "rouge_l", "cider", "bleu_4_shuffled_images", "unavailable",
    }
    assert metrics["meteor"] == 0.25 and metrics["unavailable"] == []
    assert metrics["rouge_l"] == pytest.approx(rouge_l_score(REFERENCES, GOOD_HYPOTHESES), abs=1e-12)
    assert metrics["cider"] == pytest.approx(cider_d_scores(REFERENCES, GOOD_HYPOTHESES)[0], abs=1e-12)
    assert metrics["bleu_4"] == pytest.approx(bleu_scores(REFERENCES, GOOD_HYPOTHESES)["bleu_4"], abs=1e-12)
    printed = format_metrics(metrics)
    assert "meteor                   0.2500" in printed
    assert f"cider                    {metrics['cider']:.4f}" in printed


def test_score_captions_without_java_reports_meteor_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    metrics, _ = score_captions(examples(), GOOD_HYPOTHESES, "test")
    assert metrics["meteor"] is None
    assert [entry["metric"] for entry in metrics["unavailable"]] == ["meteor"]
    assert "meteor                   unavailable (java is not on PATH" in format_metrics(metrics)
