"""Caption metrics: corpus BLEU-1..4 with nltk against all reference captions.

Tokenization (pinned by tests): ``vocabulary.words`` -- lower case, every character other
than a-z, 0-9 and whitespace replaced by a space, split on whitespace. Hypotheses and
references go through the same function. No smoothing: this is the corpus-level BLEU of
Papineni et al. as nltk's ``corpus_bleu`` computes it (brevity penalty over the corpus,
closest reference length).

CIDEr-D, METEOR and ROUGE-L come from pycocoevalcap, in ``coco_metrics.py``;
tests/test_coco_metrics.py checks this BLEU against pycocoevalcap's.
"""

from __future__ import annotations

import warnings

import numpy as np
from nltk.translate.bleu_score import corpus_bleu

from captioning.data.vocabulary import words

BLEU_WEIGHTS = {
    "bleu_1": (1.0, 0.0, 0.0, 0.0),
    "bleu_2": (0.5, 0.5, 0.0, 0.0),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}


def bleu_scores(references: list[list[str]], hypotheses: list[str]) -> dict[str, float]:
    """Corpus BLEU-1..4.

    references: one list of reference captions per image; hypotheses: one caption per image.
    Returns ``{"bleu_1": ..., ..., "bleu_4": ...}`` in [0, 1].
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("BLEU needs at least one captioned image")
    tokenized_references = [[words(reference) for reference in image_references] for image_references in references]
    tokenized_hypotheses = [words(hypothesis) for hypothesis in hypotheses]
    with warnings.catch_warnings():  # nltk warns when an n-gram order has no match; the score 0 says it
        warnings.simplefilter("ignore", UserWarning)
        scores = corpus_bleu(tokenized_references, tokenized_hypotheses, weights=list(BLEU_WEIGHTS.values()))
    return {name: float(score) for name, score in zip(BLEU_WEIGHTS, scores)}


def derangement(count: int, seed: int = 0) -> np.ndarray:
    """A permutation of range(count) that moves every index (count >= 2)."""
    if count < 2:
        raise ValueError("shuffling images needs at least two images")
    order = np.random.default_rng(seed).permutation(count)
    shifted = np.empty(count, dtype=np.int64)
    shifted[order] = np.roll(order, 1)  # each image takes the next one's place in a random cycle
    return shifted


def shuffled_image_bleu_4(references: list[list[str]], hypotheses: list[str], seed: int = 0) -> float:
    """BLEU-4 when each image is swapped for another one of the same split.

    Decoding is deterministic, so the caption the model gives image ``j`` in place of image
    ``i`` is ``hypotheses[j]``; scoring ``hypotheses[permutation]`` against the original
    references is exactly "the same model fed shuffled images".
    """
    permutation = derangement(len(hypotheses), seed)
    return bleu_scores(references, [hypotheses[index] for index in permutation])["bleu_4"]
