"""Validation BLEU-4 per epoch: how the captions themselves improve, not only the loss.

After every epoch the model greedy-decodes the first ``training.validation_bleu_images``
early-stopping images; ``logs["val_bleu_4"]`` gets their corpus BLEU-4 against all
references and ``logs["val_cider"]`` their CIDEr-D (cider.py, document frequencies from
those images' references, as pycocoevalcap counts them), which the self-critical phase
uses to keep its best epoch. It goes into the run's history (history.csv, state.json) and its training
curves PNG. Early stopping still watches the validation loss: BLEU on a few hundred
images is noisy from epoch to epoch, the loss is not.

    callback = ValidationBleu(batches, references, vocabulary, max_length=24)
    model.fit(..., callbacks=[callback, checkpoint])   # before the checkpoint, which logs it
"""

from __future__ import annotations

from typing import Callable, Iterable

import keras
import numpy as np

from captioning.config import GenerationConfig
from captioning.data.vocabulary import Vocabulary, spaced_words
from captioning.evaluation.bleu import bleu_scores
from captioning.evaluation.cider import CiderD
from captioning.models.search import build_sampler, generate_token_ids

LOG_NAME = "val_bleu_4"
CIDER_LOG_NAME = "val_cider"


class ValidationBleu(keras.callbacks.Callback):
    """batches: called each epoch, yields input dicts with "features" (batch, regions,
    channels) or "images" (batch, y, x, 3), in the order of ``references``.
    references: per image, its reference captions (text)."""

    def __init__(self, batches: Callable[[], Iterable[dict]], references: list[list[str]], vocabulary: Vocabulary,
                 max_length: int):
        super().__init__()
        if not references:
            raise ValueError("validation BLEU needs at least one image with reference captions")
        self.batches = batches
        self.references = references
        self.vocabulary = vocabulary
        self.max_length = max_length
        self.sampler = build_sampler(GenerationConfig(sampler="greedy"))
        self.spaced_references = [[spaced_words(caption) for caption in image] for image in references]
        self.cider_scorer = CiderD(self.spaced_references)

    def captions(self) -> list[str]:
        captions = []
        for inputs in self.batches():
            if self.model.encoder is None:
                features = inputs["features"]  # (batch, regions, channels), cached
            else:
                features = self.model.encoder(inputs["images"], training=False)  # (batch, regions, channels)
            token_ids = generate_token_ids(self.model.decoder, features, self.max_length, self.sampler)
            captions += [self.vocabulary.decode(row[1:]) for row in np.asarray(token_ids)]
        return captions[: len(self.references)]

    def on_epoch_end(self, epoch, logs=None):
        captions = self.captions()
        if len(captions) != len(self.references):
            raise ValueError(f"validation BLEU: {len(captions)} captions for {len(self.references)} images")
        if logs is not None:
            logs[LOG_NAME] = bleu_scores(self.references, captions)["bleu_4"]
            logs[CIDER_LOG_NAME] = self.cider(captions)

    def cider(self, captions: list[str]) -> float:
        """Mean CIDEr-D of ``captions`` (one per image) against the references."""
        hypotheses = [spaced_words(caption) for caption in captions]
        return float(self.cider_scorer.scores(hypotheses, self.spaced_references).mean())
