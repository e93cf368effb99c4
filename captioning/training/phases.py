"""The phases of a run (loop.py runs them in order and owns the run directory):

    phase 1  train_phase_one      the decoder on cached features of a frozen encoder, or the
                                  whole model on images, for training.epochs
    phase 2  train_phase_two      encoder + decoder on images with the top
                                  encoder.fine_tune_layers backbone layers unfrozen, for
                                  fine_tune.epochs (only with encoder.fine_tune_layers)
    then     self_critical_phase  self-critical training of the decoder on the cached
                                  features (self_critical.py), for self_critical.epochs

Each phase fits one epoch at a time (``fit``) with its own resumable checkpoint and returns
the model holding its best weights.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from captioning.models.caption_model import build_feature_model, build_model, compile_model
from captioning.models.encoders import encoder_is_frozen
from captioning.models.precision import precision_policy
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.self_critical import train_self_critical
from captioning.training.training_data import (
    TrainingData,
    cached_features,
    feature_encoder,
    frozen_feature_shape,
    validation_bleu,
)


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


def self_critical_phase(data: TrainingData, phase_model, run_dir: Path, verbose):
    """The self-critical phase (self_critical.py) on the frozen encoder's cached features,
    from phase 1's best decoder; returns its model and checkpoint."""
    config = data.config
    encode = feature_encoder(config)

    def features_for(examples, label, mirrored=False):
        return cached_features(config, [example.image_path for example in examples], label, encode, data.worker,
                               mirrored=mirrored)

    def validation_callback():
        if config.training.validation_bleu_images <= 0:
            return None
        return validation_bleu(config, data.stopping_examples, features_for(data.stopping_examples, "early stopping"),
                               data.reader, data.vocabulary)

    with precision_policy(config.runtime):
        return train_self_critical(data, phase_model, frozen_feature_shape(config), run_dir, features_for,
                                   validation_callback, verbose)


def parameter_count(weights) -> int:
    """How many numbers the given weights hold."""
    return int(sum(np.prod(weight.shape) for weight in weights))


