"""Resumable training: a checkpoint every epoch, early stopping that survives a restart.

``checkpoint/state.json`` is written last and names the weights file of the last finished
epoch, so an interruption at any moment leaves a consistent pair: the state always points
at complete weights (model + optimizer) written before it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import keras

from captioning.runs import RunError
from captioning.files import atomic_path, write_json, write_text

STATE_FILE = "state.json"


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer each epoch, keeps the best weights, stops early.

    checkpoint_dir: where per-epoch weights and state.json go.
    best_weights_path: the lowest-validation-loss weights (the run's model).
    history_path: CSV of every finished epoch's logs.
    """

    def __init__(self, checkpoint_dir: Path, best_weights_path: Path, history_path: Path, patience: int):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.best_weights_path = Path(best_weights_path)
        self.history_path = Path(history_path)
        self.patience = patience
        self.state = {"epochs_done": 0, "best_val_loss": None, "best_epoch": 0, "epochs_without_improvement": 0,
                      "stopped_early": False, "weights_file": None, "history": [], "training_seconds": 0.0}

    @property
    def state_path(self) -> Path:
        return self.checkpoint_dir / STATE_FILE

    def restore(self, model: keras.Model) -> int:
        """Loads the last checkpoint into ``model`` (compiled); returns the epoch to start from."""
        if not self.state_path.is_file():
            return 0
        state = json.loads(self.state_path.read_text())
        weights_path = self.checkpoint_dir / state["weights_file"]
        if not weights_path.is_file():
            raise RunError(f"{weights_path}: checkpoint named by {self.state_path} is missing; delete the checkpoint folder to start over")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(weights_path)
        self.state = state
        return state["epochs_done"]

    @property
    def finished(self) -> bool:
        return self.state["stopped_early"]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {name: float(value) for name, value in (logs or {}).items()}
        self.state["training_seconds"] += time.time() - self._epoch_started
        weights_file = f"epoch-{epoch + 1:03d}.weights.h5"
        with atomic_path(self.checkpoint_dir / weights_file) as temporary:
            self.model.save_weights(temporary)
        validation_loss = logs.get("val_loss", logs.get("loss", math.inf))
        state = self.state
        if state["best_val_loss"] is None or validation_loss < state["best_val_loss"]:
            with atomic_path(self.best_weights_path) as temporary:
                self.model.save_weights(temporary)
            state.update(best_val_loss=validation_loss, best_epoch=epoch + 1, epochs_without_improvement=0)
        else:
            state["epochs_without_improvement"] += 1
        previous_weights = state["weights_file"]
        state["history"].append({"epoch": epoch + 1, **logs})
        state.update(epochs_done=epoch + 1, weights_file=weights_file)
        if state["epochs_without_improvement"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        write_json(self.state_path, state)
        if previous_weights and previous_weights != weights_file:
            (self.checkpoint_dir / previous_weights).unlink(missing_ok=True)
        self._write_history()

    def _write_history(self):
        rows = self.state["history"]
        columns = list(dict.fromkeys(column for row in rows for column in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.history_path, buffer.getvalue())
