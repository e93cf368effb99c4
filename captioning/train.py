"""train(config, run_dir): data -> vocabulary -> model -> fit (resumable) -> BLEU on the held-out split.

A frozen pretrained encoder is run once per split into the feature cache and the decoder
trains on those features; any other encoder trains end to end on images, augmented when
``images.augment`` is on (augment.py). Either way the run directory ends with one full
model (encoder + decoder) that captions images. ``training.log_gradient_norms`` adds the
encoder's first-epoch gradient norms (gradients.py).

The model is built, compiled and fitted inside the ``training.strategy``'s scope
(distribution.py) and the ``training.mixed_precision`` policy (precision.py). Under
"multi_worker" every worker runs this same function: each extracts its share of the
features, all train together, and only the chief (worker 0) writes the run directory's
checkpoint, weights and metrics; worker i > 0 keeps its own resumable checkpoint in
checkpoint/worker-<i>/ and stops after training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioning.augment import build_augmentation, check_augmentation
from captioning.checkpoints import TrainingCheckpoint
from captioning.config import ExperimentConfig, to_toml
from captioning.distribution import Worker, build_strategy, current_worker
from captioning.encoders import build_encoder, normalization_for
from captioning.evaluate import evaluate_run
from captioning.features import FeatureCache, encoder_is_frozen
from captioning.files import atomic_path, write_text
from captioning.gradients import GRADIENT_NORMS_FILE, GRADIENT_NORMS_PLOT, GradientNormLogger, check_gradient_logging
from captioning.model import build_feature_model, build_model, compile_model, image_shape, masked_loss
from captioning.pipeline import ImageReader, caption_array, feature_dataset, image_dataset, training_dataset
from captioning.plots import plot_training_curves
from captioning.precision import precision_policy
from captioning.runs import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE, VOCABULARY_FILE, WEIGHTS_FILE,
                             RunError, config_differences, load_run_config)
from captioning.splits import check_splits, training_and_stopping_examples
from captioning.validation import ValidationBleu
from captioning.vocabulary import Vocabulary

BEST_WEIGHTS_FILE = "best.weights.h5"  # inside checkpoint/: the training model's best epoch


def prepare_run_dir(config: ExperimentConfig, run_dir: Path) -> None:
    """Writes the resolved config, or checks that a resumed run was started with the same one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CONFIG_FILE).is_file():
        differences = config_differences(load_run_config(run_dir), config)
        if differences:
            raise RunError(f"{run_dir} was started with another config; differences: {'; '.join(differences)}. "
                           "Use a new RUN directory for a new config.")
    else:
        write_text(run_dir / CONFIG_FILE, to_toml(config))


def load_or_build_vocabulary(run_dir: Path, captions: list[str], min_count: int) -> Vocabulary:
    path = run_dir / VOCABULARY_FILE
    if path.is_file():
        return Vocabulary.load(path)
    vocabulary = Vocabulary.build(captions, min_count=min_count)
    vocabulary.save(path)
    return vocabulary


def feature_encoder(config: ExperimentConfig, encoder=None):
    """The frozen encoder as a compiled function: images (batch, y, x, 3) -> (batch, regions, channels) float32.

    Compiled (tf.function) so each batch runs as one graph, as ``predict`` would; the last,
    smaller batch of a split traces it once more. encoder: built from config.encoder if None.
    """
    encoder = encoder or build_encoder(config.encoder, image_shape(config))
    return tf.function(lambda images: encoder(images, training=False), reduce_retracing=True)


def cached_features(config: ExperimentConfig, paths: list[str], label: str, encode=None,
                    worker: Worker = Worker()) -> np.ndarray:
    """(images, regions, channels) float16 features of a frozen encoder, from the feature cache.

    The images are read once for this, so they skip the normalized-image cache (at 224 px
    it would hold 600 KB per image that nothing reads again). Reading and decoding run in
    tf.data's parallel map, a batch ahead of the encoder (prefetch), so the encoder rarely
    waits for images. encode: ``feature_encoder(config)`` if None. worker: under
    "multi_worker", this worker computes its share (see features.py), or, with
    ``images.feature_cache_shared`` false, everything into a folder of its own.
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
            for images in image_dataset(paths, reader, batch_size):
                yield encode(images)  # (batch, regions, channels)

    return FeatureCache(cache_root).features(
        paths, config.encoder, config.images, reader.normalization, encode_batches, batch_size, label=label,
        worker=worker,
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


def export_model(config: ExperimentConfig, trained_model, vocabulary: Vocabulary, path: Path) -> None:
    """Saves encoder + decoder weights; a decoder trained on cached features gets its encoder back."""
    if trained_model.encoder is None:
        full_model = build_model(config, vocabulary.size)
        full_model.decoder.set_weights(trained_model.decoder.get_weights())
    else:
        full_model = trained_model
    with atomic_path(path) as temporary:
        full_model.save_weights(temporary)


def train(config: ExperimentConfig, run_dir: str | Path, verbose: int | str = "auto") -> dict:
    """Trains (or resumes) the run in ``run_dir`` and returns its metrics on the evaluation split."""
    run_dir = Path(run_dir)
    check_splits(config)
    check_augmentation(config)
    check_gradient_logging(config)
    strategy = build_strategy(config.training)  # first: "multi_worker" must exist before any TensorFlow op
    worker = current_worker(config.training)
    prepare_run_dir(config, run_dir)
    keras.utils.set_random_seed(config.training.seed)

    train_examples, stopping_examples = training_and_stopping_examples(config)
    vocabulary = load_or_build_vocabulary(
        run_dir, [caption for example in train_examples for caption in example.captions], config.decoder.min_word_count
    )
    print(f"run {run_dir}: {len(train_examples)} training images, {len(stopping_examples)} for early stopping, "
          f"vocabulary of {vocabulary.size} tokens, {strategy.num_replicas_in_sync} replica(s)"
          + (f", worker {worker.index} of {worker.count}" if worker.count > 1 else ""))

    reader = ImageReader(config.images, normalization_for(config.encoder))
    captions_per_image, length = config.data.captions_per_image, config.decoder.max_length
    batch_size, seed = config.training.batch_size, config.training.seed
    callbacks = []  # before the checkpoint: what they write for an epoch exists once it counts as done
    if encoder_is_frozen(config.encoder):
        datasets = []
        encode = feature_encoder(config)
        for label, examples, shuffle in [("train", train_examples, True), ("early stopping", stopping_examples, False)]:
            features = cached_features(config, [example.image_path for example in examples], label, encode,
                                       worker)  # (images, regions, channels)
            tokens = caption_array(examples, vocabulary, captions_per_image, length)
            datasets.append(feature_dataset(features, tokens, batch_size, shuffle=shuffle, seed=seed))
        train_dataset, stopping_dataset = datasets
        stopping_features = features
        feature_shape = features.shape[1:]  # (regions, channels)

        def build_training_model():
            return build_feature_model(config, vocabulary.size, feature_shape)
    else:
        options = dict(vocabulary=vocabulary, reader=reader, captions_per_image=captions_per_image, length=length,
                       batch_size=batch_size, seed=seed)
        train_dataset = training_dataset(train_examples, shuffle=True, augmentation=build_augmentation(config, vocabulary),
                                         **options)
        stopping_dataset = training_dataset(stopping_examples, shuffle=False, **options)
        stopping_features = None
        if config.training.log_gradient_norms:
            with reader.reporting_errors():  # measured on the first training images, never augmented
                batch = next(iter(training_dataset(train_examples[:batch_size], shuffle=False, **options)))
            callbacks.append(GradientNormLogger(batch, masked_loss(), config.training.gradient_norm_interval,
                                                run_dir / GRADIENT_NORMS_FILE, run_dir / GRADIENT_NORMS_PLOT,
                                                title=f"{config.name}: encoder gradient norms, input side first"))

        def build_training_model():
            return build_model(config, vocabulary.size)

    checkpoint_dir = run_dir / CHECKPOINT_DIR
    history_path = run_dir / HISTORY_FILE
    if not worker.is_chief:  # its own copy: resumable on a machine that does not share run_dir
        checkpoint_dir = checkpoint_dir / f"worker-{worker.index}"
        history_path = checkpoint_dir / HISTORY_FILE
    checkpoint = TrainingCheckpoint(checkpoint_dir, checkpoint_dir / BEST_WEIGHTS_FILE, history_path,
                                    patience=config.training.patience)
    if config.training.validation_bleu_images > 0:  # adds val_bleu_4 to the logs the checkpoint writes
        callbacks.append(validation_bleu(config, stopping_examples, stopping_features, reader, vocabulary))
    with strategy.scope(), precision_policy(config.training):
        model = build_training_model()
        compile_model(model, config.training)
        initial_epoch = checkpoint.restore(model)
        if initial_epoch:
            print(f"resuming {run_dir} after epoch {initial_epoch}")
        if initial_epoch < config.training.epochs and not checkpoint.finished:
            with reader.reporting_errors():
                model.fit(train_dataset, validation_data=stopping_dataset, epochs=config.training.epochs,
                          initial_epoch=initial_epoch, callbacks=[*callbacks, checkpoint], verbose=verbose,
                          shuffle=False)
        model.load_weights(checkpoint_dir / BEST_WEIGHTS_FILE)
    if not worker.is_chief:
        print(f"worker {worker.index}: training finished; the chief (worker 0) writes the weights and metrics")
        return {}
    export_model(config, model, vocabulary, run_dir / WEIGHTS_FILE)
    plot_training_curves(checkpoint.state["history"], run_dir / "training_curves.png", title=config.name)

    return evaluate_run(run_dir, training_facts(checkpoint.state, model))


def training_facts(checkpoint_state: dict, model) -> dict:
    """What metrics.json records about the training beside the scores."""
    return {"epochs": checkpoint_state["epochs_done"], "best_epoch": checkpoint_state["best_epoch"],
            "training_seconds": round(checkpoint_state["training_seconds"], 1),
            "trainable_parameters": int(sum(np.prod(weight.shape) for weight in model.trainable_weights))}
