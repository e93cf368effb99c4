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

This module is the run loop: it owns the run directory (config, vocabulary, checkpoints,
weights, metrics) and runs the phases in order; phases.py trains each one, on what
training_data.py provides. With ``encoder.fine_tune_layers`` = N > 0 a run has two phases:

    phase 1  training.epochs   decoder on the frozen backbone's cached features
    phase 2  fine_tune.epochs  encoder + decoder on images, from phase 1's best weights;
                               the top N backbone layers unfrozen (batch norm frozen), at
                               fine_tune.learning_rate

Each phase has its own checkpoint (``checkpoint/`` and ``checkpoint/fine_tune/``), early
stopping and best weights, so an interrupted run resumes in the phase it was in.
"""

from __future__ import annotations

from pathlib import Path

import keras

from captioning.config import ExperimentConfig, to_toml
from captioning.data.pipeline import ImageReader
from captioning.data.splits import training_and_stopping_examples
from captioning.data.vocabulary import Vocabulary
from captioning.evaluation.evaluate import evaluate_run
from captioning.files import atomic_path, write_text
from captioning.models.caption_model import build_model
from captioning.models.encoders import normalization_for
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
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.distribution import build_strategy, current_worker
from captioning.training.phases import parameter_count, self_critical_phase, train_phase_one, train_phase_two
from captioning.training.training_data import TrainingData
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


def export_model(config: ExperimentConfig, trained_model, vocabulary: Vocabulary, path: Path) -> None:
    """Saves encoder + decoder weights; a decoder trained on cached features gets its encoder back."""
    if trained_model.encoder is None:
        full_model = build_model(config, vocabulary.size)
        full_model.decoder.set_weights(trained_model.decoder.get_weights())
    else:
        full_model = trained_model
    with atomic_path(path) as temporary:
        full_model.save_weights(temporary)


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


def training_facts(phases: list, model) -> dict:
    """What metrics.json records about the training beside the scores: whole-run totals and,
    per phase, its epochs, time and best epoch. phases: (TrainingCheckpoint, learning rate) pairs."""
    last = phases[-1][0].state
    return {"epochs": last["epochs_done"], "best_epoch": last["best_epoch"],
            "training_seconds": round(sum(checkpoint.state["training_seconds"] for checkpoint, _ in phases), 1),
            "trainable_parameters": parameter_count(model.trainable_weights),
            "phases": [phase_summary(checkpoint, learning_rate) for checkpoint, learning_rate in phases]}

