"""Which images train, which decide early stopping, which are reported, and the guard
that keeps the reported split out of the other two."""

from __future__ import annotations

from captioning.config import ConfigError, ExperimentConfig
from captioning.data.datasets import CaptionedImage, load_split

EARLY_STOPPING_SPLITS = ("val", "train_tail")


def check_splits(config: ExperimentConfig) -> None:
    training = config.training
    if training.early_stopping_split not in EARLY_STOPPING_SPLITS:
        raise ConfigError(f"unknown training.early_stopping_split '{training.early_stopping_split}'; "
                          f"valid: {', '.join(EARLY_STOPPING_SPLITS)}")
    check_evaluation_split(config, training.evaluation_split)


def check_evaluation_split(config: ExperimentConfig, split: str) -> None:
    """The evaluated split must never have been used for training or early stopping."""
    if split == "train":
        raise ConfigError("the train split trained the model: its scores say nothing about unseen images")
    if split == config.training.early_stopping_split:
        raise ConfigError(f"the '{split}' split chose this run's best epoch (training.early_stopping_split), so its "
                          "scores are biased; report another split, or train with "
                          "training.early_stopping_split=train_tail")


def training_and_stopping_examples(config: ExperimentConfig) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """(images to train on, images whose loss picks the best epoch), never overlapping."""
    train_examples = load_split(config.data, "train")
    if config.training.early_stopping_split == "train_tail":
        holdout = config.training.holdout_images
        if not 0 < holdout < len(train_examples):
            raise ConfigError(f"training.holdout_images={holdout} must be between 1 and the {len(train_examples) - 1} "
                              "train images it is taken from")
        train_examples, stopping_examples = train_examples[:-holdout], train_examples[-holdout:]
    else:
        stopping_examples = load_split(config.data, config.training.early_stopping_split)
    if config.training.max_train_images:
        train_examples = train_examples[: config.training.max_train_images]
    if config.training.max_eval_images:
        stopping_examples = stopping_examples[: config.training.max_eval_images]
    return train_examples, stopping_examples
