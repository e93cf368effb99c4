"""The guard that keeps a reported split out of training and early stopping (splits.py)."""

from __future__ import annotations

import pytest

from captioning.cli import main
from captioning.config import ConfigError, load_config
from captioning.data.splits import check_evaluation_split, check_splits


def test_reporting_the_train_or_the_early_stopping_split_is_refused():
    config = load_config(None, ["training.early_stopping_split=val"])
    with pytest.raises(ConfigError, match="train split trained the model"):
        check_evaluation_split(config, "train")
    with pytest.raises(ConfigError, match="'val' split chose this run's best epoch"):
        check_evaluation_split(config, "val")
    check_evaluation_split(config, "test")  # unseen: allowed
    tail = load_config(None, ["training.early_stopping_split=train_tail"])
    check_evaluation_split(tail, "val")  # the held-out end of train chose the epoch: val is unseen


def test_check_splits_refuses_an_unknown_stopping_split_and_its_own_evaluation_split():
    with pytest.raises(ConfigError, match="unknown training.early_stopping_split 'dev'"):
        check_splits(load_config(None, ["training.early_stopping_split=dev"]))
    with pytest.raises(ConfigError, match="'val' split chose"):
        check_splits(load_config(None, ["training.early_stopping_split=val", "training.evaluation_split=val"]))


def test_evaluate_reads_the_guard_from_the_saved_config_not_the_overrides(trained_run, capsys):
    """The run stopped early on val (its saved config.toml); --set cannot talk the guard out of it."""
    code = main(["evaluate", "--run", str(trained_run), "--split", "val",
                 "--set", "training.early_stopping_split=train_tail"])
    assert code == 2
    assert "'val' split chose this run's best epoch" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(trained_run), "--split", "train"]) == 2
