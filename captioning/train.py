"""train(config, run_dir): data -> vocabulary -> model -> fit (resumable) -> test BLEU."""

from __future__ import annotations

import time
from pathlib import Path

import keras

from captioning.captioner import Captioner
from captioning.checkpoints import TrainingCheckpoint
from captioning.config import ExperimentConfig, to_toml
from captioning.datasets import load_split
from captioning.encoders import normalization_for
from captioning.evaluate import evaluate_captioner, format_metrics, write_results
from captioning.files import write_text
from captioning.model import build_model, masked_loss
from captioning.plots import plot_training_curves
from captioning.pipeline import ImageReader, training_dataset
from captioning.runs import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, VOCABULARY_FILE, WEIGHTS_FILE,
                             RunError, config_differences, load_run_config)
from captioning.vocabulary import Vocabulary


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


def train(config: ExperimentConfig, run_dir: str | Path, verbose: int | str = "auto") -> dict:
    """Trains (or resumes) the run in ``run_dir`` and returns its test-split metrics."""
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    keras.utils.set_random_seed(config.training.seed)

    train_examples = load_split(config.data, "train")
    if config.training.max_train_images:
        train_examples = train_examples[: config.training.max_train_images]
    validation_examples = load_split(config.data, "val")
    if config.training.max_eval_images:
        validation_examples = validation_examples[: config.training.max_eval_images]
    vocabulary = load_or_build_vocabulary(
        run_dir, [caption for example in train_examples for caption in example.captions], config.decoder.min_word_count
    )
    print(f"run {run_dir}: {len(train_examples)} training images, vocabulary of {vocabulary.size} tokens")

    reader = ImageReader(config.images, normalization_for(config.encoder))
    dataset_options = dict(vocabulary=vocabulary, reader=reader, captions_per_image=config.data.captions_per_image,
                           length=config.decoder.max_length, batch_size=config.training.batch_size,
                           seed=config.training.seed)
    train_dataset = training_dataset(train_examples, shuffle=True, **dataset_options)
    validation_dataset = training_dataset(validation_examples, shuffle=False, **dataset_options)

    model = build_model(config, vocabulary.size)
    model.compile(optimizer=keras.optimizers.Adam(config.training.learning_rate, clipnorm=5.0), loss=masked_loss())
    checkpoint = TrainingCheckpoint(run_dir / CHECKPOINT_DIR, run_dir / WEIGHTS_FILE, run_dir / HISTORY_FILE,
                                    patience=config.training.patience)
    initial_epoch = checkpoint.restore(model)
    if initial_epoch:
        print(f"resuming {run_dir} after epoch {initial_epoch}")
    started = time.time()
    if initial_epoch < config.training.epochs and not checkpoint.finished:
        with reader.reporting_errors():
            model.fit(train_dataset, validation_data=validation_dataset, epochs=config.training.epochs,
                      initial_epoch=initial_epoch, callbacks=[checkpoint], verbose=verbose, shuffle=False)
    training_seconds = time.time() - started
    plot_training_curves(checkpoint.state["history"], run_dir / "training_curves.png", title=config.name)

    captioner = Captioner.from_run(run_dir)
    metrics, rows = evaluate_captioner(captioner, "test")
    metrics.update(epochs=checkpoint.state["epochs_done"], best_epoch=checkpoint.state["best_epoch"],
                   training_seconds=round(training_seconds, 1), parameters=int(model.count_params()))
    write_results(metrics, rows, run_dir / METRICS_FILE, run_dir / "captions_test.csv")
    print(format_metrics(metrics))
    return metrics
