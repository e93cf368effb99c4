"""Run directories: where a training run keeps its config, vocabulary, weights and results.

    runs/20261127-101500-shapes_conv_gru/
      config.toml            the resolved config (defaults + experiment + overrides)
      vocabulary.json        token list
      model.weights.h5       best weights (lowest validation loss)
      checkpoint/            last finished epoch: weights + optimizer state + progress
      history.csv            loss and validation loss per epoch
      gradient_norms.csv     with training.log_gradient_norms: encoder convolutions' gradient norms, first epoch
      metrics.json           BLEU-1..4, METEOR, ROUGE-L, CIDEr-D on the test split; BLEU-4 with shuffled images
"""

from __future__ import annotations

import time
from pathlib import Path

from captioning.config import ConfigError, ExperimentConfig, flatten, load_config, to_dict

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.toml"
VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "model.weights.h5"
CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"


class RunError(ValueError):
    """A run directory is missing, incomplete, or does not match the requested config."""


def new_run_dir(config: ExperimentConfig, runs_root: Path = RUNS_ROOT) -> Path:
    """A new, empty run directory ``<runs_root>/<time stamp>-<config name>[-<n>]``, created
    here: the name is claimed by ``mkdir``, which fails when the name is taken, so runs that
    two processes start in the same second (two ``make compare`` at once) get two directories.
    Checking the name and creating it later let both train into one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        run_dir = runs_root / (f"{stamp}-{config.name}" + (f"-{suffix}" if suffix > 1 else ""))
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1


def run_dirs(runs_root: Path = RUNS_ROOT) -> list[Path]:
    """Run directories (those holding a config), oldest first by name (names start with a timestamp)."""
    if not runs_root.is_dir():
        return []
    return sorted(path for path in runs_root.iterdir() if (path / CONFIG_FILE).is_file())


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file()


def latest_run(runs_root: Path = RUNS_ROOT) -> Path:
    """The newest run directory with trained weights."""
    candidates = [path for path in run_dirs(runs_root) if (path / WEIGHTS_FILE).is_file()]
    if not candidates:
        raise RunError(f"no trained run under {runs_root}/: run 'make train' first, or pass RUN=path/to/run")
    return candidates[-1]


def saved_configs(runs_root: Path = RUNS_ROOT) -> dict[Path, dict]:
    """Every run directory under ``runs_root`` -> its saved config as a dict, oldest first."""
    saved = {}
    for run_dir in run_dirs(runs_root):
        try:
            saved[run_dir] = to_dict(load_run_config(run_dir))
        except ConfigError:
            continue  # written by another version of config.py: cannot equal a config resolved now
    return saved


def unfinished_run_with_config(config: ExperimentConfig, runs_root: Path = RUNS_ROOT) -> Path | None:
    """The newest unfinished run whose saved config equals ``config`` (an interrupted `make train`)."""
    wanted = to_dict(config)
    matches = [run_dir for run_dir, values in saved_configs(runs_root).items()
               if values == wanted and not is_finished(run_dir)]
    return matches[-1] if matches else None


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return load_config(path, overrides)


def config_differences(saved: ExperimentConfig, requested: ExperimentConfig) -> list[str]:
    """``["decoder.units: 512 -> 256", ...]`` for every field that differs."""
    saved_values, requested_values = flatten(to_dict(saved)), flatten(to_dict(requested))
    return [f"{key}: {value!r} -> {requested_values[key]!r}" for key, value in saved_values.items()
            if value != requested_values[key]]
