"""make compare starts a config that differs from a finished run only in [self_critical] from
that run's phase 1 (training/reuse.py), and gets the weights a run from the beginning gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import quietly, write_experiment

from captioning.captioner import Captioner
from captioning.config import load_config
from captioning.reports.compare import compare
from captioning.training.loop import train

FROZEN = ["encoder.name=mobilenet", "encoder.alpha=0.25", "encoder.weights=none", "decoder.max_length=6",
          "training.epochs=1"]


def experiment(path, data_root, *overrides):
    return write_experiment(path, data_root, *FROZEN, *overrides)


def weights_of(run_dir):
    return Captioner.from_run(run_dir).model.get_weights()


@pytest.mark.slow
def test_a_config_differing_in_self_critical_starts_from_a_finished_phase_one(tmp_path):
    """Known answer: after a run with 1 self-critical epoch, compare trains the 2-epoch config
    from its phase 1 and first epoch and the 0-epoch config from its phase 1; both end with
    the weights of the same config trained from the beginning, and say where they started."""
    one = experiment(tmp_path / "one.toml", tmp_path, "self_critical.epochs=1")
    two = experiment(tmp_path / "two.toml", tmp_path, "self_critical.epochs=2")
    none = experiment(tmp_path / "none.toml", tmp_path, "self_critical.epochs=0")
    first, _ = quietly(compare, [one], tmp_path / "out_one", runs_root=tmp_path / "runs")
    table, printed = quietly(compare, [two, none], tmp_path / "out", runs_root=tmp_path / "runs")
    source, two_run, none_run = first["run"].iloc[0], table["run"].iloc[0], table["run"].iloc[1]
    assert printed.count("trained from the finished phase 1 of") == 2, printed
    assert printed.count("resuming phase 1 after epoch 1") == 2  # neither trains phase 1 again
    assert "1 epoch(s) of" in printed and "resuming after epoch 1" in printed  # "two" trains only its epoch 2
    # each from the newest such run: "two" from "one", "none" from "two" (the same phase 1)
    assert json.loads((Path(two_run) / "metrics.json").read_text())["phase_one_from"] == source
    assert json.loads((Path(none_run) / "metrics.json").read_text())["phase_one_from"] == two_run
    history = (Path(two_run) / "self_critical_history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # epoch 1 copied, epoch 2 trained
    assert not (Path(none_run) / "self_critical_history.csv").exists()
    for path, run_dir in zip([two, none], table["run"]):
        scratch = tmp_path / f"scratch_{path.stem}"
        quietly(train, load_config(path), scratch)
        for reused, expected in zip(weights_of(run_dir), weights_of(scratch)):
            np.testing.assert_allclose(reused, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_config_differing_elsewhere_trains_from_the_beginning(tmp_path):
    """Another decoder size is another phase 1: nothing is copied."""
    one = experiment(tmp_path / "one.toml", tmp_path, "self_critical.epochs=1")
    wider = experiment(tmp_path / "wider.toml", tmp_path, "self_critical.epochs=2", "decoder.units=48")
    quietly(compare, [one], tmp_path / "out_one", runs_root=tmp_path / "runs")
    _, printed = quietly(compare, [wider], tmp_path / "out", runs_root=tmp_path / "runs")
    assert "from the finished phase 1" not in printed and ": trained " in printed
