"""training.learning_rate_decay: an epoch without improvement goes back to the best weights
and continues at a smaller learning rate; the rate survives a restart."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from conftest import tiny_config

from captioning.config import ConfigError
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.loop import train


def compiled_model(learning_rate=1e-3):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def checkpoint_for(tmp_path, decay, patience=3):
    return TrainingCheckpoint(tmp_path / "checkpoint", tmp_path / "best.weights.h5", tmp_path / "history.csv",
                              patience, learning_rate_decay=decay)


def watched_model(tmp_path, decay, patience=3):
    """A compiled model at learning rate 1e-3 and the checkpoint watching it."""
    model, checkpoint = compiled_model(1e-3), checkpoint_for(tmp_path, decay, patience)
    checkpoint.set_model(model)
    return model, checkpoint


def run_epoch(checkpoint, model, epoch, val_loss, kernel_value):
    """Stands in for an epoch of fit: new weights, then the checkpoint's end-of-epoch work."""
    model.layers[0].kernel.assign(np.full((3, 2), kernel_value, dtype="float32"))
    checkpoint.on_epoch_begin(epoch)
    checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss})


def kernel(model):
    return keras.ops.convert_to_numpy(model.layers[0].kernel)


def learning_rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def test_a_worse_epoch_restores_the_best_weights_and_decays_the_rate(tmp_path):
    model, checkpoint = watched_model(tmp_path, decay=0.2)
    run_epoch(checkpoint, model, 0, val_loss=2.0, kernel_value=1.0)
    run_epoch(checkpoint, model, 1, val_loss=1.5, kernel_value=2.0)  # the best
    assert learning_rate(model) == pytest.approx(1e-3)
    run_epoch(checkpoint, model, 2, val_loss=1.7, kernel_value=3.0)  # worse: back to 2.0, rate / 5
    np.testing.assert_array_equal(kernel(model), 2.0)
    assert learning_rate(model) == pytest.approx(2e-4)
    run_epoch(checkpoint, model, 3, val_loss=1.4, kernel_value=4.0)  # better: kept, rate kept
    np.testing.assert_array_equal(kernel(model), 4.0)
    assert learning_rate(model) == pytest.approx(2e-4)
    history = [row["learning_rate"] for row in checkpoint.state["history"]]
    assert history == pytest.approx([1e-3, 1e-3, 1e-3, 2e-4])  # the rate each epoch trained with


def test_the_decayed_rate_and_weights_survive_a_restart(tmp_path):
    model, checkpoint = watched_model(tmp_path, decay=0.5)
    run_epoch(checkpoint, model, 0, val_loss=1.0, kernel_value=1.0)
    run_epoch(checkpoint, model, 1, val_loss=1.2, kernel_value=5.0)
    restarted, again = compiled_model(1e-3), checkpoint_for(tmp_path, decay=0.5)
    assert again.restore(restarted) == 2
    np.testing.assert_array_equal(kernel(restarted), 1.0)  # epoch 2 ends at epoch 1's weights
    assert learning_rate(restarted) == pytest.approx(5e-4)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["learning_rate"] == pytest.approx(5e-4)


def test_patience_still_ends_the_run_without_a_last_decay(tmp_path):
    model, checkpoint = watched_model(tmp_path, decay=0.5, patience=2)
    for epoch, loss in enumerate([1.0, 1.1, 1.2]):
        run_epoch(checkpoint, model, epoch, val_loss=loss, kernel_value=epoch + 1.0)
    assert checkpoint.finished and model.stop_training
    assert learning_rate(model) == pytest.approx(5e-4)  # one decay (after epoch 2), none at the stop


def test_without_decay_the_rate_and_weights_are_left_alone(tmp_path):
    model, checkpoint = watched_model(tmp_path, decay=1.0)
    run_epoch(checkpoint, model, 0, val_loss=1.0, kernel_value=1.0)
    run_epoch(checkpoint, model, 1, val_loss=1.2, kernel_value=5.0)
    np.testing.assert_array_equal(kernel(model), 5.0)
    assert learning_rate(model) == pytest.approx(1e-3)
    assert "learning_rate" not in checkpoint.state["history"][-1]


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_a_decay_outside_0_to_1_is_a_config_error(tmp_path, decay):
    config = tiny_config(tmp_path, f"training.learning_rate_decay={decay}")
    with pytest.raises(ConfigError, match="training.learning_rate_decay"):
        train(config, tmp_path / "run", verbose=0)


@pytest.mark.slow
def test_a_tiny_run_follows_the_rule_epoch_by_epoch(tmp_path):
    """Through train(): the configured decay reaches the checkpoint, and every epoch trained at
    the rate the rule gives from the epochs before it (a cut after each epoch that did not
    beat the best so far)."""
    # 100: with each epoch in its own seeded order (pipeline.epoch_seed), 10 and 30 improved
    # every epoch of this tiny run; 100 makes epoch 3 worse (measured)
    config = tiny_config(tmp_path, "training.epochs=4", "training.patience=4", "training.learning_rate=100.0",
                         "training.learning_rate_decay=0.5", "data.shapes_train_size=16")
    train(config, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["learning_rate"]) < 100.0, "a learning rate of 100 should have made an epoch worse"
    expected_rate, best = 100.0, float("inf")
    for row in rows:
        assert float(row["learning_rate"]) == pytest.approx(expected_rate)
        if float(row["val_loss"]) < best:
            best = float(row["val_loss"])
        else:
            expected_rate *= 0.5
