"""End to end: compare() trains two tiny experiments, tabulates and plots them, then reuses,
resumes and repeats over seeds without training anything twice."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import quietly, tiny_config, write_experiment
from PIL import Image

from captioning.captioner import Captioner
from captioning.cli import main, parse_arguments
from captioning.config import ConfigError, load_config, to_dict
from captioning.evaluation import coco_metrics
from captioning.evaluation.evaluate import evaluate_captioner, selection_metrics
from captioning.reports.compare import compare, expand_experiments, markdown_table
from captioning.runs import is_finished, load_run_config, run_dirs

COMPARED_VALUES = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "bleu_4_shuffled_images", "cider", "meteor", "rouge_l",
                   "colour_accuracy", "shape_accuracy", "relation_accuracy", "trainable_parameters",
                   "training_seconds", "evaluation_seconds", "epochs", "best_epoch"]
SELECTION_VALUES = ["selection_bleu_4", "selection_cider"]


@pytest.fixture(scope="module", autouse=True)
def meteor_without_java():
    """A fixed METEOR score: the real jar takes about 10 s to start for every evaluation."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coco_metrics, "meteor_score", lambda references, hypotheses: 0.25)
        yield


@pytest.fixture(scope="module")
def compared(tmp_path_factory, meteor_without_java):
    """Two tiny experiments differing only in decoder.cell, compared once (both trained)."""
    root = tmp_path_factory.mktemp("compare")
    experiments = [write_experiment(root / "tiny_gru.toml", root, "decoder.cell=gru"),
                   write_experiment(root / "tiny_lstm.toml", root, "decoder.cell=lstm")]
    table, printed = quietly(compare, experiments, root / "out", runs_root=root / "runs")
    return SimpleNamespace(root=root, experiments=experiments, table=table, printed=printed)


def copy_of_runs(compared, tmp_path):
    """A copy of the compared runs, for tests that change or add runs."""
    runs_root = tmp_path / "runs"
    shutil.copytree(compared.root / "runs", runs_root)
    return runs_root


@pytest.mark.slow
def test_compare_trains_each_experiment_and_writes_table_and_plots(compared):
    assert compared.printed.count(": trained ") == 2, compared.printed
    out = compared.root / "out"
    for name in ["compare_metrics.png", "compare_curves.png"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    saved = pd.read_csv(out / "compare.csv")
    assert list(saved["experiment"]) == ["tiny_gru", "tiny_lstm"]
    markdown = (out / "compare.md").read_text().splitlines()
    assert markdown[0].startswith("| experiment | chosen | decoder.cell |") and len(markdown) == 2 + 2


@pytest.mark.slow
def test_table_shows_only_the_fields_that_differ(compared):
    table = compared.table
    assert len(table) == 2
    assert list(table["decoder.cell"]) == ["gru", "lstm"]
    for same in ["decoder.units", "training.seed", "training.epochs", "data.root", "images.cache_dir", "name"]:
        assert same not in table.columns


@pytest.mark.slow
def test_table_values_are_each_runs_own_metrics(compared):
    """The issue's columns (the differing config fields, BLEU-1..4, CIDEr, parameters, training
    time) and the rest, each equal to what the run's own metrics.json and config.toml say."""
    assert list(compared.table.columns) == ["experiment", "chosen", "decoder.cell", *COMPARED_VALUES[:6],
                                            "cider_vs_chosen", *COMPARED_VALUES[6:11], *SELECTION_VALUES,
                                            "selection_cider_vs_chosen", *COMPARED_VALUES[11:], "run"]
    saved = pd.read_csv(compared.root / "out" / "compare.csv")
    for row, saved_row in zip(compared.table.to_dict("records"), saved.to_dict("records")):
        run_dir = Path(row["run"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for name in COMPARED_VALUES:
            assert row[name] == pytest.approx(metrics[name]), name
            assert saved_row[name] == pytest.approx(metrics[name]), name
        assert metrics["trainable_parameters"] > 0 and metrics["training_seconds"] > 0
        assert load_run_config(run_dir).decoder.cell == row["decoder.cell"] == saved_row["decoder.cell"]


@pytest.mark.slow
def test_the_best_row_is_chosen_on_the_early_stopping_images_not_the_reported_split(compared):
    """selection_*: each run's scores on its early-stopping split (val here; the reported split is
    test), the same as evaluating that split directly; "chosen" marks the best selection CIDEr-D."""
    for row in compared.table.to_dict("records"):
        selection = json.loads((Path(row["run"]) / "metrics_selection.json").read_text())
        assert selection["split"] == "val" and selection["images"] == 16
        direct, _ = evaluate_captioner(Captioner.from_run(row["run"]), "val", progress=False)
        assert row["selection_cider"] == pytest.approx(direct["cider"]) == pytest.approx(selection["cider"])
        assert row["selection_bleu_4"] == pytest.approx(direct["bleu_4"])
    best = compared.table["selection_cider"].idxmax()
    assert list(compared.table["chosen"]) == ["yes" if index == best else "" for index in compared.table.index]
    assert "chosen on the early-stopping images (val)" in compared.printed


@pytest.mark.slow
def test_each_row_is_compared_with_the_chosen_one_image_by_image(compared, tmp_path):
    """selection_cider_vs_chosen: the row's selection CIDEr-D minus the chosen row's (the mean of
    the per-image differences in captions_selection_val.csv) and the paired bootstrap interval
    around it; empty on the chosen row. cider_vs_chosen: the same on the reported split
    (captions_test.csv). Over seeds, a row's per-image scores are its seeds' mean."""
    def numbers(cell: str) -> tuple[float, float, float]:  # "+0.018 [+0.006, +0.030]"
        return tuple(float(number) for number in cell.replace("[", "").replace("]", "").replace(",", "").split())

    table = compared.table
    chosen = table.index[table["chosen"] == "yes"][0]
    other = 1 - chosen
    for score, column, captions_file in [("selection_cider", "selection_cider_vs_chosen", "captions_selection_val.csv"),
                                         ("cider", "cider_vs_chosen", "captions_test.csv")]:
        for row in table.to_dict("records"):
            captions = pd.read_csv(Path(row["run"]) / captions_file)
            assert len(captions) == 16 and captions["cider"].mean() == pytest.approx(row[score], abs=1e-5)
        assert table.loc[chosen, column] == ""
        mean, low, high = numbers(table.loc[other, column])
        assert mean == pytest.approx(table.loc[other, score] - table.loc[chosen, score], abs=1e-3) and low <= mean <= high
        assert column in (compared.root / "out" / "compare.md").read_text().splitlines()[0].split(" | ")
    assert numbers(table.loc[other, "selection_cider_vs_chosen"])[0] <= 0  # the chosen row has the best
    # two seeds of one experiment against the other: one row each, compared on the seeds' mean
    runs_root = copy_of_runs(compared, tmp_path)
    seeded, _ = quietly(compare, compared.experiments, tmp_path / "out", runs_root=runs_root, seeds=[0, 1])
    pick = seeded.index[seeded["chosen"] == "yes"][0]
    mean = numbers(seeded.loc[1 - pick, "selection_cider_vs_chosen"])[0]
    lead = seeded.loc[1 - pick, "selection_cider_mean"] - seeded.loc[pick, "selection_cider_mean"]
    assert mean == pytest.approx(lead, abs=1e-3)


@pytest.mark.slow
def test_runs_scored_before_per_image_scores_get_no_paired_column(compared, tmp_path):
    """A run whose captions file has no per-image CIDEr-D (evaluated by older code) leaves that
    comparison's column out, saying why, and keeps the other."""
    runs_root = copy_of_runs(compared, tmp_path)
    captions_path = runs_root / Path(compared.table.loc[0, "run"]).name / "captions_test.csv"
    pd.read_csv(captions_path).drop(columns="cider").to_csv(captions_path, index=False)
    table, printed = quietly(compare, compared.experiments, tmp_path / "out", runs_root=runs_root)
    assert "cider_vs_chosen" not in table and "selection_cider_vs_chosen" in table
    assert f"no cider_vs_chosen column: {captions_path}: no 'cider' column" in printed, printed


@pytest.mark.slow
def test_second_compare_reuses_finished_runs(compared, tmp_path):
    before = run_dirs(compared.root / "runs")
    table, printed = quietly(compare, compared.experiments, tmp_path / "out", runs_root=compared.root / "runs")
    assert run_dirs(compared.root / "runs") == before
    assert printed.count(": reused ") == 2 and "trained" not in printed, printed
    assert list(table["run"]) == list(compared.table["run"])


@pytest.mark.slow
def test_unfinished_run_is_resumed_not_duplicated(compared, tmp_path):
    runs_root = copy_of_runs(compared, tmp_path)
    interrupted = next(run_dir for run_dir in run_dirs(runs_root) if run_dir.name.endswith("tiny_gru"))
    (interrupted / "metrics.json").unlink()
    (interrupted / "model.weights.h5").unlink()
    before = run_dirs(runs_root)
    table, printed = quietly(compare, compared.experiments, tmp_path / "out", runs_root=runs_root)
    assert f"tiny_gru (seed 0): resumed {interrupted}" in printed and ": reused " in printed, printed
    assert run_dirs(runs_root) == before and is_finished(interrupted)
    assert table.loc[0, "run"] == str(interrupted)


@pytest.mark.slow
def test_a_config_is_matched_whatever_its_name(compared, tmp_path):
    """The name is a label: a file with another name but the same config reuses the finished run,
    and resumes an unfinished one under the name it was started with."""
    renamed = write_experiment(tmp_path / "renamed_gru.toml", compared.root, "decoder.cell=gru")
    table, printed = quietly(compare, [renamed], tmp_path / "out", runs_root=compared.root / "runs")
    assert table.loc[0, "run"] == compared.table.loc[0, "run"] and "renamed_gru (seed 0): reused" in printed, printed

    runs_root = copy_of_runs(compared, tmp_path)
    interrupted = next(run_dir for run_dir in run_dirs(runs_root) if run_dir.name.endswith("tiny_gru"))
    (interrupted / "metrics.json").unlink()
    table, printed = quietly(compare, [renamed], tmp_path / "out", runs_root=runs_root)
    assert f"renamed_gru (seed 0): resumed {interrupted}" in printed, printed
    assert is_finished(interrupted) and load_run_config(interrupted).name == "tiny_gru"
    assert table.loc[0, "experiment"] == "renamed_gru"


@pytest.mark.slow
def test_a_config_differing_only_in_generation_evaluates_the_trained_weights(compared, tmp_path):
    """Greedy vs beam without retraining: the beam config gets a run directory of its own with the
    greedy run's weights, scored with beam search, and the greedy run's training facts."""
    runs_root = copy_of_runs(compared, tmp_path)
    greedy_run = next(run_dir for run_dir in run_dirs(runs_root) if run_dir.name.endswith("tiny_gru"))
    beam = write_experiment(tmp_path / "tiny_gru_beam.toml", compared.root, "decoder.cell=gru",
                            "generation.sampler=beam", "generation.beam_width=2")
    table, printed = quietly(compare, [compared.experiments[0], beam], tmp_path / "out", runs_root=runs_root)
    assert "trained" not in printed and f"tiny_gru_beam (seed 0): evaluated the weights of {greedy_run} in" in printed
    assert list(table["generation.sampler"]) == ["greedy", "beam"]
    assert list(table["generation.beam_width"]) == [3, 2]
    beam_run = Path(table.loc[1, "run"])
    assert beam_run != greedy_run and is_finished(beam_run) and not (beam_run / "checkpoint").exists()
    assert to_dict(load_run_config(beam_run)) == to_dict(load_config(beam))
    assert (beam_run / "model.weights.h5").read_bytes() == (greedy_run / "model.weights.h5").read_bytes()

    greedy_metrics, beam_metrics = (json.loads(Path(run, "metrics.json").read_text()) for run in [greedy_run, beam_run])
    assert beam_metrics["weights_from"] == str(greedy_run)
    for name in ["trainable_parameters", "training_seconds", "epochs", "best_epoch"]:
        assert beam_metrics[name] == greedy_metrics[name] == table.loc[1, name], name
    # the scores are those of the greedy run's weights decoded with the beam config's generation
    expected, _ = evaluate_captioner(Captioner.from_run(greedy_run, ["generation.sampler=beam", "generation.beam_width=2"]),
                                     "test", progress=False)
    for name in ["bleu_1", "bleu_4", "cider"]:
        assert beam_metrics[name] == pytest.approx(expected[name]) and table.loc[1, name] == pytest.approx(expected[name])

    again, printed = quietly(compare, [beam], tmp_path / "out", runs_root=runs_root)
    assert printed.count(": reused ") == 1 and again.loc[0, "run"] == str(beam_run), printed


@pytest.mark.slow
def test_every_config_is_read_before_anything_trains(compared, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[decoder]\nunitz = 3\n")
    fresh = write_experiment(tmp_path / "fresh.toml", compared.root, "decoder.units=8")
    with pytest.raises(ConfigError, match="unknown key 'decoder.unitz'"):
        compare([fresh, broken], tmp_path / "out", runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_bad_value_in_the_last_file_fails_before_any_run_trains(tmp_path, monkeypatch):
    """Every file is validated with its overrides and each seed first; the error names the file."""
    import captioning.reports.compare as compare_module

    trained = []
    monkeypatch.setattr(compare_module, "train", lambda config, run_dir, verbose: trained.append(config.name))
    first = write_experiment(tmp_path / "first.toml", tmp_path)
    last = write_experiment(tmp_path / "last.toml", tmp_path, "decoder.cell=gur")  # the right type, no such cell
    with pytest.raises(ConfigError, match=r"last\.toml \(seed 0\): unknown decoder cell 'gur' \(decoder.cell\)"):
        compare([first, last], tmp_path / "out", runs_root=tmp_path / "runs", seeds=[0, 1])
    with pytest.raises(ConfigError, match=r"first\.toml: unknown runtime.strategy 'tpu'"):
        compare([first, last], tmp_path / "out", runs_root=tmp_path / "runs", overrides=["runtime.strategy=tpu"])
    assert trained == [] and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_seeds_give_one_row_with_mean_and_std(compared, tmp_path):
    runs_root = copy_of_runs(compared, tmp_path)
    table, printed = quietly(compare, compared.experiments[:1], tmp_path / "out", runs_root=runs_root, seeds=[0, 1])
    assert "(seed 0): reused" in printed and "(seed 1): trained" in printed, printed
    assert len(table) == 1 and table.loc[0, "seeds"] == "0 1"
    assert "±" in table.loc[0, "bleu_4"] and "training.seed" not in table.columns
    bleu_4 = [json.loads(Path(run, "metrics.json").read_text())["bleu_4"] for run in table.loc[0, "run"].split(" ")]
    assert len(bleu_4) == 2
    saved = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert saved.loc[0, "bleu_4_mean"] == pytest.approx(sum(bleu_4) / 2)
    assert "±" in (tmp_path / "out" / "compare.md").read_text()


def test_a_folder_stands_for_its_experiment_files_in_name_order(tmp_path):
    for name in ["b.toml", "a.toml", "notes.txt"]:
        (tmp_path / name).write_text("")
    assert expand_experiments([tmp_path]) == [tmp_path / "a.toml", tmp_path / "b.toml"]
    assert load_config(tmp_path / "a.toml").name == "a"


def test_markdown_table_rounds_and_leaves_missing_values_empty():
    table = pd.DataFrame({"experiment": ["a|b"], "bleu_4": [0.123456], "cider": [float("nan")], "training_seconds": [12.34]})
    assert markdown_table(table).splitlines() == [
        "| experiment | bleu_4 | cider | training_seconds |", "|---|---|---|---|", "| a\\|b | 0.123 |  | 12.3 |"]


def test_markdown_table_prints_config_values_unrounded():
    """A learning rate of 5e-4 is a config value, not a metric: it must not print as 0.001."""
    table = pd.DataFrame({"experiment": ["a", "b"], "training.learning_rate": [5e-4, 1e-3],
                          "decoder.dropout": [0.3, 0.5], "bleu_4": [0.1234, 0.2]})
    assert markdown_table(table).splitlines()[2:] == ["| a | 0.0005 | 0.3 | 0.123 |", "| b | 0.001 | 0.5 | 0.200 |"]


@pytest.mark.slow
def test_the_same_config_and_seed_repeat_bleu_4(compared, tmp_path):
    """Retrained from scratch in another runs folder, a config and seed score the same on CPU."""
    table, printed = quietly(compare, compared.experiments[:1], tmp_path / "out", runs_root=tmp_path / "runs")
    assert ": trained " in printed and table.loc[0, "run"] != compared.table.loc[0, "run"]
    assert table.loc[0, "bleu_4"] == pytest.approx(compared.table.loc[0, "bleu_4"], abs=0.005)
    # one tiny epoch leaves BLEU-4 near 0, so also check the losses, which every weight moves
    first, again = (pd.read_csv(Path(run, "history.csv")) for run in [compared.table.loc[0, "run"], table.loc[0, "run"]])
    assert list(again["val_loss"]) == pytest.approx(list(first["val_loss"]), rel=1e-4)


def test_compare_command_line():
    arguments = parse_arguments(["compare", "a.toml", "experiments/", "--seeds", "0", "1", "--set", "training.epochs=1"])
    assert arguments.experiments == ["a.toml", "experiments/"] and arguments.seeds == [0, 1]
    assert arguments.set == ["training.epochs=1"] and arguments.out == "runs/compare"
    assert arguments.results is None and Path(arguments.results_file).parts[-2:] == ("docs", "results.md")
    # --readme and --readme-file, the former names, still work
    arguments = parse_arguments(["compare", "--readme", "shapes", "--readme-file", "page.md"])
    assert arguments.results == "shapes" and arguments.results_file == "page.md"


@pytest.mark.slow
def test_compare_results_writes_the_table_command_and_machine_into_its_section(compared, tmp_path, monkeypatch, capsys):
    page = tmp_path / "results.md"
    page.write_text("# title\n\n<!-- results:tiny -->\n(run `make compare` to fill this in)\n<!-- /results -->\n\nafter\n")
    monkeypatch.chdir(compared.root)  # the CLI's runs/ is compared.root/runs: both runs are reused
    argv = ["compare", *map(str, compared.experiments), "--out", str(tmp_path / "out"), "--results", "tiny",
            "--results-file", str(page)]
    assert main(argv) == 0
    assert ": trained " not in capsys.readouterr().out
    table = (tmp_path / "out" / "compare.md").read_text()
    text = page.read_text()
    assert text.startswith("# title\n\n<!-- results:tiny -->\nMade by `python -m captioning compare ")
    assert text.endswith(f"\n\n{table}\n![the table's scores, one bar per row and metric](images/results_tiny.png)\n"
                         "<!-- /results -->\n\nafter\n")
    assert (tmp_path / "images" / "results_tiny.png").read_bytes() == (tmp_path / "out" / "compare_metrics.png").read_bytes()
    assert "--results tiny" in text and "fill this in" not in text
    assert f"{len(os.sched_getaffinity(0))} CPU cores (" in text and "TensorFlow 2." in text


@pytest.mark.slow
def test_selection_scores_are_kept_until_the_weights_change(compared, tmp_path):
    """metrics_selection.json is reused while it names the SHA-256 of the run's weights; a
    run whose weights changed since (resumed with more epochs) is scored again."""
    run_dir = tmp_path / "run"
    shutil.copytree(compared.table["run"].iloc[0], run_dir)
    path = run_dir / "metrics_selection.json"
    saved = json.loads(path.read_text())
    assert saved["weights_sha256"] == hashlib.sha256((run_dir / "model.weights.h5").read_bytes()).hexdigest()
    path.write_text(json.dumps({**saved, "cider": 99.0}))
    assert selection_metrics(run_dir)["cider"] == 99.0  # the same weights: read back, not recomputed
    path.write_text(json.dumps({**saved, "cider": 99.0, "weights_sha256": "weights before a resumed run"}))
    rescored = selection_metrics(run_dir)
    assert rescored["cider"] == pytest.approx(saved["cider"])
    assert json.loads(path.read_text())["weights_sha256"] == saved["weights_sha256"]


def test_attention_statistics_get_columns_left_empty_for_decoders_without_attention(tmp_path):
    """The attention runs' mean entropy and largest weight (metrics.json) are table columns;
    a decoder without attention has none, and its cells stay empty."""
    from captioning.reports.compare import ComparedRun, seed_table

    metrics = {"bleu_1": 0.6, "bleu_2": 0.4, "bleu_3": 0.3, "bleu_4": 0.2, "bleu_4_shuffled_images": 0.05,
               "trainable_parameters": 10, "training_seconds": 1.0, "evaluation_seconds": 1.0, "epochs": 1,
               "best_epoch": 1}
    runs = []
    for index, (decoder, statistics) in enumerate([("rnn", {}), ("attention", {"attention_entropy": 3.5,
                                                                               "attention_max_weight": 0.1})]):
        for seed in (0, 1):
            config = tiny_config(tmp_path, f"decoder.name={decoder}", f"training.seed={seed}")
            config.name = decoder
            runs.append(ComparedRun(index, config, tmp_path / f"{decoder}{seed}",
                                    {**metrics, **{name: value + seed / 10 for name, value in statistics.items()}}))
    table = seed_table([runs[:2], runs[2:]])
    assert list(table["attention_entropy"]) == ["", "3.550 ± 0.071"]
    assert table["attention_max_weight_mean"].iloc[1] == pytest.approx(0.15)
    assert "attention_entropy" in markdown_table(table[[column for column in table if not column.endswith(("_mean", "_std"))]])


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_metrics_plot_names_the_split_the_scores_are_on(tmp_path, monkeypatch, split):
    from captioning.reports import compare as compare_module

    titles = []
    monkeypatch.setattr(compare_module, "plot_metric_bars", lambda *args, title, **kwargs: titles.append(title))
    monkeypatch.setattr(compare_module, "plot_learning_curves", lambda *args, **kwargs: None)
    run = SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(evaluation_split=split, seed=0)),
                          run_dir=tmp_path)
    table = pd.DataFrame({"experiment": ["a", "b"], "bleu_4": [0.1, 0.2]})
    compare_module.plot_comparison(table, [[run], [run]], tmp_path, aggregate=False)
    assert titles == [f"{split} split scores"]


def test_the_metrics_plot_shows_the_selection_cider_and_names_its_split(tmp_path, monkeypatch):
    from captioning.reports import compare as compare_module

    plotted = []
    monkeypatch.setattr(compare_module, "plot_metric_bars",
                        lambda labels, values, path, errors=None, title="": plotted.append((values, title)))
    monkeypatch.setattr(compare_module, "plot_learning_curves", lambda *args, **kwargs: None)
    run = SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(evaluation_split="val", seed=0)),
                          run_dir=tmp_path, metrics={"selection_split": "train_tail"})
    table = pd.DataFrame({"experiment": ["a", "b"], "cider": [0.4, 0.5], "selection_cider": [0.45, None]})
    compare_module.plot_comparison(table, [[run], [run]], tmp_path, aggregate=False)
    values, title = plotted[0]
    assert values["selection_cider"][0] == 0.45 and values["selection_cider"][1] != values["selection_cider"][1]  # NaN
    assert title == "val split scores, selection_cider on train_tail (it chooses)"
