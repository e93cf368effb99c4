"""Training-time image augmentation that keeps every caption true.

A training batch of images and their caption tokens goes through Keras' preprocessing
layers, each turned on by its ``images.augment_*`` field:

    RandomFlip("horizontal")   the flipped images' "left" and "right" tokens trade places
    RandomRotation(factor)     up to factor * 360 degrees either way
    RandomZoom((0, factor))    out only: zooming in could crop an object the caption names
    RandomContrast(factor)     clipped to the value range of the encoder's normalization

Where: in the tf.data training pipeline, after batching (``pipeline.training_dataset``),
because only there are an image and its target captions side by side. The model sees the
input captions but the loss reads the targets straight from the dataset, so a flip decided
inside ``CaptionModel.call`` could mirror the image, never the words it is scored on. Only
the training dataset is augmented: the early-stopping dataset, evaluation and captioning
read the same images without it.

Randomness: each layer draws from its own seed generator, seeded from ``training.seed``,
and the batches pass through one at a time (parallel calls would take the generators'
states in a varying order), so a run repeats. The draws differ from batch to batch and
from epoch to epoch.

Rotation and zoom fill the uncovered border with the nearest pixels ("nearest"): reflecting
("reflect", Keras' default) would mirror an object near the border into a second one that
no caption names; the shapes images keep their borders free of objects.

A frozen pretrained encoder's features are computed once into the feature cache, before
any augmentation could reach them; ``validate.check_augmentation`` makes that combination a
ConfigError rather than letting the run train without augmentation unawares.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from captioning.config import ExperimentConfig, ImagesConfig
from captioning.data.images import get_normalization
from captioning.data.vocabulary import UNKNOWN_ID, Vocabulary
from captioning.models.encoders import normalization_for
from captioning.validate import check_augmentation

# Words that trade places when the picture is mirrored left-right.
MIRRORED_WORDS = (("left", "right"),)
# Each of those words -> the word it becomes in the mirrored image's caption, both ways.
MIRROR_SWAPS = {word: partner for pair in MIRRORED_WORDS for word, partner in (pair, pair[::-1])}


def mirrored_words(text: str) -> str:
    """A caption's words as they read for the mirrored image: each MIRRORED_WORDS pair swapped."""
    return " ".join(MIRROR_SWAPS.get(word, word) for word in text.split())


def mirrored_token_ids(vocabulary: Vocabulary) -> np.ndarray:
    """(vocabulary.size,) int32: the id each token becomes in the caption of a mirrored image.

    Every id maps to itself except the MIRRORED_WORDS pairs, which swap. A word whose partner
    is not in the vocabulary becomes <unk>, as encoding the mirrored caption would make it.
    """
    mapping = np.arange(vocabulary.size, dtype=np.int32)
    for word, partner in MIRROR_SWAPS.items():
        if word in vocabulary.ids:
            mapping[vocabulary.ids[word]] = vocabulary.ids.get(partner, UNKNOWN_ID)
    return mapping


def value_range(normalization: str) -> tuple[float, float]:
    """(lowest, highest) value the named normalization gives any pixel, over all channels."""
    extremes = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # (1, 2, 3): black and white
    normalized = get_normalization(normalization)(extremes)
    return float(normalized.min()), float(normalized.max())


class CaptionAugmentation:
    """Augments a training batch: ``(images, tokens) -> (images, tokens)``, inside tf.data.

    images: (batch, y_size, x_size, 3) float32, normalized as the ImageReader returns them.
    tokens: (batch, captions, length) int32 caption ids, 0 is padding; only a flip changes
    them, for the flipped images only and in all their captions.
    """

    def __init__(self, config: ImagesConfig, vocabulary: Vocabulary, normalization: str, seed: int):
        self.flip = keras.layers.RandomFlip("horizontal", seed=seed) if config.augment_flip else None
        self.mirrored_ids = tf.constant(mirrored_token_ids(vocabulary))  # (vocab_size,) int32
        self.layers = []
        if config.augment_rotation:
            self.layers.append(keras.layers.RandomRotation(config.augment_rotation, fill_mode="nearest", seed=seed + 1))
        if config.augment_zoom:  # a positive factor zooms out; the width follows, keeping the aspect ratio
            self.layers.append(keras.layers.RandomZoom((0.0, config.augment_zoom), fill_mode="nearest", seed=seed + 2))
        if config.augment_contrast:
            self.layers.append(keras.layers.RandomContrast(config.augment_contrast, value_range=value_range(normalization),
                                                           seed=seed + 3))

    def __call__(self, images, tokens):
        if self.flip is not None:
            transformation = self.flip.get_random_transformation(images, training=True)
            images = self.flip.transform_images(images, transformation, training=True)  # (batch, y, x, 3)
            flipped = tf.reshape(transformation["flips"], (-1, 1, 1))  # (batch, 1, 1) bool, one draw per image
            tokens = tf.where(flipped, tf.gather(self.mirrored_ids, tokens), tokens)  # (batch, captions, length)
        for layer in self.layers:
            images = layer(images, training=True)  # (batch, y, x, 3)
        return images, tokens


def build_augmentation(config: ExperimentConfig, vocabulary: Vocabulary) -> CaptionAugmentation | None:
    """The run's training augmentation, or None when ``images.augment`` is off."""
    check_augmentation(config)
    if not config.images.augment:
        return None
    return CaptionAugmentation(config.images, vocabulary, normalization_for(config.encoder), config.training.seed)
