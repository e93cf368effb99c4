"""What a run trains on: its examples, vocabulary and image reader (TrainingData), the
frozen encoder's features from the feature cache (features.py), and the batches each phase
fits on, built only when a phase has epochs left."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioning.config import ExperimentConfig
from captioning.data.pipeline import ImageReader, Mirror, caption_array, feature_dataset, image_dataset, training_dataset
from captioning.data.vocabulary import Vocabulary
from captioning.models.caption_model import image_shape, masked_loss
from captioning.models.encoders import build_encoder, normalization_for
from captioning.training.augment import build_augmentation, mirrored_token_ids
from captioning.training.distribution import Worker
from captioning.training.features import FeatureCache
from captioning.training.gradients import GRADIENT_NORMS_FILE, GRADIENT_NORMS_PLOT, GradientNormLogger
from captioning.training.validation import ValidationBleu


def feature_encoder(config: ExperimentConfig, encoder=None):
    """The frozen encoder as a compiled function: images (batch, y, x, 3) -> (batch, regions, channels) float32.

    Compiled (tf.function) so each batch runs as one graph, as ``predict`` would; the last,
    smaller batch of a split traces it once more. encoder: built from config.encoder if None,
    on the first batch, so a run whose features are all cached never builds the backbone
    (nor reads its weights file).
    """
    compiled = []  # the compiled encoder, once built

    def encode(images):
        if not compiled:
            built = encoder or build_encoder(config.encoder, image_shape(config))
            compiled.append(tf.function(lambda batch: built(batch, training=False), reduce_retracing=True))
        return compiled[0](images)

    return encode


def frozen_feature_shape(config: ExperimentConfig) -> tuple[int, int]:
    """(regions, channels) of the frozen encoder's cached features, from a backbone built
    without its weights."""
    encoder = build_encoder(config.encoder, image_shape(config), load_pretrained=False)
    return encoder.compute_output_shape((None, *image_shape(config)))[1:]


def cached_features(config: ExperimentConfig, paths: list[str], label: str, encode=None,
                    worker: Worker = Worker(), mirrored: bool = False) -> np.ndarray:
    """(images, regions, channels) float16 features of a frozen encoder, from the feature cache.

    The images are read once for this, so they skip the normalized-image cache (at 224 px
    it would hold 600 KB per image that nothing reads again). Reading and decoding run in
    tf.data's parallel map, a batch ahead of the encoder (prefetch), so the encoder rarely
    waits for images. encode: ``feature_encoder(config)`` if None. worker: under
    "multi_worker", this worker computes its share (see features.py), or, with
    ``images.feature_cache_shared`` false, everything into a folder of its own. mirrored: the
    features of the images mirrored left-right (images.augment with a frozen encoder), in a
    cache entry of their own.
    """
    encode = encode or feature_encoder(config)
    reader = ImageReader(dataclasses.replace(config.images, cache=False), normalization_for(config.encoder))
    batch_size = config.training.batch_size
    cache_root = Path(config.images.feature_cache_dir)
    if worker.count > 1 and not config.images.feature_cache_shared:
        cache_root = cache_root if worker.is_chief else cache_root / f"worker-{worker.index}"
        worker = Worker()  # this worker computes everything

    def encode_batches(paths):
        with reader.reporting_errors():
            for images in image_dataset(paths, reader, batch_size):  # (batch, y, x, 3)
                yield encode(tf.reverse(images, axis=[2]) if mirrored else images)  # (batch, regions, channels)

    return FeatureCache(cache_root).features(
        paths, config.encoder, config.images, reader.normalization, encode_batches, batch_size, label=label,
        worker=worker, mirrored=mirrored,
    )


def validation_bleu(config: ExperimentConfig, stopping_examples, stopping_features, reader: ImageReader,
                    vocabulary: Vocabulary) -> ValidationBleu:
    """The per-epoch BLEU-4 callback over the first ``validation_bleu_images`` early-stopping
    images: from their cached features when there are some, else from the images."""
    examples = stopping_examples[: config.training.validation_bleu_images]
    batch_size = config.training.batch_size

    def batches():
        if stopping_features is not None:
            for start in range(0, len(examples), batch_size):
                yield {"features": np.asarray(stopping_features[start:start + batch_size], dtype=np.float32)}
        else:
            for images in image_dataset([example.image_path for example in examples], reader, batch_size):
                yield {"images": images}  # (batch, y, x, 3)

    return ValidationBleu(batches, [example.captions for example in examples], vocabulary, config.decoder.max_length)


@dataclasses.dataclass
class TrainingData:
    """What both phases train on; their datasets are built only when a phase has epochs left."""

    config: ExperimentConfig
    train_examples: list
    stopping_examples: list
    vocabulary: Vocabulary
    reader: ImageReader
    worker: Worker

    def feature_datasets(self):
        """(batches for an epoch, early-stopping features (images, regions, channels)) for a
        frozen encoder's cached features: ``batches(epoch, skip_batches)`` gives (train, early
        stopping) batches, the training ones in that epoch's order (pipeline.epoch_seed).
        With images.augment (the mirror only: validate.check_augmentation), the features of the
        mirrored training images are cached too and each epoch draws one of the two per image."""
        config = self.config
        encode = feature_encoder(config)
        features, tokens = {}, {}
        for label, examples in [("train", self.train_examples), ("early stopping", self.stopping_examples)]:
            features[label] = cached_features(config, [example.image_path for example in examples], label, encode,
                                              self.worker)  # (images, regions, channels)
            tokens[label] = caption_array(examples, self.vocabulary, config.data.captions_per_image,
                                          config.decoder.max_length)
        mirror = None
        if config.images.augment:
            mirror = Mirror(cached_features(config, [example.image_path for example in self.train_examples],
                                            "train, mirrored", encode, self.worker, mirrored=True),
                            mirrored_token_ids(self.vocabulary))
        batch_size, seed = config.training.batch_size, config.training.seed
        stopping = feature_dataset(features["early stopping"], tokens["early stopping"], batch_size, shuffle=False,
                                   seed=seed)

        def batches(epoch: int, skip_batches: int = 0):
            return feature_dataset(features["train"], tokens["train"], batch_size, shuffle=True, seed=seed,
                                   epoch=epoch, skip_batches=skip_batches, mirror=mirror), stopping

        return batches, features["early stopping"]

    def image_options(self) -> dict:
        config = self.config
        return dict(vocabulary=self.vocabulary, reader=self.reader, captions_per_image=config.data.captions_per_image,
                    length=config.decoder.max_length, batch_size=config.training.batch_size, seed=config.training.seed)

    def image_datasets(self):
        """``batches(epoch, skip_batches)`` -> (train, early stopping) batches of images, for an
        encoder that trains; only the training batches are shuffled (that epoch's order) and
        augmented (images.augment)."""
        options = self.image_options()
        augmentation = build_augmentation(self.config, self.vocabulary)
        stopping = training_dataset(self.stopping_examples, shuffle=False, **options)

        def batches(epoch: int, skip_batches: int = 0):
            return training_dataset(self.train_examples, shuffle=True, augmentation=augmentation, epoch=epoch,
                                    skip_batches=skip_batches, **options), stopping

        return batches

    def gradient_logger(self, run_dir: Path) -> GradientNormLogger:
        """training.log_gradient_norms: measured on the first training images, never augmented."""
        config = self.config
        with self.reader.reporting_errors():
            batch = next(iter(training_dataset(self.train_examples[: config.training.batch_size], shuffle=False,
                                               **self.image_options())))
        return GradientNormLogger(batch, masked_loss(), config.training.gradient_norm_interval,
                                  run_dir / GRADIENT_NORMS_FILE, run_dir / GRADIENT_NORMS_PLOT,
                                  title=f"{config.name}: encoder gradient norms, input side first")


