"""Start a run from another run's finished phase 1 when the two configs differ only in [self_critical].

Phase 1 (cross-entropy on the cached features) does not read ``[self_critical]``: a run with
``self_critical.epochs = 3`` trains exactly the phase 1 of the same config with 1 epoch, or
with 0, and the first self-critical epochs of both are the same too (each epoch is seeded by
``training.seed`` and its number). So ``make compare`` (compare.run_or_reuse) gives a new
config of that kind a run directory that starts where such a run stands, and ``train``
resumes it as it would resume an interrupted run:

    source = phase_one_source(config, saved)               # the newest such run, or None
    start_from_phase_one(config, source, run_dir)          # config, vocabulary, checkpoints
    train(config, run_dir)                                 # the rest: self-critical epochs, evaluation

What is copied: the vocabulary, ``history.csv`` and phase 1's checkpoint (its state, last
and best weights); and the self-critical checkpoint and history when the source's phase
used the same settings and generation and has done no more epochs than ``config`` asks
for (it is then an earlier state of this run's own phase). Every file is copied
atomically and each checkpoint's state file last, so an interrupted copy leaves a run that
trains that phase again rather than one that names missing files. ``make train`` never
does this: a run it starts trains from the beginning.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from captioning.config import ExperimentConfig, to_dict
from captioning.files import atomic_path
from captioning.runs import CHECKPOINT_DIR, HISTORY_FILE, VOCABULARY_FILE, load_run_config
from captioning.training.checkpoints import STATE_FILE
from captioning.training.loop import BEST_WEIGHTS_FILE, prepare_run_dir
from captioning.training.self_critical import HISTORY_FILE as SELF_CRITICAL_HISTORY_FILE
from captioning.training.self_critical import SELF_CRITICAL_DIR

# Top-level config sections a run may differ in from the run whose phase 1 it starts from.
NOT_IN_PHASE_ONE = ("name", "self_critical")


def phase_one_finished(run_dir: Path, config_values: dict) -> bool:
    """Whether ``run_dir``'s phase 1 has ended (stopped early, or all training.epochs done)
    with no later phase of its own (no fine-tuning)."""
    state_path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    if not state_path.is_file() or config_values["encoder"]["fine_tune_layers"]:
        return False
    state = json.loads(state_path.read_text())
    ended = state.get("stopped_early") or state.get("epochs_done", 0) >= config_values["training"]["epochs"]
    return state.get("phase", 1) == 1 and bool(ended) and not state.get("mid_epoch")


def phase_one_source(config: ExperimentConfig, saved: dict[Path, dict]) -> Path | None:
    """The newest run (``saved``: run directory -> its config as a dict) whose config differs
    from ``config`` only in NOT_IN_PHASE_ONE and whose phase 1 has ended; None if there is none
    or ``config`` fine-tunes its encoder (a second phase)."""
    wanted = to_dict(config)
    if config.encoder.fine_tune_layers:
        return None
    sources = sorted(run_dir for run_dir, values in saved.items()
                     if all(values.get(key) == value for key, value in wanted.items() if key not in NOT_IN_PHASE_ONE)
                     and phase_one_finished(run_dir, values))
    return sources[-1] if sources else None


def copy_file(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)


def copy_checkpoint(source_dir: Path, destination_dir: Path, weights_files: list[str]) -> None:
    """The named weights files, then the state file (what makes the checkpoint exist)."""
    for name in dict.fromkeys(weights_files):  # the last and the best may be one name
        copy_file(source_dir / name, destination_dir / name)
    copy_file(source_dir / STATE_FILE, destination_dir / STATE_FILE)


def continues_self_critical(config: ExperimentConfig, source: Path) -> bool:
    """Whether ``source``'s self-critical checkpoint is an earlier state of ``config``'s phase:
    the same settings and generation, and no more epochs done than ``config`` asks for."""
    state_path = source / CHECKPOINT_DIR / SELF_CRITICAL_DIR / STATE_FILE
    if config.self_critical.epochs == 0 or not state_path.is_file():
        return False
    source_config = load_run_config(source)
    same_settings = (dataclasses.replace(source_config.self_critical, epochs=0)
                     == dataclasses.replace(config.self_critical, epochs=0))
    epochs_done = json.loads(state_path.read_text()).get("epochs_done", 0)
    return same_settings and source_config.generation == config.generation and epochs_done <= config.self_critical.epochs


def start_from_phase_one(config: ExperimentConfig, source: Path, run_dir: Path) -> None:
    """``run_dir`` gets ``config`` and ``source``'s vocabulary, history and phase 1 checkpoint,
    and its self-critical checkpoint when it continues into this config's (module docstring)."""
    prepare_run_dir(config, run_dir)
    checkpoint, source_checkpoint = run_dir / CHECKPOINT_DIR, source / CHECKPOINT_DIR
    for name in [VOCABULARY_FILE, HISTORY_FILE]:
        copy_file(source / name, run_dir / name)
    state = json.loads((source_checkpoint / STATE_FILE).read_text())
    copy_checkpoint(source_checkpoint, checkpoint, [state["weights_file"], BEST_WEIGHTS_FILE])
    if continues_self_critical(config, source):
        folder = source_checkpoint / SELF_CRITICAL_DIR
        scst_state = json.loads((folder / STATE_FILE).read_text())
        weights = [scst_state["weights_file"]] + ([BEST_WEIGHTS_FILE] if (folder / BEST_WEIGHTS_FILE).is_file() else [])
        copy_file(source / SELF_CRITICAL_HISTORY_FILE, run_dir / SELF_CRITICAL_HISTORY_FILE)
        copy_checkpoint(folder, checkpoint / SELF_CRITICAL_DIR, weights)
