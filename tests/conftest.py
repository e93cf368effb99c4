"""Shared fixtures: a tiny shapes data set and one tiny trained run, made once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from captioning.config import load_config


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


TINY_OVERRIDES = [
    "images.x_size=32", "images.y_size=32",
    "encoder.filters=[8, 16]",
    "decoder.embedding_dim=16", "decoder.units=32", "decoder.max_length=22", "decoder.image_pooling=\"flatten\"",
    "data.shapes_train_size=48", "data.shapes_val_size=16", "data.shapes_test_size=16", "data.shapes_image_size=48",
    "training.epochs=2", "training.batch_size=16",
]


def tiny_config(tmp_path_factory_or_path, *extra):
    """A config small enough to train in seconds, with its data and cache under a temp folder."""
    root = tmp_path_factory_or_path
    overrides = TINY_OVERRIDES + [f"data.root={root / 'shapes'}", f"images.cache_dir={root / 'cache'}", *extra]
    return load_config(None, overrides)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def trained_run(tiny_data_root):
    """A finished tiny run directory (trained two epochs, evaluated)."""
    from captioning.training.loop import train

    run_dir = tiny_data_root / "runs" / "tiny"
    train(tiny_config(tiny_data_root), run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def trained_attention_run(tiny_data_root):
    """A finished tiny run of the attention decoder (one epoch, evaluated)."""
    from captioning.training.loop import train

    run_dir = tiny_data_root / "runs" / "tiny_attention"
    train(tiny_config(tiny_data_root, "decoder.name=attention", "training.epochs=1"), run_dir, verbose=0)
    return run_dir


def random_decoder_inputs(vocab_size, batch=3, regions=4, channels=5, length=7, seed=0):
    """features (batch, regions, channels) float32 and token_ids (batch, length) int32 in 1..vocab_size - 1."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, regions, channels)).astype("float32")
    token_ids = rng.integers(1, vocab_size, size=(batch, length)).astype("int32")
    return features, token_ids


def interrupt_after(epoch_number):
    """A TrainingCheckpoint.on_epoch_end that saves the epoch, then stops the run (Ctrl-C)."""
    from captioning.training.checkpoints import TrainingCheckpoint

    original = TrainingCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == epoch_number:
            raise KeyboardInterrupt("simulated interruption")
    return on_epoch_end


@pytest.fixture(scope="session")
def exported_model(trained_run, tiny_data_root):
    """The tiny trained run as a one-file model (make export)."""
    from captioning.models.model_file import export_run

    return export_run(trained_run, tiny_data_root / "tiny.keras")


@pytest.fixture(scope="session")
def shapes_test_images(trained_run, tiny_data_root):
    """Paths of the tiny data set's test images (PNG), sorted."""
    return sorted(str(path) for path in (tiny_data_root / "shapes" / "test" / "images").glob("*.png"))
