"""Compare experiments: train what has no finished run yet, then tabulate and plot the runs.

    compare([Path("experiments/shapes_conv_gru.toml"), Path("experiments/shapes_conv_lstm.toml")],
            out_dir=Path("runs/compare"), seeds=[0, 1, 2])

Each experiment file (a folder stands for its ``*.toml`` files) is resolved once per seed
and matched against the saved configs under ``runs_root``: a finished run with exactly that
config is reused, an unfinished one is resumed, and a config with no run is trained in a
new run directory. ``out_dir`` then holds:

    compare.csv           one row per run; over several seeds one row per experiment, with
                          "mean ± std" strings and numeric <metric>_mean / <metric>_std columns
    compare.md            the same table in Markdown (without the numeric mean / std columns)
    compare_metrics.png   BLEU-1..4 and CIDEr per row, bars side by side (error bars: std over seeds)
    compare_curves.png    loss and validation loss per epoch of every run, overlaid

The table's config columns are only the fields that differ between the compared configs.
The std over seeds is the sample standard deviation (ddof=1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from captioning.config import ConfigError, ExperimentConfig, flatten, load_config, to_dict
from captioning.files import write_text
from captioning.plots import plot_learning_curves, plot_metric_bars
from captioning.runs import HISTORY_FILE, METRICS_FILE, RUNS_ROOT, is_finished, new_run_dir, saved_configs
from captioning.train import train

# Caption metrics from metrics.json; the optional ones get a column only when some run has them.
METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "bleu_4_shuffled_images", "cider", "meteor", "rouge_l"]
OPTIONAL_METRICS = {"cider", "meteor", "rouge_l"}
RUN_FACTS = ["trainable_parameters", "training_seconds", "epochs", "best_epoch"]
PLOTTED_METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"]
# Where images and features are cached changes nothing that is learned; the name is the
# experiment column already.
NOT_COMPARED = {"name", "images.cache_dir", "images.feature_cache_dir", "images.cache"}
DECIMALS = {"training_seconds": 1, "epochs": 1, "best_epoch": 1, "trainable_parameters": 0}  # metrics: 3


@dataclasses.dataclass
class ComparedRun:
    experiment_index: int  # position of the experiment file in the compared list
    config: ExperimentConfig
    run_dir: Path
    metrics: dict


def compare(experiment_paths, out_dir: str | Path, runs_root: str | Path = RUNS_ROOT, seeds: list[int] | None = None,
            overrides: list[str] = (), verbose: int | str = 0) -> pd.DataFrame:
    """Trains, resumes or reuses a run for every experiment and seed; writes and returns the table.

    experiment_paths: TOML files, or folders whose ``*.toml`` files are taken in name order.
    seeds: ``training.seed`` values to repeat every experiment with (default: each config's own).
    overrides: ``section.field=value`` applied to every experiment before the seed.
    """
    out_dir, runs_root = Path(out_dir), Path(runs_root)
    saved = saved_configs(runs_root)
    runs = []
    for index, path in enumerate(expand_experiments(experiment_paths)):
        for seed in seeds if seeds else [None]:
            seed_override = [f"training.seed={seed}"] if seed is not None else []
            config = load_config(path, list(overrides) + seed_override)
            run_dir, metrics = run_or_reuse(config, runs_root, saved, verbose)
            runs.append(ComparedRun(index, config, run_dir, metrics))

    aggregate = seeds is not None and len(seeds) > 1
    groups = [[run for run in runs if run.experiment_index == index] for index in sorted({run.experiment_index for run in runs})]
    groups = groups if aggregate else [[run] for run in runs]  # one group per table row
    table = seed_table(groups) if aggregate else run_table(runs)
    readable = table[[column for column in table if not column.endswith(("_mean", "_std"))]]
    write_text(out_dir / "compare.csv", table.to_csv(index=False))
    write_text(out_dir / "compare.md", markdown_table(readable))
    plot_comparison(table, groups, out_dir, aggregate)
    print(markdown_table(readable), end="")
    print(f"wrote compare.csv, compare.md, compare_metrics.png and compare_curves.png to {out_dir}")
    return table


def expand_experiments(paths) -> list[Path]:
    """Files as given; a folder becomes its ``*.toml`` files, sorted by name."""
    experiments = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise ConfigError(f"{path}: folder holds no experiment (*.toml) files")
            experiments.extend(found)
        else:
            experiments.append(path)
    if not experiments:
        raise ConfigError("no experiments to compare")
    return experiments


def run_or_reuse(config: ExperimentConfig, runs_root: Path, saved: dict[Path, dict], verbose) -> tuple[Path, dict]:
    """The newest finished run with exactly ``config`` is reused, else the newest unfinished one
    is resumed, else a new run is trained. Returns (run directory, metrics)."""
    matches = sorted(run_dir for run_dir, values in saved.items() if values == to_dict(config))
    finished = [run_dir for run_dir in matches if is_finished(run_dir)]
    if finished:
        run_dir, action = finished[-1], "reused"
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    else:
        run_dir, action = (matches[-1], "resumed") if matches else (new_run_dir(config, runs_root), "trained")
        saved[run_dir] = to_dict(config)  # the same experiment listed twice reuses this run
        metrics = train(config, run_dir, verbose)
    print(f"{config.name} (seed {config.training.seed}): {action} {run_dir}")
    return run_dir, metrics


def differing_fields(configs: list[ExperimentConfig], ignored: set[str] = NOT_COMPARED) -> list[str]:
    """Dotted names of the config fields whose value is not the same in all ``configs``."""
    flat = [flatten(to_dict(config)) for config in configs]
    return [key for key in flat[0] if key not in ignored and any(values[key] != flat[0][key] for values in flat[1:])]


def metric_columns(runs: list[ComparedRun]) -> list[str]:
    return [name for name in METRICS if name not in OPTIONAL_METRICS or any(name in run.metrics for run in runs)]


def run_table(runs: list[ComparedRun]) -> pd.DataFrame:
    """One row per run: experiment, differing config fields, metrics, parameters, time, run directory."""
    fields, metrics = differing_fields([run.config for run in runs]), metric_columns(runs)
    rows = []
    for run in runs:
        flat = flatten(to_dict(run.config))
        row = {"experiment": run.config.name}
        row.update({field: cell_value(flat[field]) for field in fields})
        row.update({name: run.metrics.get(name) for name in metrics + RUN_FACTS})
        row["run"] = str(run.run_dir)
        rows.append(row)
    table = pd.DataFrame(rows)
    table[metrics + RUN_FACTS] = table[metrics + RUN_FACTS].apply(pd.to_numeric, errors="coerce")  # None -> NaN
    return table


def seed_table(groups: list[list[ComparedRun]]) -> pd.DataFrame:
    """One row per experiment (group of runs over seeds): "mean ± std" strings, plus numeric mean and std columns."""
    runs = [run for group in groups for run in group]
    per_run = run_table(runs)
    fields = differing_fields([run.config for run in runs], NOT_COMPARED | {"training.seed"})
    columns = metric_columns(runs) + RUN_FACTS
    rows, numbers, start = [], [], 0
    for group in groups:
        group_rows, start = per_run.iloc[start:start + len(group)], start + len(group)
        first = group_rows.iloc[0]
        row = {"experiment": first["experiment"], "seeds": " ".join(str(run.config.training.seed) for run in group)}
        row.update({field: first[field] for field in fields})
        number = {}
        for name in columns:
            if name == "trainable_parameters":  # the same for every seed
                row[name] = first[name]
                continue
            mean, std = group_rows[name].mean(), group_rows[name].std()  # NaN when every run lacks the metric
            decimals = DECIMALS.get(name, 3)
            row[name] = "" if math.isnan(mean) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"
            number.update({f"{name}_mean": mean, f"{name}_std": std})
        row["run"] = " ".join(group_rows["run"])
        rows.append(row)
        numbers.append(number)
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(numbers)], axis=1)


def cell_value(value):
    """Config values as table cells: lists become their TOML-like text."""
    return str(value) if isinstance(value, list) else value


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; floats rounded (3 decimals for metrics), missing values empty."""
    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.{DECIMALS.get(column, 3)}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(column, value) for column, value in zip(table.columns, row)) + " |")
    return "\n".join(lines) + "\n"


def read_history(run_dir: Path) -> list[dict]:
    """history.csv as ``[{"epoch": 1, "loss": ..., "val_loss": ...}, ...]``; empty before the first epoch."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with open(path) as handle:
        # A run resumed across versions may leave a column empty in its older rows (phase).
        return [{name: float(value) for name, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def plot_comparison(table: pd.DataFrame, groups: list[list[ComparedRun]], out_dir: Path, aggregate: bool) -> None:
    """compare_metrics.png and compare_curves.png; ``groups[i]`` are the runs behind table row i."""
    labels = list(table["experiment"])
    if len(set(labels)) < len(labels):  # one experiment under several seeds, or listed twice
        labels = [f"{label} (seed {group[0].config.training.seed})" for label, group in zip(labels, groups)]
    plotted = [name for name in PLOTTED_METRICS if name in table]
    if aggregate:
        values = {name: list(table[f"{name}_mean"]) for name in plotted}
        errors = {name: list(table[f"{name}_std"]) for name in plotted}
    else:
        values, errors = {name: list(table[name]) for name in plotted}, None
    plot_metric_bars(labels, values, out_dir / "compare_metrics.png", errors=errors,
                     title="test metrics" + (" (mean ± std over seeds)" if aggregate else ""))
    histories = {label: [read_history(run.run_dir) for run in group] for label, group in zip(labels, groups)}
    plot_learning_curves(histories, out_dir / "compare_curves.png")
