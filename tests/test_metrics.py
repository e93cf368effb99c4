"""Tests for captioning.evaluation.bleu: corpus BLEU-1..4 pinned against values computed by hand.

Corpus BLEU (Papineni et al. 2002), as computed here by hand:
  p_n  = (sum over images of clipped n-gram matches) / (sum over images of hypothesis n-grams),
         a hypothesis n-gram counted at most as often as it occurs in any one reference;
  BP   = 1 if c > r else exp(1 - r / c), c the total hypothesis length and r the sum over
         images of the reference length closest to the hypothesis length (shorter on a tie);
  BLEU-N = BP * (p_1 * ... * p_N) ** (1 / N).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from captioning.evaluation.bleu import bleu_scores, derangement, shuffled_image_bleu_4

TOLERANCE = 1e-9

CAT_REFERENCES = ["the cat is on the mat", "there is a cat on the mat"]


def assert_bleu(scores: dict[str, float], bleu_1: float, bleu_2: float, bleu_3: float, bleu_4: float) -> None:
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
    assert scores["bleu_1"] == pytest.approx(bleu_1, abs=TOLERANCE)
    assert scores["bleu_2"] == pytest.approx(bleu_2, abs=TOLERANCE)
    assert scores["bleu_3"] == pytest.approx(bleu_3, abs=TOLERANCE)
    assert scores["bleu_4"] == pytest.approx(bleu_4, abs=TOLERANCE)


# ---- hand-computed values -------------------------------------------------------------


def test_exact_match_scores_one_for_every_order():
    # 6 words: every 1..4-gram is in the first reference; c = 6, closest r = 6, BP = 1.
    scores = bleu_scores([["a dog runs on the grass", "a brown dog is running"]], ["a dog runs on the grass"])
    assert_bleu(scores, 1.0, 1.0, 1.0, 1.0)


def test_the_cat_sat_on_the_mat_against_two_references():
    # hypothesis: the cat sat on the mat (c = 6); references of length 6 and 7 -> r = 6, BP = 1.
    # unigrams  the x2 (max in a reference: 2), cat, sat (0), on, mat       -> p1 = 5/6
    # bigrams   the cat, cat sat (0), sat on (0), on the, the mat           -> p2 = 3/5
    # trigrams  the cat sat, cat sat on, sat on the: 0; on the mat: 1       -> p3 = 1/4
    # 4-grams   the cat sat on, cat sat on the, sat on the mat: none        -> p4 = 0/3
    # BLEU-1 = 5/6; BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2);
    # BLEU-3 = (5/6 * 3/5 * 1/4) ** (1/3) = (1/8) ** (1/3) = 1/2; BLEU-4 = 0 (a zero precision).
    scores = bleu_scores([CAT_REFERENCES], ["the cat sat on the mat"])
    assert_bleu(scores, 5 / 6, math.sqrt(0.5), 0.5, 0.0)


def test_repeated_word_is_clipped_to_its_count_in_one_reference():
    # hypothesis: the the the the the the the (c = 7); "the" appears at most twice in one
    # reference -> p1 = 2/7. Bigram "the the" is in no reference -> p2 = 0.
    # References of length 6 and 7: closest r = 7, BP = 1.
    scores = bleu_scores([CAT_REFERENCES], ["the the the the the the the"])
    assert_bleu(scores, 2 / 7, 0.0, 0.0, 0.0)


def test_short_hypothesis_gets_the_brevity_penalty_of_the_closest_reference():
    # hypothesis: a cat on the mat (c = 5). Every n-gram is in "there is a cat on the mat":
    #   a, cat, on, the, mat -> 5/5; a cat, cat on, on the, the mat -> 4/4;
    #   a cat on, cat on the, on the mat -> 3/3; a cat on the, cat on the mat -> 2/2.
    # Reference lengths 6 and 7: closest to 5 is 6, so BP = exp(1 - 6/5) = exp(-0.2)
    # (the longer reference would give exp(1 - 7/5) = exp(-0.4)). BLEU-n = BP for all n.
    scores = bleu_scores([CAT_REFERENCES], ["a cat on the mat"])
    penalty = math.exp(-0.2)
    assert_bleu(scores, penalty, penalty, penalty, penalty)


def test_brevity_penalty_takes_the_shorter_reference_on_a_tie():
    # hypothesis: a cat on the mat (c = 5), every n-gram in the second reference.
    # References of length 4 and 6 are equally close; the shorter (4) is used, c > r, BP = 1.
    # (Taking 6 would give exp(1 - 6/5) = 0.8187...)
    scores = bleu_scores([["a cat on it", "a cat on the mat too"]], ["a cat on the mat"])
    assert_bleu(scores, 1.0, 1.0, 1.0, 1.0)


def test_corpus_bleu_sums_counts_over_images_instead_of_averaging_sentence_scores():
    # image 1: a dog runs on the grass, exact: 6/6, 5/5, 4/4, 3/3, c = r = 6.
    # image 2: the cat sat on the mat (as above): 5/6, 3/5, 1/4, 0/3, c = r = 6.
    # corpus: p1 = 11/12, p2 = 8/10, p3 = 5/8, p4 = 3/6; c = r = 12, BP = 1.
    # BLEU-2 = sqrt(11/12 * 4/5) = sqrt(11/15); BLEU-3 = (11/12 * 4/5 * 5/8) ** (1/3) = (11/24) ** (1/3);
    # BLEU-4 = (11/12 * 4/5 * 5/8 * 1/2) ** (1/4) = (11/48) ** (1/4)
    # (the mean of the two sentence BLEU-4 scores would be 0.5).
    scores = bleu_scores(
        [["a dog runs on the grass"], CAT_REFERENCES],
        ["a dog runs on the grass", "the cat sat on the mat"],
    )
    assert_bleu(scores, 11 / 12, math.sqrt(11 / 15), (11 / 24) ** (1 / 3), (11 / 48) ** (1 / 4))


def test_brevity_penalty_is_computed_over_the_whole_corpus():
    # image 1: a dog runs on the grass, exact, c = r = 6.
    # image 2: a cat on the mat, all n-grams matched (see above), c = 5, closest r = 6.
    # corpus: every p_n = 1; c = 11, r = 12, BP = exp(1 - 12/11) = exp(-1/11) for all n.
    scores = bleu_scores(
        [["a dog runs on the grass"], CAT_REFERENCES],
        ["a dog runs on the grass", "a cat on the mat"],
    )
    penalty = math.exp(-1 / 11)
    assert_bleu(scores, penalty, penalty, penalty, penalty)


def test_hypothesis_shorter_than_n_adds_one_to_the_n_gram_count_as_nltk_does():
    # nltk's modified_precision uses max(1, hypothesis n-grams) as the denominator, so a
    # 3-word hypothesis counts one (unmatched) 4-gram. Papineni's definition would count none
    # and give BLEU-4 = 1 for this corpus of exact matches.
    # image 1: a dog runs on the grass, exact: 6/6, 5/5, 4/4, 3/3.
    # image 2: a cat sits, exact: 3/3, 2/2, 1/1, and 0/1 for 4-grams (nltk).
    # corpus: p1 = p2 = p3 = 1, p4 = 3/4, BP = 1 -> BLEU-4 = (3/4) ** (1/4).
    scores = bleu_scores(
        [["a dog runs on the grass"], ["a cat sits"]],
        ["a dog runs on the grass", "a cat sits"],
    )
    assert_bleu(scores, 1.0, 1.0, 1.0, 0.75**0.25)


def test_no_matching_word_scores_zero():
    scores = bleu_scores([CAT_REFERENCES], ["green triangles fly"])
    assert_bleu(scores, 0.0, 0.0, 0.0, 0.0)


def test_empty_hypothesis_scores_zero():
    scores = bleu_scores([CAT_REFERENCES], ["!"])  # no words after tokenization
    assert_bleu(scores, 0.0, 0.0, 0.0, 0.0)


# ---- tokenization ---------------------------------------------------------------------


def test_case_and_punctuation_do_not_change_the_score():
    plain = bleu_scores([CAT_REFERENCES], ["the cat sat on the mat"])
    noisy = bleu_scores(
        [["The cat is on the mat.", "There is a CAT, on the mat!"]],
        ["The Cat sat on -- the mat..."],
    )
    assert noisy == pytest.approx(plain, abs=TOLERANCE)
    assert noisy["bleu_1"] == pytest.approx(5 / 6, abs=TOLERANCE)


def test_apostrophes_split_words_the_same_way_as_the_vocabulary():
    # words("the dog's ball") == ["the", "dog", "s", "ball"] on both sides: an exact match.
    assert bleu_scores([["the dog s ball"]], ["The dog's ball."])["bleu_4"] == pytest.approx(1.0, abs=TOLERANCE)


# ---- input errors ---------------------------------------------------------------------


def test_mismatched_lengths_raise_value_error():
    with pytest.raises(ValueError, match="2 hypotheses for 1 reference lists"):
        bleu_scores([CAT_REFERENCES], ["a cat", "a dog"])


def test_empty_input_raises_value_error():
    with pytest.raises(ValueError, match="at least one"):
        bleu_scores([], [])


# ---- shuffled images ------------------------------------------------------------------


@pytest.mark.parametrize("count", range(2, 51))
def test_derangement_is_a_permutation_that_moves_every_index(count):
    permutation = derangement(count, seed=count)
    assert permutation.shape == (count,)
    assert sorted(permutation.tolist()) == list(range(count))
    assert np.all(permutation != np.arange(count))


def test_derangement_is_deterministic_by_seed():
    np.testing.assert_array_equal(derangement(20, seed=5), derangement(20, seed=5))
    distinct = {tuple(derangement(20, seed=seed).tolist()) for seed in range(5)}
    assert len(distinct) > 1  # the seed matters


@pytest.mark.parametrize("count", [0, 1])
def test_derangement_of_fewer_than_two_images_raises(count):
    with pytest.raises(ValueError):
        derangement(count)


# Each caption shares words with the others (a, is, above, ...) but no 4-gram.
SHAPES_CAPTIONS = [
    "a red circle is above a blue square",
    "a green triangle is left of a yellow star",
    "two small squares are below one big circle",
    "the purple star sits right of the orange triangle",
    "one blue square and one red square side by side",
]


def test_shuffled_images_score_much_lower_than_matching_images():
    references = [[caption, caption.upper() + "."] for caption in SHAPES_CAPTIONS]
    hypotheses = list(SHAPES_CAPTIONS)
    assert bleu_scores(references, hypotheses)["bleu_4"] == pytest.approx(1.0, abs=TOLERANCE)
    shuffled = shuffled_image_bleu_4(references, hypotheses, seed=0)
    assert shuffled < 0.1
    assert shuffled_image_bleu_4(references, hypotheses, seed=0) == shuffled  # deterministic


def test_shuffled_bleu_4_scores_the_deranged_hypotheses():
    # Hypothesis i is the first four words of caption i then of caption i + 1, so it shares
    # 4-grams with image i + 1's reference too and the shuffled score depends on the order.
    references = [[caption] for caption in SHAPES_CAPTIONS]
    heads = [" ".join(caption.split()[:4]) for caption in SHAPES_CAPTIONS]
    hypotheses = [f"{heads[index]} {heads[(index + 1) % len(heads)]}" for index in range(len(heads))]
    shuffled_scores = []
    for seed in range(3):
        permutation = derangement(len(hypotheses), seed)
        expected = bleu_scores(references, [hypotheses[index] for index in permutation])["bleu_4"]
        assert expected > 0.1
        shuffled = shuffled_image_bleu_4(references, hypotheses, seed=seed)
        assert shuffled == pytest.approx(expected, abs=TOLERANCE)
        shuffled_scores.append(shuffled)
    assert len(set(shuffled_scores)) > 1  # the seeds give different derangements and scores
