"""train(config, run_dir): data -> vocabulary -> model -> fit (resumable) -> BLEU on the held-out split.

A frozen pretrained encoder is run once per split into the feature cache and the decoder
trains on those features; any other encoder trains end to end on images. Either way the
run directory ends with one full model (encoder + decoder) that captions images.

With ``encoder.fine_tune_layers`` = N > 0 a run has two phases:

    phase 1  training.epochs            decoder on the frozen backbone's cached features
    phase 2  training.fine_tune_epochs  encoder + decoder on images, from phase 1's best
                                        weights; the top N backbone layers unfrozen (batch
                                        norm frozen), at training.fine_tune_learning_rate

Each phase has its own checkpoint (``checkpoint/`` and ``checkpoint/fine_tune/``), early
stopping and best weights, so an interrupted run resumes in the phase it was in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from captioning.captioner import Captioner
from captioning.checkpoints import TrainingCheckpoint
from captioning.config import ConfigError, ExperimentConfig, to_toml
from captioning.encoders import build_encoder, normalization_for
from captioning.evaluate import evaluate_captioner, format_metrics, write_results
from captioning.features import FeatureCache, encoder_is_frozen
from captioning.files import atomic_path, write_text
from captioning.model import build_feature_model, build_model, image_shape, masked_loss
from captioning.pipeline import ImageReader, caption_array, feature_dataset, image_dataset, training_dataset
from captioning.plots import plot_training_curves
from captioning.runs import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, VOCABULARY_FILE, WEIGHTS_FILE,
                             RunError, config_differences, load_run_config)
from captioning.splits import check_splits, training_and_stopping_examples
from captioning.vocabulary import Vocabulary

BEST_WEIGHTS_FILE = "best.weights.h5"  # inside checkpoint/: the training model's best epoch
FINE_TUNE_DIR = "fine_tune"  # inside checkpoint/: phase 2's own checkpoint and best weights


def check_fine_tuning(config: ExperimentConfig) -> None:
    """Refuses fine-tuning settings that cannot run as asked, before phase 1 spends any time."""
    encoder, training = config.encoder, config.training
    if training.fine_tune_epochs < 0:
        raise ConfigError(f"training.fine_tune_epochs={training.fine_tune_epochs} is negative")
    if not encoder.fine_tune_layers:
        return
    # Negative N, conv_stack, encoder.trainable / fine_tune_last_block, N above the backbone's
    # layer count: each is a ConfigError from the phase-2 encoder (built without its weights).
    build_encoder(encoder, image_shape(config), load_pretrained=False, fine_tuning=True)
    if encoder.weights in ("none", ""):
        raise ConfigError("encoder.fine_tune_layers needs pretrained weights (encoder.weights is none): phase 1's cached "
                          "features would come from one random backbone and phase 2 would build another; give "
                          "encoder.weights=imagenet or a weights file")
    if training.fine_tune_epochs == 0:
        raise ConfigError(f"encoder.fine_tune_layers={encoder.fine_tune_layers} asks for a fine-tuning phase but "
                          "training.fine_tune_epochs is 0; give it epochs, or set encoder.fine_tune_layers=0")
    if training.fine_tune_learning_rate <= 0:
        raise ConfigError(f"training.fine_tune_learning_rate={training.fine_tune_learning_rate} must be positive")


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


def cached_features(config: ExperimentConfig, examples, label: str) -> np.ndarray:
    """(images, regions, channels) float16 features of a frozen encoder, from the feature cache.

    The images are read once for this, so they skip the normalized-image cache (at 224 px
    it would hold 600 KB per image that nothing reads again).
    """
    encoder = build_encoder(config.encoder, image_shape(config))
    reader = ImageReader(dataclasses.replace(config.images, cache=False), normalization_for(config.encoder))
    batch_size = config.training.batch_size

    def encode_batches(paths):
        with reader.reporting_errors():
            for images in image_dataset(paths, reader, batch_size):
                yield encoder(images, training=False)  # (batch, regions, channels)

    return FeatureCache(config.images.feature_cache_dir).features(
        [example.image_path for example in examples], config.encoder, config.images, reader.normalization,
        encode_batches, batch_size, label=label,
    )


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

    def feature_datasets(self):
        """(train, early stopping) batches of a frozen encoder's cached features."""
        config, datasets = self.config, []
        for label, examples, shuffle in [("train", self.train_examples, True),
                                         ("early stopping", self.stopping_examples, False)]:
            features = cached_features(config, examples, label)  # (images, regions, channels)
            tokens = caption_array(examples, self.vocabulary, config.data.captions_per_image, config.decoder.max_length)
            datasets.append(feature_dataset(features, tokens, config.training.batch_size, shuffle=shuffle,
                                            seed=config.training.seed))
        return datasets

    def image_datasets(self):
        """(train, early stopping) batches of images, for an encoder that trains."""
        config = self.config
        options = dict(vocabulary=self.vocabulary, reader=self.reader, captions_per_image=config.data.captions_per_image,
                       length=config.decoder.max_length, batch_size=config.training.batch_size, seed=config.training.seed)
        return (training_dataset(self.train_examples, shuffle=True, **options),
                training_dataset(self.stopping_examples, shuffle=False, **options))


def compile_model(model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=5.0), loss=masked_loss())


def fit(model, data: TrainingData, datasets, checkpoint: TrainingCheckpoint, initial_epoch: int, epochs: int,
        verbose) -> None:
    train_dataset, stopping_dataset = datasets
    with data.reader.reporting_errors():
        model.fit(train_dataset, validation_data=stopping_dataset, epochs=epochs, initial_epoch=initial_epoch,
                  callbacks=[checkpoint], verbose=verbose, shuffle=False)


def train_phase_one(data: TrainingData, checkpoint: TrainingCheckpoint, verbose):
    """The decoder on cached features of a frozen encoder, or the whole model on images,
    for training.epochs. Returns the model holding the phase's best weights. A finished
    phase (a resumed run) only loads them: no features, no fitting."""
    config = data.config
    frozen = encoder_is_frozen(config.encoder)
    if frozen:
        encoder = build_encoder(config.encoder, image_shape(config), load_pretrained=False)
        feature_shape = encoder.compute_output_shape((None, *image_shape(config)))[1:]  # (regions, channels)
        model = build_feature_model(config, data.vocabulary.size, feature_shape)
    else:
        model = build_model(config, data.vocabulary.size)
    compile_model(model, config.training.learning_rate)
    initial_epoch = checkpoint.restore(model)
    if initial_epoch:
        print(f"resuming phase 1 after epoch {initial_epoch}")
    if initial_epoch < config.training.epochs and not checkpoint.finished:
        datasets = data.feature_datasets() if frozen else data.image_datasets()
        fit(model, data, datasets, checkpoint, initial_epoch, config.training.epochs, verbose)
    model.load_weights(checkpoint.best_weights_path)
    return model


def train_phase_two(data: TrainingData, phase_one: TrainingCheckpoint, phase_one_model,
                    checkpoint: TrainingCheckpoint, verbose):
    """Encoder + decoder end to end on images, the top encoder.fine_tune_layers backbone
    layers unfrozen, starting from phase 1's best decoder (or phase 2's own checkpoint).
    Returns the full model holding the best weights of the two phases (see start_from)."""
    config = data.config
    model = build_model(config, data.vocabulary.size, fine_tuning=True)
    compile_model(model, config.training.fine_tune_learning_rate)
    datasets = None
    if checkpoint.has_checkpoint:
        initial_epoch = checkpoint.restore(model)
        print(f"resuming phase 2 (fine-tuning) after epoch {initial_epoch}")
    else:
        model.decoder.set_weights(phase_one_model.decoder.get_weights())
        datasets = data.image_datasets()
        with data.reader.reporting_errors():
            starting_loss = float(model.evaluate(datasets[1], verbose=0))  # phase 1's best, on images this time
        initial_epoch = phase_one.state["epochs_done"]
        checkpoint.start_from(model, starting_loss, first_epoch=initial_epoch, best_epoch=phase_one.state["best_epoch"])
        trainable = int(sum(np.prod(weight.shape) for weight in model.encoder.trainable_weights))
        print(f"phase 2: fine-tuning the top {config.encoder.fine_tune_layers} layers of {config.encoder.name} "
              f"({trainable} parameters) with the decoder, learning rate {config.training.fine_tune_learning_rate}; "
              f"early-stopping loss {starting_loss:.4f} after phase 1")
    last_epoch = checkpoint.state["first_epoch"] + config.training.fine_tune_epochs
    if initial_epoch < last_epoch and not checkpoint.finished:
        fit(model, data, datasets or data.image_datasets(), checkpoint, initial_epoch, last_epoch, verbose)
    model.load_weights(checkpoint.best_weights_path)
    return model


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
    run_dir = Path(run_dir)
    check_splits(config)
    check_fine_tuning(config)
    prepare_run_dir(config, run_dir)
    keras.utils.set_random_seed(config.training.seed)

    train_examples, stopping_examples = training_and_stopping_examples(config)
    vocabulary = load_or_build_vocabulary(
        run_dir, [caption for example in train_examples for caption in example.captions], config.decoder.min_word_count
    )
    print(f"run {run_dir}: {len(train_examples)} training images, {len(stopping_examples)} for early stopping, "
          f"vocabulary of {vocabulary.size} tokens")
    data = TrainingData(config, train_examples, stopping_examples, vocabulary,
                        ImageReader(config.images, normalization_for(config.encoder)))

    checkpoint_dir = run_dir / CHECKPOINT_DIR
    patience = config.training.patience
    phase_one = TrainingCheckpoint(checkpoint_dir, checkpoint_dir / BEST_WEIGHTS_FILE, run_dir / HISTORY_FILE, patience)
    model = train_phase_one(data, phase_one, verbose)
    phases = [(phase_one, config.training.learning_rate)]
    if config.encoder.fine_tune_layers:
        phase_two = TrainingCheckpoint(checkpoint_dir / FINE_TUNE_DIR, checkpoint_dir / FINE_TUNE_DIR / BEST_WEIGHTS_FILE,
                                       run_dir / HISTORY_FILE, patience, phase=2,
                                       earlier_history=phase_one.state["history"])
        model = train_phase_two(data, phase_one, model, phase_two, verbose)
        phases.append((phase_two, config.training.fine_tune_learning_rate))
    export_model(config, model, vocabulary, run_dir / WEIGHTS_FILE)
    last = phases[-1][0]
    history = [row for checkpoint, _ in phases for row in checkpoint.state["history"]]
    plot_training_curves(history, run_dir / "training_curves.png", title=config.name)

    split = config.training.evaluation_split
    metrics, rows = evaluate_captioner(Captioner.from_run(run_dir), split)
    metrics.update(epochs=last.state["epochs_done"], best_epoch=last.state["best_epoch"],
                   training_seconds=round(sum(checkpoint.state["training_seconds"] for checkpoint, _ in phases), 1),
                   trainable_parameters=int(sum(np.prod(weight.shape) for weight in model.trainable_weights)),
                   phases=[phase_summary(checkpoint, learning_rate) for checkpoint, learning_rate in phases])
    write_results(metrics, rows, run_dir / METRICS_FILE, run_dir / f"captions_{split}.csv")
    print(format_metrics(metrics))
    return metrics
