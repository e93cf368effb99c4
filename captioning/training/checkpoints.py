"""Resumable training: a checkpoint every epoch, early stopping that survives a restart.

``checkpoint/state.json`` is written last and names the weights file of the last finished
epoch, so an interruption at any moment leaves a consistent pair: the state always points
at complete weights (model + optimizer) written before it.

A run with a fine-tuning phase has one checkpoint per phase (training/loop.py puts phase 2's in
``checkpoint/fine_tune/``); each state records its ``phase`` and ``first_epoch``. Epochs are
numbered across the run: phase 2 of a run whose phase 1 ended after epoch 10 starts at 11.

With ``learning_rate_decay`` below 1, an epoch that does not improve the early-stopping loss
also sends the model back to the best weights and multiplies Adam's learning rate by the
factor (step decay on plateau); the state records the rate, so a resumed run keeps it.

Mid-epoch checkpoints (``every_steps`` > 0, runtime.checkpoint_every_steps): every that many
steps of an epoch, the weights (model + optimizer slots) go to
``epoch-<e>-step-<s>.weights.h5`` and the state's ``mid_epoch`` records the epoch, the steps
done in it, the loss tracker's running sums, the dropout generators' states and the state of
the callbacks that keep one (``checkpoint_state`` / ``restore_checkpoint_state``). A resumed
run rebuilds the epoch's batches in the same order (pipeline.epoch_seed) and skips the
``steps_done`` already trained on (``steps_done_in``), so it ends as the uninterrupted run
would. States written before these keys existed resume at their last epoch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioning.files import atomic_path, is_temporary, write_csv_rows, write_json
from captioning.runs import RunError

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
    every_steps: a mid-epoch checkpoint every this many steps of an epoch (0: epoch ends only).
    """

    def __init__(self, checkpoint_dir: Path, best_weights_path: Path, history_path: Path, patience: int,
                 phase: int = 1, earlier_history: list[dict] = (), learning_rate_decay: float = 1.0,
                 every_steps: int = 0):
        super().__init__()
        if not 0 < learning_rate_decay <= 1:
            raise ValueError(f"learning_rate_decay must be in (0, 1], got {learning_rate_decay}")
        if every_steps < 0:
            raise ValueError(f"every_steps must be 0 (epoch ends only) or more, got {every_steps}")
        self.every_steps = every_steps
        self.tracked_callbacks: list = []
        self._skipped_steps = 0  # steps of the current epoch trained before this process resumed it
        self._epoch = 0  # 0-based, the epoch in progress
        self.learning_rate_decay = learning_rate_decay
        self.checkpoint_dir = Path(checkpoint_dir)
        self.best_weights_path = Path(best_weights_path)
        self.history_path = Path(history_path)
        self.patience = patience
        self.earlier_history = list(earlier_history)
        self.state = {"phase": phase, "first_epoch": 0, "epochs_done": 0, "best_val_loss": None, "best_epoch": 0,
                      "epochs_without_improvement": 0, "stopped_early": False, "weights_file": None, "history": [],
                      "training_seconds": 0.0, "learning_rate": None, "mid_epoch": None,
                      "random_state": None}

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
        state = {"learning_rate": None, "mid_epoch": None, "random_state": None} | state  # older runs: epoch ends only
        mid_epoch = state["mid_epoch"]
        weights_path = self.checkpoint_dir / (mid_epoch or state)["weights_file"]
        if not weights_path.is_file():
            raise RunError(f"{weights_path}: checkpoint named by {self.state_path} is missing; delete the checkpoint folder to start over")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(weights_path)
        self.state = state
        if self.state["learning_rate"] is not None:  # decayed: the weights file may hold the rate before
            model.optimizer.learning_rate = self.state["learning_rate"]
        assign_variables(random_state_variables(model), (mid_epoch or state)["random_state"])
        self._remove_unreferenced_files()
        if mid_epoch:
            print(f"resuming epoch {mid_epoch['epoch']} after its step {mid_epoch['steps_done']}")
        return state["epochs_done"]

    def steps_done_in(self, epoch: int) -> int:
        """Steps of ``epoch`` (0-based) already trained on, from a mid-epoch checkpoint: the
        resumed epoch skips that many batches."""
        mid_epoch = self.state["mid_epoch"]
        return mid_epoch["steps_done"] if mid_epoch and mid_epoch["epoch"] == epoch + 1 else 0

    def track_callbacks(self, callbacks) -> None:
        """Saves the state of those ``callbacks`` that keep one (``checkpoint_state()`` ->
        JSON-able dict) in every mid-epoch checkpoint, and gives a resumed epoch's saved state
        back to them now (``restore_checkpoint_state(state, steps_done)``)."""
        self.tracked_callbacks = [callback for callback in callbacks if hasattr(callback, "checkpoint_state")]
        saved = (self.state["mid_epoch"] or {}).get("callbacks", {})
        for callback in self.tracked_callbacks:
            if type(callback).__name__ in saved:
                callback.restore_checkpoint_state(saved[type(callback).__name__], self.state["mid_epoch"]["steps_done"])

    def _remove_unreferenced_files(self) -> None:
        """Weights files the state no longer names and temporaries of a killed writer: what an
        interruption between writing the state and removing the previous file leaves."""
        keep = {self.state["weights_file"], (self.state["mid_epoch"] or {}).get("weights_file")}
        for path in self.checkpoint_dir.iterdir():
            stale_weights = path.name.startswith("epoch-") and path.name.endswith(".weights.h5") and path.name not in keep
            if path.is_file() and (stale_weights or is_temporary(path.name)):
                path.unlink(missing_ok=True)

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
        self._epoch, self._epoch_started = epoch, time.time()
        self._skipped_steps = self.steps_done_in(epoch)
        if not self._skipped_steps:
            return
        self._epoch_started -= self.state["mid_epoch"]["seconds"]
        if tf.distribute.get_strategy().num_replicas_in_sync == 1:
            # Keras has just reset the metrics: give back the loss sums of the steps done.
            # Not under several replicas, whose per-replica sums the checkpoint does not
            # hold: there the resumed epoch's logged loss averages the steps after the resume.
            assign_variables(self.model.metrics_variables, self.state["mid_epoch"]["metrics"])

    def on_train_batch_end(self, batch, logs=None):
        steps_done = self._skipped_steps + batch + 1
        if not self.every_steps or steps_done % self.every_steps or batch + 1 == self.params.get("steps"):
            return  # the epoch's last step is saved by on_epoch_end
        epoch = self._epoch + 1  # 1-based, as in the weights files' names and the history
        weights_file = f"epoch-{epoch:03d}-step-{steps_done:06d}.weights.h5"
        with atomic_path(self.checkpoint_dir / weights_file) as temporary:
            self.model.save_weights(temporary)
        previous = self.state["mid_epoch"]
        self.state["mid_epoch"] = {
            "epoch": epoch, "steps_done": steps_done, "weights_file": weights_file,
            "seconds": time.time() - self._epoch_started,
            "metrics": variable_values(self.model.metrics_variables),
            "random_state": variable_values(random_state_variables(self.model)),
            "callbacks": {type(callback).__name__: callback.checkpoint_state() for callback in self.tracked_callbacks}}
        write_json(self.state_path, self.state)
        if previous and previous["weights_file"] != weights_file:
            (self.checkpoint_dir / previous["weights_file"]).unlink(missing_ok=True)

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
        previous_mid_epoch = state["mid_epoch"]
        state["history"].append({"phase": state["phase"], "epoch": epoch + 1, **logs})
        state.update(epochs_done=epoch + 1, weights_file=weights_file, mid_epoch=None)
        if state["epochs_without_improvement"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        elif state["epochs_without_improvement"] and self.decays:
            self._decay_from_best(logs["learning_rate"])
        with atomic_path(self.checkpoint_dir / weights_file) as temporary:
            self.model.save_weights(temporary)  # where the next epoch starts (the best, after a decay)
        state["random_state"] = variable_values(random_state_variables(self.model))
        write_json(self.state_path, state)
        if previous_weights and previous_weights != weights_file:
            (self.checkpoint_dir / previous_weights).unlink(missing_ok=True)
        if previous_mid_epoch:
            (self.checkpoint_dir / previous_mid_epoch["weights_file"]).unlink(missing_ok=True)
        self._skipped_steps = 0
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


def random_state_variables(model: keras.Model) -> list:
    """The states of the model's random generators (dropout): not in a weights file, but a
    resumed run must draw the masks an uninterrupted run would."""
    return [variable for variable in model.variables if variable.path.endswith("seed_generator_state")]


def variable_values(variables) -> list[dict]:
    """[{"path", "dtype", "values"}] of small variables (loss sums, generator states), in
    order, for state.json. The path is for a reader: generators' names carry a counter of
    the process (seed_generator_7), so a restore matches by position."""
    return [{"path": variable.path, "dtype": str(variable.dtype), "values": np.asarray(variable.numpy()).tolist()}
            for variable in variables]


def assign_variables(variables, values: list[dict] | None) -> None:
    """Gives ``variables`` the values ``variable_values`` recorded from the same model, in the
    same order. None (a state from before the key existed) leaves them as they are."""
    if values is None:
        return
    variables = list(variables)
    shapes = [tuple(variable.shape) for variable in variables]
    saved_shapes = [np.shape(saved["values"]) for saved in values]
    if shapes != saved_shapes:
        raise RunError(f"the checkpoint holds variables of shapes {saved_shapes} ({[saved['path'] for saved in values]}), "
                       f"the model {shapes}; delete the checkpoint folder to start over")
    for variable, saved in zip(variables, values):
        variable.assign(np.asarray(saved["values"], dtype=saved["dtype"]))
