"""train(config, run_dir): data -> vocabulary -> model -> fit (resumable) -> BLEU on the held-out split.

A frozen pretrained encoder is run once per split into the feature cache and the decoder
trains on those features; any other encoder trains end to end on images, augmented when
``images.augment`` is on (augment.py). Either way the run directory ends with one full
model (encoder + decoder) that captions images. ``training.log_gradient_norms`` adds the
encoder's first-epoch gradient norms (gradients.py).

The model is built, compiled and fitted inside the ``runtime.strategy``'s scope
(distribution.py) and the ``runtime.mixed_precision`` policy (precision.py). Under
"multi_worker" every worker runs this same function: each extracts its share of the
features, all train together, and only the chief (worker 0) writes the run directory's
checkpoint, weights and metrics; worker i > 0 keeps its own resumable checkpoint in
checkpoint/worker-<i>/ and stops after training.

With ``encoder.fine_tune_layers`` = N > 0 a run has two phases:

    phase 1  training.epochs   decoder on the frozen backbone's cached features
    phase 2  fine_tune.epochs  encoder + decoder on images, from phase 1's best weights;
                               the top N backbone layers unfrozen (batch norm frozen), at
                               fine_tune.learning_rate

Each phase has its own checkpoint (``checkpoint/`` and ``checkpoint/fine_tune/``), early
stopping and best weights, so an interrupted run resumes in the phase it was in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioning.config import ExperimentConfig, to_toml
from captioning.data.pipeline import ImageReader, caption_array, feature_dataset, image_dataset, training_dataset
from captioning.data.splits import training_and_stopping_examples
from captioning.data.vocabulary import Vocabulary
from captioning.evaluation.evaluate import evaluate_run
from captioning.files import atomic_path, write_text
from captioning.models.caption_model import build_feature_model, build_model, compile_model, image_shape, masked_loss
from captioning.models.encoders import build_encoder, encoder_is_frozen, normalization_for
from captioning.models.precision import precision_policy
from captioning.plots.curves import plot_training_curves
from captioning.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    RunError,
    config_differences,
    load_run_config,
)
from captioning.training.augment import build_augmentation
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.distribution import Worker, build_strategy, current_worker
from captioning.training.features import FeatureCache
from captioning.training.gradients import GRADIENT_NORMS_FILE, GRADIENT_NORMS_PLOT, GradientNormLogger
from captioning.training.self_critical import train_self_critical
from captioning.training.validation import ValidationBleu
from captioning.validate import validate

BEST_WEIGHTS_FILE = "best.weights.h5"  # inside checkpoint/: the training model's best epoch
FINE_TUNE_DIR = "fine_tune"  # inside checkpoint/: phase 2's own checkpoint and best weights


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
        stopping) batches, the training ones in that epoch's order (pipeline.epoch_seed)."""
        config = self.config
        encode = feature_encoder(config)
        features, tokens = {}, {}
        for label, examples in [("train", self.train_examples), ("early stopping", self.stopping_examples)]:
            features[label] = cached_features(config, [example.image_path for example in examples], label, encode,
                                              self.worker)  # (images, regions, channels)
            tokens[label] = caption_array(examples, self.vocabulary, config.data.captions_per_image,
                                          config.decoder.max_length)
        batch_size, seed = config.training.batch_size, config.training.seed
        stopping = feature_dataset(features["early stopping"], tokens["early stopping"], batch_size, shuffle=False,
                                   seed=seed)

        def batches(epoch: int, skip_batches: int = 0):
            return feature_dataset(features["train"], tokens["train"], batch_size, shuffle=True, seed=seed,
                                   epoch=epoch, skip_batches=skip_batches), stopping

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


def fit(model, data: TrainingData, batches, checkpoint: TrainingCheckpoint, initial_epoch: int, epochs: int,
        verbose, callbacks=()) -> None:
    """One model.fit per epoch, on ``batches(epoch, skip_batches)``: an epoch's order depends
    only on the seed and the epoch, and a resumed epoch skips the steps its mid-epoch
    checkpoint had done. callbacks run before the checkpoint: what they add to an epoch's
    logs is saved with it."""
    checkpoint.track_callbacks(callbacks)
    progress = [RunProgress(epochs)] if verbose != 0 else []
    for epoch in range(initial_epoch, epochs):
        if checkpoint.finished:
            break
        train_dataset, stopping_dataset = batches(epoch, checkpoint.steps_done_in(epoch))
        with data.reader.reporting_errors():
            model.fit(train_dataset, validation_data=stopping_dataset, epochs=epoch + 1, initial_epoch=epoch,
                      callbacks=[*progress, *callbacks, checkpoint], verbose=verbose, shuffle=False)


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, "Epoch 3/20" rather than "3/3" while fit runs one epoch at a time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.run_epochs = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.run_epochs})


def epoch_callbacks(data: TrainingData, stopping_features, run_dir: Path, first_phase: bool) -> list:
    """Validation BLEU-4 per epoch and, in the first epoch of an encoder that trains from the
    start, its gradient norms."""
    config, callbacks = data.config, []
    if config.training.log_gradient_norms and first_phase:
        callbacks.append(data.gradient_logger(run_dir))
    if config.training.validation_bleu_images > 0:
        callbacks.append(validation_bleu(config, data.stopping_examples, stopping_features, data.reader,
                                         data.vocabulary))
    return callbacks


def train_phase_one(data: TrainingData, checkpoint: TrainingCheckpoint, strategy, run_dir: Path, verbose):
    """The decoder on cached features of a frozen encoder, or the whole model on images,
    for training.epochs. Returns the model holding the phase's best weights. A finished
    phase (a resumed run) only loads them: no features, no fitting."""
    config = data.config
    frozen = encoder_is_frozen(config.encoder)
    with strategy.scope(), precision_policy(config.runtime):
        if frozen:
            model = build_feature_model(config, data.vocabulary.size, frozen_feature_shape(config))
        else:
            model = build_model(config, data.vocabulary.size)
        compile_model(model, config.runtime, config.training.learning_rate)
        initial_epoch = checkpoint.restore(model)
        if initial_epoch:
            print(f"resuming phase 1 after epoch {initial_epoch}")
        if initial_epoch < config.training.epochs and not checkpoint.finished:
            if frozen:
                batches, stopping_features = data.feature_datasets()
            else:
                batches, stopping_features = data.image_datasets(), None
            callbacks = epoch_callbacks(data, stopping_features, run_dir, first_phase=initial_epoch == 0)
            fit(model, data, batches, checkpoint, initial_epoch, config.training.epochs, verbose, callbacks)
        model.load_weights(checkpoint.best_weights_path)
    return model


def train_phase_two(data: TrainingData, phase_one: TrainingCheckpoint, phase_one_model,
                    checkpoint: TrainingCheckpoint, strategy, run_dir: Path, verbose):
    """Encoder + decoder end to end on images, the top encoder.fine_tune_layers backbone
    layers unfrozen, starting from phase 1's best decoder (or phase 2's own checkpoint).
    Returns the full model holding the best weights of the two phases (see start_from)."""
    config = data.config
    with strategy.scope(), precision_policy(config.runtime):
        model = build_model(config, data.vocabulary.size, fine_tuning=True)
        compile_model(model, config.runtime, learning_rate=config.fine_tune.learning_rate)
        batches = None
        if checkpoint.has_checkpoint:
            initial_epoch = checkpoint.restore(model)
            print(f"resuming phase 2 (fine-tuning) after epoch {initial_epoch}")
        else:
            model.decoder.set_weights(phase_one_model.decoder.get_weights())
            batches = data.image_datasets()
            with data.reader.reporting_errors():
                starting_loss = float(model.evaluate(batches(0)[1], verbose=0))  # phase 1's best, on images this time
            initial_epoch = phase_one.state["epochs_done"]
            checkpoint.start_from(model, starting_loss, first_epoch=initial_epoch,
                                  best_epoch=phase_one.state["best_epoch"])
            print(f"phase 2: fine-tuning the top {config.encoder.fine_tune_layers} layers of {config.encoder.name} "
                  f"({parameter_count(model.encoder.trainable_weights)} parameters) with the decoder, learning rate "
                  f"{config.fine_tune.learning_rate}; early-stopping loss {starting_loss:.4f} after phase 1")
        last_epoch = checkpoint.state["first_epoch"] + config.fine_tune.epochs
        if initial_epoch < last_epoch and not checkpoint.finished:
            callbacks = epoch_callbacks(data, None, run_dir, first_phase=False)
            fit(model, data, batches or data.image_datasets(), checkpoint, initial_epoch, last_epoch, verbose,
                callbacks)
        model.load_weights(checkpoint.best_weights_path)
    return model


def parameter_count(weights) -> int:
    """How many numbers the given weights hold."""
    return int(sum(np.prod(weight.shape) for weight in weights))


def phase_summary(checkpoint: TrainingCheckpoint, learning_rate: float) -> dict:
    """metrics.json's record of one phase: its epochs, time and best epoch."""
    state = checkpoint.state
    summary = {"phase": state["phase"], "epochs": checkpoint.phase_epochs, "first_epoch": state["first_epoch"] + 1,
               "best_epoch": state["best_epoch"], "best_val_loss": state["best_val_loss"],
               "training_seconds": round(state["training_seconds"], 1), "learning_rate": learning_rate,
               "stopped_early": state["stopped_early"]}
    if "starting_val_loss" in state:
        summary["starting_val_loss"] = state["starting_val_loss"]
    return summary


def train(config: ExperimentConfig, run_dir: str | Path, verbose: int | str = "auto") -> dict:
    """Trains (or resumes) the run in ``run_dir`` and returns its metrics on the evaluation split."""
    validate(config)  # every section, before anything is built or written
    run_dir = Path(run_dir)
    strategy = build_strategy(config.runtime)  # first: "multi_worker" must exist before any TensorFlow op
    worker = current_worker(config.runtime)
    prepare_run_dir(config, run_dir)
    keras.utils.set_random_seed(config.training.seed)

    train_examples, stopping_examples = training_and_stopping_examples(config)
    vocabulary = load_or_build_vocabulary(
        run_dir, [caption for example in train_examples for caption in example.captions], config.decoder.min_word_count
    )
    print(f"run {run_dir}: {len(train_examples)} training images, {len(stopping_examples)} for early stopping, "
          f"vocabulary of {vocabulary.size} tokens, {strategy.num_replicas_in_sync} replica(s)"
          + (f", worker {worker.index} of {worker.count}" if worker.count > 1 else ""))
    data = TrainingData(config, train_examples, stopping_examples, vocabulary,
                        ImageReader(config.images, normalization_for(config.encoder)), worker)

    checkpoint_dir = run_dir / CHECKPOINT_DIR
    history_path = run_dir / HISTORY_FILE
    if not worker.is_chief:  # its own copy: resumable on a machine that does not share run_dir
        checkpoint_dir = checkpoint_dir / f"worker-{worker.index}"
        history_path = checkpoint_dir / HISTORY_FILE
    patience, decay = config.training.patience, config.training.learning_rate_decay
    every_steps = config.runtime.checkpoint_every_steps
    phase_one = TrainingCheckpoint(checkpoint_dir, checkpoint_dir / BEST_WEIGHTS_FILE, history_path, patience,
                                   learning_rate_decay=decay, every_steps=every_steps)
    model = train_phase_one(data, phase_one, strategy, run_dir, verbose)
    phases = [(phase_one, config.training.learning_rate)]
    if config.encoder.fine_tune_layers:
        phase_two = TrainingCheckpoint(checkpoint_dir / FINE_TUNE_DIR, checkpoint_dir / FINE_TUNE_DIR / BEST_WEIGHTS_FILE,
                                       history_path, patience, phase=2, earlier_history=phase_one.state["history"],
                                       learning_rate_decay=decay, every_steps=every_steps)
        model = train_phase_two(data, phase_one, model, phase_two, strategy, run_dir, verbose)
        phases.append((phase_two, config.fine_tune.learning_rate))
    self_critical = None
    if config.self_critical.epochs:
        model, self_critical = self_critical_phase(data, model, run_dir, verbose)
    if not worker.is_chief:
        print(f"worker {worker.index}: training finished; the chief (worker 0) writes the weights and metrics")
        return {}
    export_model(config, model, vocabulary, run_dir / WEIGHTS_FILE)
    plot_training_curves(phases[-1][0].run_history, run_dir / "training_curves.png", title=config.name)
    facts = training_facts(phases, model)
    if self_critical is not None:
        facts["self_critical"] = {"epochs": self_critical.state["epochs_done"],
                                  "best_epoch": self_critical.state["best_epoch"],  # 0: phase 1's decoder
                                  "training_seconds": round(self_critical.state["training_seconds"], 1),
                                  "learning_rate": config.self_critical.learning_rate,
                                  "samples": config.self_critical.samples,
                                  "history": self_critical.state["history"]}
        facts["training_seconds"] = round(facts["training_seconds"] + self_critical.state["training_seconds"], 1)
    return evaluate_run(run_dir, facts)


def self_critical_phase(data: TrainingData, phase_model, run_dir: Path, verbose):
    """The self-critical phase (self_critical.py) on the frozen encoder's cached features,
    from phase 1's best decoder; returns its model and checkpoint."""
    config = data.config
    encode = feature_encoder(config)

    def features_for(examples, label):
        return cached_features(config, [example.image_path for example in examples], label, encode, data.worker)

    def validation_callback():
        if config.training.validation_bleu_images <= 0:
            return None
        return validation_bleu(config, data.stopping_examples, features_for(data.stopping_examples, "early stopping"),
                               data.reader, data.vocabulary)

    with precision_policy(config.runtime):
        return train_self_critical(data, phase_model, frozen_feature_shape(config), run_dir, features_for,
                                   validation_callback, verbose)


def training_facts(phases: list, model) -> dict:
    """What metrics.json records about the training beside the scores: whole-run totals and,
    per phase, its epochs, time and best epoch. phases: (TrainingCheckpoint, learning rate) pairs."""
    last = phases[-1][0].state
    return {"epochs": last["epochs_done"], "best_epoch": last["best_epoch"],
            "training_seconds": round(sum(checkpoint.state["training_seconds"] for checkpoint, _ in phases), 1),
            "trainable_parameters": parameter_count(model.trainable_weights),
            "phases": [phase_summary(checkpoint, learning_rate) for checkpoint, learning_rate in phases]}

