"""Compare experiments: train what has no finished run yet, then tabulate and plot the runs.

    compare([Path("experiments/shapes/conv_gru.toml"), Path("experiments/shapes/conv_lstm.toml")],
            out_dir=Path("runs/compare"), seeds=[0, 1, 2])

Each experiment file (a folder stands for its ``*.toml`` files) is resolved once per seed
and matched against the saved configs under ``runs_root``, ignoring their names (a name is
only a label): a finished run with that config is reused, an unfinished one is resumed, and
a config with no run is trained in a new run directory. A config that differs from a
finished run's only in ``[generation]`` (greedy vs beam search) is not trained again: that
run's weights are copied into a run directory of its own and evaluated with this config's
generation settings; its metrics.json names the run under ``weights_from`` and repeats that
run's training facts (epochs, training time, parameters). A config that differs from a
run's only in ``[self_critical]`` (1 epoch against 3, or 0 for the cross-entropy model) starts
from that run's finished phase 1, and its self-critical checkpoint when it is an earlier
state of this config's phase (training/reuse.py); its metrics.json names that run under
``phase_one_from``, and its training time counts the copied phase 1. ``out_dir`` then holds:

    compare.csv           one row per run; over several seeds one row per experiment, with
                          "mean ± std" strings and numeric <metric>_mean / <metric>_std columns
    compare.md            the same table in Markdown (without the numeric mean / std columns)
                          selection_bleu_4 / selection_cider: each run's scores on its early-stopping
                          images (``evaluate.selection_metrics``: train_tail for the shared Flickr8k),
                          and "chosen": the row with the best of those, so the pick never looks at
                          the reported split
                          selection_cider_vs_chosen: a row's selection CIDEr-D minus the chosen
                          row's, image by image, with a 95 % paired bootstrap interval over the
                          images (paired_bootstrap.py): an interval that holds 0 is no lead;
                          cider_vs_chosen: the same on the reported split, read after the choice
    compare_metrics.png   BLEU-1..4, CIDEr and the selection split's CIDEr (selection_cider) per row,
                          bars side by side (error bars: std over seeds)
    compare_curves.png    loss and validation loss per epoch of every trained run, overlaid
    compare_gradient_norms.png   when runs logged them (training.log_gradient_norms): the mean
                          first-epoch gradient norm of each encoder convolution, one line per row

The table's config columns are only the fields that differ between the compared configs.
The std over seeds is the sample standard deviation (ddof=1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd

from captioning.config import ConfigError, ExperimentConfig, flatten, load_config, to_dict
from captioning.evaluation.evaluate import evaluate_run, selection_captions_path, selection_metrics
from captioning.evaluation.paired_bootstrap import format_difference, paired_difference, per_image_scores
from captioning.files import atomic_path, write_json, write_text
from captioning.plots.curves import plot_layer_gradient_norms, plot_learning_curves, plot_metric_bars
from captioning.runs import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    RUNS_ROOT,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    is_finished,
    new_run_dir,
    saved_configs,
)
from captioning.training.gradients import mean_norm_per_layer
from captioning.training.loop import prepare_run_dir, train
from captioning.training.reuse import phase_one_source, start_from_phase_one
from captioning.validate import validate

# Caption metrics from metrics.json; the optional ones get a column only when some run has them.
# attention_entropy / attention_max_weight: an attention decoder's mean entropy (nats) and
# largest weight of its attention over the regions, on the reported split (attention_statistics.py).
METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "bleu_4_shuffled_images", "cider", "meteor", "rouge_l",
           "colour_accuracy", "shape_accuracy", "relation_accuracy", "attention_entropy", "attention_max_weight",
           "selection_bleu_4", "selection_cider"]
OPTIONAL_METRICS = {"cider", "meteor", "rouge_l", "colour_accuracy", "shape_accuracy", "relation_accuracy",
                    "attention_entropy", "attention_max_weight", "selection_bleu_4", "selection_cider"}
# What picks the best row (the "chosen" column): scores on each run's early-stopping images
# (selection_metrics), never on the reported split; CIDEr-D first, BLEU-4 when it is missing.
SELECTION_ORDER = ["selection_cider", "selection_bleu_4"]
# Each row's CIDEr-D against the chosen row's, image by image, with a paired bootstrap
# interval: on the selection images (what chooses), and on the reported split (read once,
# after the choice). Column: (the score it follows, the run's captions file with per-image CIDEr-D).
PAIRED_COLUMNS = {
    "selection_cider_vs_chosen": ("selection_cider",
                                  lambda run: selection_captions_path(run.run_dir, run.metrics["selection_split"])),
    "cider_vs_chosen": ("cider", lambda run: run.run_dir / f"captions_{run.config.training.evaluation_split}.csv"),
}
# evaluation_seconds (captioning and scoring the split) is where greedy and beam search differ.
RUN_FACTS = ["trainable_parameters", "training_seconds", "evaluation_seconds", "epochs", "best_epoch"]
# Copied with the weights into a run that reuses another's training (only [generation] differs).
TRAINING_FACTS = ["trainable_parameters", "training_seconds", "epochs", "best_epoch"]
# The reported split's scores, and the selection split's CIDEr-D, which chooses (SELECTION_ORDER).
PLOTTED_METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "selection_cider"]
# Where images and features are cached changes nothing that is learned; the name is the
# experiment column already.
NOT_COMPARED = {"name", "images.cache_dir", "images.feature_cache_dir", "images.cache"}
DECIMALS = {"training_seconds": 1, "evaluation_seconds": 1, "epochs": 1, "best_epoch": 1,
            "trainable_parameters": 0}  # metrics: 3


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
    configs = validated_configs(expand_experiments(experiment_paths), seeds, overrides)
    saved = saved_configs(runs_root)
    runs = []
    for index, config in configs:
        run_dir, metrics = run_or_reuse(config, runs_root, saved, verbose)
        selection = selection_metrics(run_dir)
        metrics = {**metrics, "selection_split": selection["split"],
                   **{f"selection_{name}": selection.get(name) for name in ("bleu_4", "cider")}}
        runs.append(ComparedRun(index, config, run_dir, metrics))

    aggregate = seeds is not None and len(seeds) > 1
    groups = [[run for run in runs if run.experiment_index == index] for index in sorted({run.experiment_index for run in runs})]
    groups = groups if aggregate else [[run] for run in runs]  # one group per table row
    table = seed_table(groups) if aggregate else run_table(runs)
    table = mark_chosen(table, aggregate)
    if "chosen" in table:
        chosen = table.loc[table["chosen"] == "yes", "experiment"].iloc[0]
        print(f"chosen on the early-stopping images ({runs[0].metrics['selection_split']}), not on the reported "
              f"split: {chosen}")
        table = add_paired_columns(table, groups)
    readable = table[[column for column in table if not column.endswith(("_mean", "_std"))]]
    write_text(out_dir / "compare.csv", table.to_csv(index=False))
    write_text(out_dir / "compare.md", markdown_table(readable))
    plots = plot_comparison(table, groups, out_dir, aggregate)
    print(markdown_table(readable), end="")
    print(f"wrote compare.csv, compare.md, {', '.join(plots)} to {out_dir}")
    return table


def validated_configs(experiments: list[Path], seeds: list[int] | None, overrides: list[str]) -> list[tuple[int, ExperimentConfig]]:
    """(experiment index, config) for every experiment file and seed, each loaded with the
    overrides and validated: a bad value in the last file fails before anything trains, and
    the error names that file."""
    configs = []
    for index, path in enumerate(experiments):
        for seed in seeds if seeds else [None]:
            seed_override = [f"training.seed={seed}"] if seed is not None else []
            config = load_config(path, list(overrides) + seed_override)
            try:
                validate(config)
            except ConfigError as error:
                raise ConfigError(f"{path}{f' (seed {seed})' if seed is not None else ''}: {error}") from None
            configs.append((index, config))
    return configs


def mark_chosen(table: pd.DataFrame, aggregate: bool) -> pd.DataFrame:
    """Adds the column "chosen": "yes" on the row with the best selection score (SELECTION_ORDER,
    the mean over seeds when ``aggregate``), "" elsewhere; the table as it was without any."""
    for name in SELECTION_ORDER:
        column = f"{name}_mean" if aggregate else name
        if column in table and table[column].notna().any():
            best = table[column].astype(float).idxmax()
            table = table.copy()
            table.insert(1, "chosen", ["yes" if index == best else "" for index in table.index])
            return table
    return table


def add_paired_columns(table: pd.DataFrame, groups: list[list[ComparedRun]]) -> pd.DataFrame:
    """Adds each PAIRED_COLUMNS column after the score it compares: each row's per-image CIDEr-D
    (mean over its seeds) minus the chosen row's, averaged over the images, with the 95 %
    paired bootstrap interval over those images (paired_bootstrap.py); empty on the chosen row.
    A lead whose interval holds 0 is one those images cannot resolve. A column is left out
    when some run has no per-image scores for it (the reason is printed)."""
    chosen = list(table["chosen"]).index("yes")
    for column, (score, captions_path) in PAIRED_COLUMNS.items():
        if score not in table:
            continue
        try:
            scored = [per_image_scores([captions_path(run) for run in group]) for group in groups]  # per row: (images, scores)
        except ValueError as error:  # a captions file missing, without per-image scores, or of other images
            print(f"no {column} column: {error}")
            continue
        cells = ["" if index == chosen else format_difference(*paired_difference(*scored[index], *scored[chosen]))
                 for index in range(len(groups))]
        table = table.copy()
        table.insert(list(table.columns).index(score) + 1, column, cells)
        print(f"{column}: a row's {score} minus the chosen row's, per image and averaged, [95 % paired "
              f"bootstrap interval over the images]; an interval that holds 0 is no difference")
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
    """The newest finished run of ``config`` is reused; else the newest finished run that differs
    only in [generation] is evaluated with this config's generation settings; else the newest
    unfinished run of ``config`` is resumed; else a new run starts from the newest run that
    differs only in [self_critical] and has finished phase 1 (reuse.py); else a new run is
    trained. Names are ignored throughout. Returns (run directory, metrics)."""
    wanted = to_dict(config)
    same = sorted(run_dir for run_dir, values in saved.items() if same_config(values, wanted))
    finished = [run_dir for run_dir in same if is_finished(run_dir)]
    trained = sorted(run_dir for run_dir, values in saved.items()
                     if same_config(values, wanted, ignored=("name", "generation")) and is_finished(run_dir))
    if finished:
        run_dir, action = finished[-1], "reused"
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    elif trained:
        unstarted = [run_dir for run_dir in same if not (run_dir / CHECKPOINT_DIR).exists()]  # no epoch to lose
        run_dir = unstarted[-1] if unstarted else new_run_dir(config, runs_root)
        run_config = under_saved_name(config, saved.setdefault(run_dir, wanted))
        metrics = evaluate_trained_weights(run_config, trained[-1], run_dir)
        action = f"evaluated the weights of {trained[-1]} in"
    elif not same and (source := phase_one_source(config, saved)) is not None:
        run_dir = new_run_dir(config, runs_root)
        run_config = under_saved_name(config, saved.setdefault(run_dir, wanted))
        start_from_phase_one(run_config, source, run_dir)
        metrics = train(run_config, run_dir, verbose)
        metrics["phase_one_from"] = str(source)
        write_json(run_dir / METRICS_FILE, metrics)
        action = f"trained from the finished phase 1 of {source} in"
    else:
        run_dir, action = (same[-1], "resumed") if same else (new_run_dir(config, runs_root), "trained")
        run_config = under_saved_name(config, saved.setdefault(run_dir, wanted))  # listed twice: reused
        metrics = train(run_config, run_dir, verbose)
    print(f"{config.name} (seed {config.training.seed}): {action} {run_dir}")
    return run_dir, metrics


def under_saved_name(config: ExperimentConfig, saved_values: dict) -> ExperimentConfig:
    """``config`` named as the run directory's saved config: a run checks its config before going on."""
    return dataclasses.replace(config, name=saved_values["name"])


def same_config(saved_values: dict, wanted: dict, ignored: tuple[str, ...] = ("name",)) -> bool:
    """Whether two configs (as ``to_dict`` gives them) are equal apart from the ``ignored`` top-level keys."""
    return all(saved_values.get(key) == value for key, value in wanted.items() if key not in ignored)


def evaluate_trained_weights(config: ExperimentConfig, trained_run: Path, run_dir: Path) -> dict:
    """``run_dir`` gets ``config``, ``trained_run``'s vocabulary and weights, and metrics.json from
    evaluating them with ``config.generation``; the training facts are ``trained_run``'s own."""
    prepare_run_dir(config, run_dir)
    for name in [VOCABULARY_FILE, WEIGHTS_FILE]:
        with atomic_path(run_dir / name) as temporary:
            shutil.copyfile(trained_run / name, temporary)
    trained_metrics = json.loads((trained_run / METRICS_FILE).read_text())
    facts = {name: trained_metrics.get(name) for name in TRAINING_FACTS}
    facts["weights_from"] = trained_metrics.get("weights_from", str(trained_run))  # the run that trained them
    return evaluate_run(run_dir, facts)


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
    """A GitHub Markdown table; metrics rounded (3 decimals), config values (dotted columns such as
    ``training.learning_rate``) as written, so 5e-4 does not print as 0.001; missing values empty."""
    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:g}" if "." in column else f"{value:.{DECIMALS.get(column, 3)}f}"
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


def plot_comparison(table: pd.DataFrame, groups: list[list[ComparedRun]], out_dir: Path, aggregate: bool) -> list[str]:
    """compare_metrics.png, compare_curves.png and, when some run logged its gradient norms,
    compare_gradient_norms.png; ``groups[i]`` are the runs behind table row i. Returns the file names written."""
    labels = list(table["experiment"])
    if len(set(labels)) < len(labels):  # one experiment under several seeds, or listed twice
        labels = [f"{label} (seed {group[0].config.training.seed})" for label, group in zip(labels, groups)]
    def numbers(column: str) -> list[float]:  # a run without a selection split has None there
        return [float("nan") if value is None else float(value) for value in table[column]]

    plotted = [name for name in PLOTTED_METRICS if name in table]
    values = {name: numbers(f"{name}_mean" if aggregate else name) for name in plotted}
    errors = {name: numbers(f"{name}_std") for name in plotted} if aggregate else None
    splits = sorted({run.config.training.evaluation_split for group in groups for run in group})
    title = f"{' / '.join(splits)} split scores"
    if any(value == value for value in values.get("selection_cider", [])):
        selection_splits = sorted({str(run.metrics.get("selection_split")) for group in groups for run in group})
        title += f", selection_cider on {' / '.join(selection_splits)} (it chooses)"
    plot_metric_bars(labels, values, out_dir / "compare_metrics.png", errors=errors,
                     title=title + (" (mean ± std over seeds)" if aggregate else ""))
    histories = {label: [read_history(run.run_dir) for run in group] for label, group in zip(labels, groups)}
    plot_learning_curves(histories, out_dir / "compare_curves.png")
    written = ["compare_metrics.png", "compare_curves.png"]
    norms = {label: mean_norm_per_layer([run.run_dir for run in group]) for label, group in zip(labels, groups)}
    norms = {label: layers for label, layers in norms.items() if layers}
    gradient_plot = out_dir / "compare_gradient_norms.png"
    if norms:
        plot_layer_gradient_norms(norms, gradient_plot)
        written.append(gradient_plot.name)
    else:
        gradient_plot.unlink(missing_ok=True)  # an earlier comparison's plot would describe other runs
    return written
