"""Per-layer encoder gradient norms: the callback, the run's CSV and PNG, and the comparison plot."""

from __future__ import annotations

import csv
import math

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TRAINED_GROUP, tiny_config
from PIL import Image

from captioning.config import ConfigError, EncoderConfig, load_config
from captioning.models.caption_model import build_model, masked_loss
from captioning.models.encoders import build_encoder
from captioning.reports.compare import ComparedRun, plot_comparison
from captioning.training.gradients import (
    GradientNormLogger,
    convolution_weights,
    mean_norm_per_layer,
    write_gradient_norms,
)
from captioning.training.loop import train
from captioning.validate import check_gradient_logging


def first_epoch_norms(activation: str) -> list[float]:
    """Gradient norms of a 4-convolution stack without batch norm at initialization, input side first."""
    keras.utils.set_random_seed(0)
    config = load_config(None, ["images.x_size=32", "images.y_size=32", "encoder.filters=[8, 8, 8, 8]",
                                f"encoder.activation={activation}", "encoder.batch_norm=false", "decoder.units=16",
                                "decoder.embedding_dim=8", "decoder.image_pooling=flatten"])
    model = build_model(config, vocab_size=20)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(8, 2, 10)).astype("int32")  # (batch, captions, length)
    batch = ({"images": rng.random((8, 32, 32, 3)).astype("float32"), "captions": tokens[:, :, :-1]}, tokens[:, :, 1:])
    logger = GradientNormLogger(batch, masked_loss(), interval=1, csv_path="unused.csv", plot_path="unused.png")
    logger.set_model(model)
    logger.measure(step=0)
    assert [row["layer"] for row in logger.rows] == ["conv_0", "conv_1", "conv_2", "conv_3"]
    return [row["norm"] for row in logger.rows]


@pytest.mark.slow
def test_sigmoid_gradients_vanish_towards_the_input_and_relu_gradients_do_not():
    sigmoid, relu = first_epoch_norms("sigmoid"), first_epoch_norms("relu")
    # measured at seed 0: sigmoid 7.3e-5, 5.1e-4, 1.7e-3, 1.4e-2 (first / last 0.005); relu first / last 0.37
    assert sigmoid == sorted(sigmoid), sigmoid  # each layer nearer the input gets less
    assert sigmoid[0] / sigmoid[-1] < 0.05 < 0.2 < relu[0] / relu[-1], (sigmoid, relu)


def built_encoder(batch_norm: bool):
    encoder = build_encoder(EncoderConfig(filters=[4, 8], batch_norm=batch_norm), (16, 16, 3))
    encoder(np.zeros((1, 16, 16, 3), dtype="float32"))  # creates the weights
    return encoder


def test_only_convolutions_are_measured_with_their_bias():
    plain = convolution_weights(built_encoder(batch_norm=False))
    assert [(name, [len(variable.shape) for variable in variables]) for name, variables in plain] == [
        ("conv_0", [4, 1]), ("conv_1", [4, 1])]
    normalized = convolution_weights(built_encoder(batch_norm=True))
    assert [name for name, _ in normalized] == ["conv_0", "conv_1"]  # batch norm's gamma and beta are not layers measured


# logged_run is compared with the session's trained_run: this file's tests share its worker.
pytestmark = pytest.mark.xdist_group(TRAINED_GROUP)


@pytest.fixture(scope="module")
def logged_run(tiny_data_root):
    """The tiny config of the trained_run fixture with gradient norms logged at every step."""
    run_dir = tiny_data_root / "runs" / "gradient_norms"
    train(tiny_config(tiny_data_root, "training.log_gradient_norms=true", "training.gradient_norm_interval=1"),
          run_dir, verbose=0)
    return run_dir


@pytest.mark.slow
def test_run_writes_one_finite_positive_norm_per_step_and_convolution(logged_run):
    with open(logged_run / "gradient_norms.csv") as handle:
        rows = list(csv.DictReader(handle))
    steps_per_epoch = math.ceil(48 / 16)  # tiny config: 48 training images, batches of 16
    expected = [(str(step), str(depth), f"conv_{depth - 1}") for step in range(steps_per_epoch + 1) for depth in (1, 2)]
    assert [(row["step"], row["depth"], row["layer"]) for row in rows] == expected  # the first epoch only
    norms = [float(row["norm"]) for row in rows]
    assert all(math.isfinite(norm) and norm > 0 for norm in norms), norms
    assert len(set(norms)) > 2  # the weights change between steps
    with Image.open(logged_run / "gradient_norms.png") as plot:
        assert plot.format == "PNG" and plot.size == (700, 450)


@pytest.mark.slow
def test_measuring_does_not_change_the_training(logged_run, trained_run):
    with open(logged_run / "history.csv") as logged, open(trained_run / "history.csv") as plain:
        logged_rows, plain_rows = list(csv.DictReader(logged)), list(csv.DictReader(plain))
    assert len(logged_rows) == len(plain_rows) == 2
    for logged_row, plain_row in zip(logged_rows, plain_rows):
        assert float(logged_row["loss"]) == pytest.approx(float(plain_row["loss"]), rel=1e-5)
        assert float(logged_row["val_loss"]) == pytest.approx(float(plain_row["val_loss"]), rel=1e-5)
    assert not (trained_run / "gradient_norms.csv").exists()  # off by default


def test_gradient_logging_needs_an_encoder_that_trains(tmp_path):
    frozen = tiny_config(tmp_path, "training.log_gradient_norms=true", "encoder.name=mobilenet")
    with pytest.raises(ConfigError, match="frozen.*training.log_gradient_norms=false"):
        check_gradient_logging(frozen)
    check_gradient_logging(tiny_config(tmp_path, "training.log_gradient_norms=true", "encoder.name=mobilenet",
                                       "encoder.fine_tune_last_block=true"))
    with pytest.raises(ConfigError, match="gradient_norm_interval=0 must be at least 1"):
        check_gradient_logging(tiny_config(tmp_path, "training.gradient_norm_interval=0"))


def fake_run(path, norms_by_step: dict[int, list[float]] | None):
    """A run directory holding only gradient_norms.csv (two layers a step), or nothing."""
    path.mkdir(parents=True)
    if norms_by_step is not None:
        rows = [{"step": step, "depth": depth, "layer": f"conv_{depth - 1}", "norm": norm}
                for step, norms in norms_by_step.items() for depth, norm in enumerate(norms, start=1)]
        write_gradient_norms(rows, path / "gradient_norms.csv")
    return path


def test_mean_norm_per_layer_averages_steps_then_runs(tmp_path):
    first = fake_run(tmp_path / "first", {0: [1.0, 10.0], 5: [3.0, 30.0]})  # means 2, 20
    second = fake_run(tmp_path / "second", {0: [4.0, 40.0]})  # means 4, 40
    assert mean_norm_per_layer([first]) == [("conv_0", 2.0), ("conv_1", 20.0)]
    assert mean_norm_per_layer([first, second]) == [("conv_0", 3.0), ("conv_1", 30.0)]
    assert mean_norm_per_layer([fake_run(tmp_path / "none", None)]) == []


@pytest.mark.slow
def test_comparison_plots_gradient_norms_only_when_runs_logged_them(tmp_path):
    config = load_config(None)
    table = pd.DataFrame({"experiment": ["relu", "sigmoid"], "bleu_4": [0.5, 0.2]})
    logged = [[ComparedRun(0, config, fake_run(tmp_path / "relu", {0: [0.3, 0.5]}), {})],
              [ComparedRun(1, config, fake_run(tmp_path / "sigmoid", {0: [1e-4, 1e-2]}), {})]]
    out = tmp_path / "out"
    assert "compare_gradient_norms.png" in plot_comparison(table, logged, out, aggregate=False)
    with Image.open(out / "compare_gradient_norms.png") as plot:
        assert plot.format == "PNG" and plot.size == (700, 450)

    unlogged = [[ComparedRun(0, config, fake_run(tmp_path / "a", None), {})],
                [ComparedRun(1, config, fake_run(tmp_path / "b", None), {})]]
    assert "compare_gradient_norms.png" not in plot_comparison(table, unlogged, out, aggregate=False)
    assert not (out / "compare_gradient_norms.png").exists()  # the earlier plot described other runs
