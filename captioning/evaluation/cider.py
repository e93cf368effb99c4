"""CIDEr-D per caption, with document frequencies fixed from a training corpus.

The reward of self-critical training (self_critical.py). pycocoevalcap's ``Cider``
(coco_metrics.py) scores a whole evaluated set and takes its document frequencies from that
set's own references, so one caption's score depends on the batch it comes in and every call
recounts them. Here they are counted once, over every training image's references (as
Rennie et al. 2017 and their public code do), and each caption is scored alone:

    scorer = CiderD(train_reference_sets)           # list (images) of lists of reference strings
    scorer.scores(hypotheses, reference_sets)       # (captions,) float64

The arithmetic is pycocoevalcap's ``CiderScorer`` (CIDEr-D: tf-idf vectors of 1..4-grams,
hypothesis weights clipped to the reference's, Gaussian length penalty with sigma 6, mean
cosine over n-gram orders and references, times 10); tests/test_self_critical.py checks that both
give the same numbers when the corpus is the scored set itself. Captions are
space-separated words (``vocabulary.spaced_words``), as everywhere else.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

MAX_ORDER = 4
SIGMA = 6.0


def ngram_counts(caption: str, max_order: int = MAX_ORDER) -> Counter:
    """Counts of every 1..max_order-gram of the caption's space-separated words."""
    tokens = caption.split()
    return Counter(tuple(tokens[start:start + order]) for order in range(1, max_order + 1)
                   for start in range(len(tokens) - order + 1))


class CiderD:
    """corpus: per image, its reference captions; an n-gram's document frequency is the
    number of images with it in any reference."""

    def __init__(self, corpus: list[list[str]], sigma: float = SIGMA):
        if not corpus:
            raise ValueError("CIDEr-D needs a corpus of at least one image's references for its document frequencies")
        self.sigma = sigma
        self.document_frequency = Counter()
        for references in corpus:
            self.document_frequency.update(set().union(*(ngram_counts(reference) for reference in references)))
        self.log_corpus_size = math.log(float(len(corpus)))
        self._reference_vectors = {}  # tuple of references -> their tf-idf vectors, reused across epochs

    def vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        """tf-idf weights per n-gram order, their norms, and the caption's bigram count (its
        "length" in pycocoevalcap)."""
        weights = [{} for _ in range(MAX_ORDER)]
        norms = [0.0] * MAX_ORDER
        for ngram, count in counts.items():
            order = len(ngram) - 1
            weight = count * (self.log_corpus_size - math.log(max(1.0, self.document_frequency[ngram])))
            weights[order][ngram] = weight
            norms[order] += weight * weight
        return weights, [math.sqrt(norm) for norm in norms], sum(counts[ngram] for ngram in weights[1])

    def similarity(self, hypothesis, reference) -> float:
        """Mean over n-gram orders of the clipped, length-penalized cosine."""
        (hypothesis_weights, hypothesis_norms, hypothesis_length) = hypothesis
        (reference_weights, reference_norms, reference_length) = reference
        penalty = math.exp(-((hypothesis_length - reference_length) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for order in range(MAX_ORDER):
            value = sum(min(weight, reference_weights[order].get(ngram, 0.0)) * reference_weights[order].get(ngram, 0.0)
                        for ngram, weight in hypothesis_weights[order].items())
            if hypothesis_norms[order] != 0 and reference_norms[order] != 0:
                value /= hypothesis_norms[order] * reference_norms[order]
            total += value * penalty
        return total / MAX_ORDER

    def references_vectors(self, references: list[str]) -> list:
        key = tuple(references)
        if key not in self._reference_vectors:
            self._reference_vectors[key] = [self.vector(ngram_counts(reference)) for reference in references]
        return self._reference_vectors[key]

    def score(self, hypothesis: str, references: list[str]) -> float:
        if not references:
            raise ValueError(f"CIDEr-D of '{hypothesis}': the image has no reference captions")
        hypothesis_vector = self.vector(ngram_counts(hypothesis))
        vectors = self.references_vectors(references)
        return 10.0 * sum(self.similarity(hypothesis_vector, vector) for vector in vectors) / len(vectors)

    def scores(self, hypotheses: list[str], reference_sets: list[list[str]]) -> np.ndarray:
        """(captions,) float64: hypothesis i scored against reference_sets[i]."""
        if len(hypotheses) != len(reference_sets):
            raise ValueError(f"CIDEr-D: {len(hypotheses)} captions for {len(reference_sets)} reference sets")
        return np.array([self.score(hypothesis, references) for hypothesis, references in zip(hypotheses, reference_sets)],
                        dtype=np.float64)
