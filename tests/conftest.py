"""Shared fixtures: a tiny shapes data set and one tiny trained run, made once per session.

Every train() in the tests ends with an evaluation, whose METEOR starts a java process (about
7 s of CPU, 10-30 s on the shared 2-core machine); the tests get a fixed METEOR of 0.25 instead
(``meteor_stand_in``). The real jar runs in tests/test_coco_metrics.py (the ``real_meteor``
fixture) and in the session's ``trained_run``, so one end-to-end run is scored by it.
"""

from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from captioning.config import load_config, to_toml
from captioning.evaluation import coco_metrics

REAL_METEOR_SCORE = coco_metrics.meteor_score


# Two tiers. `make test` (CI) runs every test, over both cores (pytest-xdist, --dist loadgroup);
# `make test-fast`, the inner loop, leaves out the tests marked `slow`. The rule: a test is slow
# when it trains a model, starts a process, a server or a browser, or takes over about 2 s
# (pytest --durations=20 -m "not slow" shows the ones to mark). Tests that use a trained
# fixture (TRAINED_FIXTURES) are marked here; the others carry @pytest.mark.slow themselves.
TRAINED_FIXTURES = {"trained_run", "trained_attention_run", "exported_model", "shapes_test_images"}
# The xdist group of every test that uses a trained fixture: one worker trains the session's
# runs once and runs all of those tests (the other worker would otherwise train them again).
TRAINED_GROUP = "trained_runs"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_a_trained_fixture = bool(TRAINED_FIXTURES & set(item.fixturenames))
        if uses_a_trained_fixture:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("xdist_group"):  # the file chose its group (xdist would join two names)
            continue
        if uses_a_trained_fixture:
            item.add_marker(pytest.mark.xdist_group(TRAINED_GROUP))
        elif uses_a_module_fixture(item):  # the module's tests stay on one worker: the fixture is built once
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


def uses_a_module_fixture(item) -> bool:
    """Whether one of the test's fixtures is module-scoped (defined in its file, e.g. a module's tiny run)."""
    fixture_definitions = item._fixtureinfo.name2fixturedefs.values()  # pytest's own record of the test's fixtures
    return any(definition.scope == "module" for definitions in fixture_definitions for definition in definitions)


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


def write_experiment(path, data_root, *overrides):
    """An experiment TOML file holding the tiny test config (one epoch) plus ``overrides``."""
    config = tiny_config(data_root, "training.epochs=1", *overrides)
    config.name = path.stem
    path.write_text(to_toml(config))
    return path


def quietly(function, *args, **kwargs):
    """Runs ``function``; returns (its result, what it printed)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        result = function(*args, **kwargs)
    return result, output.getvalue()


# What every evaluation in the tests reports as METEOR (test_compare.py pins the same value).
METEOR_STAND_IN = 0.25


@pytest.fixture(scope="session", autouse=True)
def meteor_stand_in():
    """coco_metrics.meteor_score returns METEOR_STAND_IN for the whole session (no java start)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coco_metrics, "meteor_score", lambda references, hypotheses: METEOR_STAND_IN)
        yield


@pytest.fixture
def real_meteor(monkeypatch):
    """The real METEOR (java -jar meteor-1.5.jar) for one test."""
    monkeypatch.setattr(coco_metrics, "meteor_score", REAL_METEOR_SCORE)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def trained_run(tiny_data_root):
    """A finished tiny run directory (trained two epochs, evaluated, METEOR included)."""
    from captioning.training.loop import train

    run_dir = tiny_data_root / "runs" / "tiny"
    with pytest.MonkeyPatch.context() as patch:  # the one run scored by the real METEOR jar
        patch.setattr(coco_metrics, "meteor_score", REAL_METEOR_SCORE)
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
