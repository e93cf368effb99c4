"""Resumable training: a checkpoint every epoch, early stopping that survives a restart.

``checkpoint/state.json`` is written last and names the weights file of the last finished
epoch, so an interruption at any moment leaves a consistent pair: the state always points
at complete weights (model + optimizer) written before it.

A run with a fine-tuning phase has one checkpoint per phase (training.py puts phase 2's in
``checkpoint/fine_tune/``); each state records its ``phase`` and ``first_epoch``. Epochs are
numbered across the run: phase 2 of a run whose phase 1 ended after epoch 10 starts at 11.

With ``learning_rate_decay`` below 1, an epoch that does not improve the early-stopping loss
also sends the model back to the best weights and multiplies Adam's learning rate by the
factor (step decay on plateau); the state records the rate, so a resumed run keeps it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from captioning.runs import RunError
from captioning.files import atomic_path, write_csv_rows, write_json

STATE_FILE = "state.json"


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer each epoch, keeps the best weights, stops early.

    checkpoint_dir: where per-epoch weights and state.json go.
    best_weights_path: the lowest-validation-loss weights (the run's model).
    history_path: CSV of every finished epoch's logs, after ``earlier_history`` (the rows of
        the phases before this one).
    phase: 1, or 2 for the fine-tuning phase; every history row records it.
    learning_rate_decay: in (0, 1]; below 1, an epoch without improvement restores the best
        weights (optimizer slots included) and multiplies the learning rate by it. Every history
        row then records the epoch's ``learning_rate``.
    """

    def __init__(self, checkpoint_dir: Path, best_weights_path: Path, history_path: Path, patience: int,
                 phase: int = 1, earlier_history: list[dict] = (), learning_rate_decay: float = 1.0):
        super().__init__()
        if not 0 < learning_rate_decay <= 1:
            raise ValueError(f"learning_rate_decay must be in (0, 1], got {learning_rate_decay}")
        self.learning_rate_decay = learning_rate_decay
        self.checkpoint_dir = Path(checkpoint_dir)
        self.best_weights_path = Path(best_weights_path)
        self.history_path = Path(history_path)
        self.patience = patience
        self.earlier_history = list(earlier_history)
        self.state = {"phase": phase, "first_epoch": 0, "epochs_done": 0, "best_val_loss": None, "best_epoch": 0,
                      "epochs_without_improvement": 0, "stopped_early": False, "weights_file": None, "history": [],
                      "training_seconds": 0.0, "learning_rate": None}

    @property
    def state_path(self) -> Path:
        return self.checkpoint_dir / STATE_FILE

    @property
    def has_checkpoint(self) -> bool:
        """Whether an epoch of this phase has finished (in this process or an earlier one)."""
        return self.state_path.is_file()

    def restore(self, model: keras.Model) -> int:
        """Loads the last checkpoint into ``model`` (compiled); returns the epoch to start from."""
        if not self.state_path.is_file():
            return self.state["epochs_done"]
        state = {"phase": 1, "first_epoch": 0} | json.loads(self.state_path.read_text())  # older runs: phase 1 only
        if state["phase"] != self.state["phase"]:
            raise RunError(f"{self.state_path} holds phase {state['phase']}, expected phase {self.state['phase']}; "
                           "delete the checkpoint folder to start over")
        weights_path = self.checkpoint_dir / state["weights_file"]
        if not weights_path.is_file():
            raise RunError(f"{weights_path}: checkpoint named by {self.state_path} is missing; delete the checkpoint folder to start over")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(weights_path)
        self.state = {"learning_rate": None} | state
        if self.state["learning_rate"] is not None:  # decayed: the weights file may hold the rate before
            model.optimizer.learning_rate = self.state["learning_rate"]
        return state["epochs_done"]

    def start_from(self, model: keras.Model, validation_loss: float, first_epoch: int, best_epoch: int) -> None:
        """Starts a phase from the weights ``model`` holds: the previous phase's best, from
        ``best_epoch``, scoring ``validation_loss`` here, after ``first_epoch`` epochs of earlier
        phases. They stay this phase's best until an epoch beats them, so a phase that only
        makes things worse stops after ``patience`` epochs and leaves them as the result."""
        model.optimizer.build(model.trainable_variables)  # the best-weights file then has its slots
        with atomic_path(self.best_weights_path) as temporary:
            model.save_weights(temporary)
        self.state.update(first_epoch=first_epoch, epochs_done=first_epoch, best_val_loss=validation_loss,
                          best_epoch=best_epoch, starting_val_loss=validation_loss)

    @property
    def finished(self) -> bool:
        return self.state["stopped_early"]

    @property
    def run_history(self) -> list[dict]:
        """Every finished epoch's logs of the run so far: the earlier phases', then this one's."""
        return self.earlier_history + self.state["history"]

    @property
    def phase_epochs(self) -> int:
        """Epochs finished in this phase."""
        return self.state["epochs_done"] - self.state["first_epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.time()

    @property
    def decays(self) -> bool:
        return self.learning_rate_decay < 1

    def on_epoch_end(self, epoch, logs=None):
        logs = {name: float(value) for name, value in (logs or {}).items()}
        if self.decays:
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["learning_rate"] = float(f"{rate:.6g}")  # 2e-4, not float32's 0.00019999999494757503
        self.state["training_seconds"] += time.time() - self._epoch_started
        weights_file = f"epoch-{epoch + 1:03d}.weights.h5"
        validation_loss = logs.get("val_loss", logs.get("loss", math.inf))
        state = self.state
        if state["best_val_loss"] is None or validation_loss < state["best_val_loss"]:
            with atomic_path(self.best_weights_path) as temporary:
                self.model.save_weights(temporary)
            state.update(best_val_loss=validation_loss, best_epoch=epoch + 1, epochs_without_improvement=0)
        else:
            state["epochs_without_improvement"] += 1
        previous_weights = state["weights_file"]
        state["history"].append({"phase": state["phase"], "epoch": epoch + 1, **logs})
        state.update(epochs_done=epoch + 1, weights_file=weights_file)
        if state["epochs_without_improvement"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        elif state["epochs_without_improvement"] and self.decays:
            self._decay_from_best(logs["learning_rate"])
        with atomic_path(self.checkpoint_dir / weights_file) as temporary:
            self.model.save_weights(temporary)  # where the next epoch starts (the best, after a decay)
        write_json(self.state_path, state)
        if previous_weights and previous_weights != weights_file:
            (self.checkpoint_dir / previous_weights).unlink(missing_ok=True)
        self._write_history()

    def _decay_from_best(self, learning_rate: float) -> None:
        """Back to the best weights (and their optimizer slots), at learning_rate * decay."""
        self.model.load_weights(self.best_weights_path)
        self.state["learning_rate"] = learning_rate * self.learning_rate_decay
        self.model.optimizer.learning_rate = self.state["learning_rate"]
        print(f"\nno improvement: back to epoch {self.state['best_epoch']}'s weights, learning rate "
              f"{learning_rate:.3g} -> {self.state['learning_rate']:.3g}")

    def _write_history(self):
        write_csv_rows(self.history_path, self.run_history)
