"""Fine-tuning after transfer learning: phase 1 on the frozen backbone's cached features,
phase 2 end to end with the top backbone layers unfrozen, each phase resumable on its own.

The backbone is a tiny random MobileNet saved to a weights file, standing in for ImageNet
weights: phase 1's features and phase 2's starting backbone must be the same network.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import keras
import numpy as np
import pytest
from conftest import interrupt_after, tiny_config

from captioning.captioner import Captioner
from captioning.config import ConfigError, EncoderConfig, ImagesConfig
from captioning.models.encoders import BACKBONES, build_encoder, fine_tunable_layers
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.features import cache_key
from captioning.training.loop import train
from captioning.training.training_data import TrainingData

IMAGE_SHAPE = (32, 32, 3)
TOP_LAYERS = 2  # MobileNet's conv_dw_13 and conv_pw_13: the last depthwise-separable block


@pytest.fixture(scope="module", autouse=True)
def no_coco_metrics():
    """These tests are about training phases; pycocoevalcap's METEOR starts Java for each
    evaluation (about half of a tiny run's time here). test_coco_metrics.py covers it."""
    def unavailable(references, hypotheses):
        return {"meteor": None, "rouge_l": None, "cider": None, "image_cider": np.zeros(len(hypotheses)),
                "unavailable": []}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("captioning.evaluation.evaluate.coco_caption_scores", unavailable)
        yield


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory):
    """A random MobileNet (alpha 0.25, 32 px) saved as a weights file. Its batch norm
    statistics are measured on a batch of random images, layer by layer (MobileNet is a
    chain), as pretrained ones were on ImageNet: with the initial mean 0 and variance 1 the
    activations shrink to ~1e-20 over 27 layers and no gradient reaches the top layers."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_025_32.weights.h5"
    network = keras.applications.MobileNet(weights=None, include_top=False, input_shape=IMAGE_SHAPE, alpha=0.25)
    activations = np.random.default_rng(0).uniform(-1, 1, (16, *IMAGE_SHAPE)).astype("float32")
    for layer in network.layers[1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(activations.mean(axis=(0, 1, 2)))
            layer.moving_variance.assign(activations.var(axis=(0, 1, 2)) + 1e-3)
        activations = np.asarray(layer(activations, training=False))  # (16, height, width, channels)
    network.save_weights(path)
    return path


def fine_tune_config(root, weights_path, *extra):
    return tiny_config(root, "encoder.name=mobilenet", "encoder.alpha=0.25", f"encoder.weights={weights_path}",
                       f"images.feature_cache_dir={root / 'features'}", f"encoder.fine_tune_layers={TOP_LAYERS}",
                       "fine_tune.epochs=2", "fine_tune.learning_rate=0.003",
                       "data.shapes_train_size=16", *extra)


def read_history(run_dir):
    with open(run_dir / "history.csv") as handle:
        return [(int(row["phase"]), int(row["epoch"])) for row in csv.DictReader(handle)]


def layer_weights(network):
    return {layer.name: [np.asarray(weight) for weight in layer.weights] for layer in network.layers if layer.weights}


@pytest.fixture(scope="module")
def fine_tuned_run(tmp_path_factory, mobilenet_weights):
    """A run interrupted after its first phase-2 epoch (epoch 3 of 2 + 2), then resumed to the end.

    Returns (config, run directory, metrics, seen): seen holds the history when interrupted,
    how often each invocation extracted features, and the backbone phase 1 handed phase 2."""
    root = tmp_path_factory.mktemp("fine_tuned")
    config, run_dir = fine_tune_config(root, mobilenet_weights), root / "run"
    seen = {"feature_passes": 0}
    original_start_from, original_feature_datasets = TrainingCheckpoint.start_from, TrainingData.feature_datasets
    original_on_epoch_end = TrainingCheckpoint.on_epoch_end

    def start_from(self, model, *arguments, **options):
        seen["phase_two_start"] = layer_weights(model.encoder.network)
        original_start_from(self, model, *arguments, **options)

    def feature_datasets(self):
        seen["feature_passes"] += 1
        return original_feature_datasets(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainingCheckpoint, "start_from", start_from)
        patch.setattr(TrainingData, "feature_datasets", feature_datasets)
        patch.setattr(TrainingCheckpoint, "on_epoch_end", interrupt_after(3))
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir, verbose=0)
        seen["history_when_interrupted"] = read_history(run_dir)
        seen["feature_passes_before_resuming"], seen["feature_passes"] = seen["feature_passes"], 0
        patch.setattr(TrainingCheckpoint, "on_epoch_end", original_on_epoch_end)
        metrics = train(config, run_dir, verbose=0)
    return config, run_dir, metrics, seen


@pytest.mark.slow
def test_phase_one_hands_phase_two_the_backbone_unchanged(fine_tuned_run):
    config, _, _, seen = fine_tuned_run
    original = layer_weights(build_encoder(config.encoder, IMAGE_SHAPE).network)  # the weights file
    assert original.keys() == seen["phase_two_start"].keys()
    for name, weights in original.items():
        assert all(np.array_equal(old, new) for old, new in zip(weights, seen["phase_two_start"][name])), name


@pytest.mark.slow
def test_phase_two_changes_the_top_layers_only_and_keeps_batch_norm_statistics(fine_tuned_run):
    config, run_dir, _, _ = fine_tuned_run
    original = build_encoder(config.encoder, IMAGE_SHAPE).network  # the weights file: what phase 1 encoded with
    trained = Captioner.from_run(run_dir).model.encoder.network
    top = {layer.name for layer in fine_tunable_layers(original)[-TOP_LAYERS:]}
    assert top == {"conv_dw_13", "conv_pw_13"}
    before, after = layer_weights(original), layer_weights(trained)
    assert before.keys() == after.keys()
    for name in before:
        unchanged = all(np.array_equal(old, new) for old, new in zip(before[name], after[name]))
        if name in top:
            assert not unchanged, f"{name} was unfrozen in phase 2 but did not change"
        else:  # lower layers, and every batch norm layer's gamma, beta, moving mean and variance
            assert unchanged, f"{name} changed although it was frozen"
    assert {"conv_dw_13_bn", "conv_pw_13_bn"} <= set(before)  # the unfrozen layers' own batch norms stayed


@pytest.mark.slow
def test_an_interrupted_phase_two_resumes_in_phase_two_without_rerunning_phase_one(fine_tuned_run):
    _, run_dir, _, seen = fine_tuned_run
    assert seen["history_when_interrupted"] == [(1, 1), (1, 2), (2, 3)]
    assert seen["feature_passes_before_resuming"] == 1
    assert seen["feature_passes"] == 0  # phase 1 had finished: its features are not even read again
    assert read_history(run_dir) == [(1, 1), (1, 2), (2, 3), (2, 4)]  # no epoch twice, none missing
    state = json.loads((run_dir / "checkpoint" / "fine_tune" / "state.json").read_text())
    assert (state["phase"], state["first_epoch"], state["epochs_done"]) == (2, 2, 4)
    checkpoint_files = sorted(path.name for path in (run_dir / "checkpoint" / "fine_tune").glob("epoch-*.weights.h5"))
    assert checkpoint_files == ["epoch-004.weights.h5"]
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["phase"] == 1


@pytest.mark.slow
def test_metrics_record_both_phases(fine_tuned_run):
    config, run_dir, metrics, _ = fine_tuned_run
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    first, second = metrics["phases"]
    assert (first["phase"], first["epochs"], first["first_epoch"]) == (1, 2, 1)
    assert (second["phase"], second["epochs"], second["first_epoch"]) == (2, 2, 3)
    assert first["learning_rate"] == config.training.learning_rate
    assert second["learning_rate"] == config.fine_tune.learning_rate
    assert first["training_seconds"] > 0 and second["training_seconds"] > 0
    assert metrics["epochs"] == 4
    assert metrics["training_seconds"] == pytest.approx(first["training_seconds"] + second["training_seconds"], abs=0.11)
    assert second["starting_val_loss"] == pytest.approx(first["best_val_loss"], rel=1e-2)  # the same weights, on images
    # The final model trains the decoder and the two unfrozen layers, nothing else of the backbone.
    decoder_parameters = sum(int(np.prod(weight.shape)) for weight in Captioner.from_run(run_dir).model.decoder.weights)
    assert 0 < metrics["trainable_parameters"] - decoder_parameters < 100_000


@pytest.mark.slow
def test_an_interrupted_phase_one_resumes_in_phase_one(tmp_path, monkeypatch, mobilenet_weights):
    config = fine_tune_config(tmp_path, mobilenet_weights, "fine_tune.epochs=1")
    run_dir = tmp_path / "run"
    original_on_epoch_end = TrainingCheckpoint.on_epoch_end
    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", interrupt_after(1))
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, verbose=0)
    assert read_history(run_dir) == [(1, 1)]
    assert not (run_dir / "checkpoint" / "fine_tune").exists()
    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", original_on_epoch_end)
    metrics = train(config, run_dir, verbose=0)
    assert read_history(run_dir) == [(1, 1), (1, 2), (2, 3)]
    assert [(phase["phase"], phase["epochs"]) for phase in metrics["phases"]] == [(1, 2), (2, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["encoder.fine_tune_layers=-1"], r"encoder.fine_tune_layers=-1 is negative"),
    (["encoder.fine_tune_layers=28"], r"encoder.fine_tune_layers=28: mobilenet has 27 layers with weights.*0 .* to 27"),
    (["encoder.name=vgg16", "encoder.fine_tune_layers=14"], r"vgg16 has 13 layers with weights"),
    (["encoder.name=conv_stack"], r"conv_stack always trains end to end"),
    (["encoder.trainable=true"], r"cannot be combined with encoder.trainable"),
    (["encoder.weights=none"], r"needs pretrained weights"),
    (["fine_tune.epochs=0"], r"fine_tune.epochs is 0"),
    (["fine_tune.epochs=-2", "encoder.fine_tune_layers=0"], r"fine_tune.epochs=-2 is negative"),
    (["fine_tune.learning_rate=0.0"], r"fine_tune.learning_rate=0.0 must be positive"),
])
def test_impossible_fine_tuning_settings_are_refused_before_training(tmp_path, mobilenet_weights, overrides, message):
    config = fine_tune_config(tmp_path, mobilenet_weights, *overrides)
    with pytest.raises(ConfigError, match=message):
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


# The top three layers with weights, batch norm not counted. InceptionV3's convolutions are
# numbered by Keras per session, so it is checked by layer type only.
TOP_THREE = {
    "vgg16": {"block5_conv1", "block5_conv2", "block5_conv3"},
    "mobilenet": {"conv_pw_12", "conv_dw_13", "conv_pw_13"},
    "resnet50": {"conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"},
    "efficientnet_b0": {"block7a_se_expand", "block7a_project_conv", "top_conv"},
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_unfreezes_its_top_weighted_layers_with_batch_norm_in_inference_mode(backbone):
    shape = (75, 75, 3) if backbone == "inception_v3" else IMAGE_SHAPE  # InceptionV3 needs 75 px
    config = EncoderConfig(name=backbone, weights="none", alpha=0.25, fine_tune_layers=3)
    encoder = build_encoder(config, shape, fine_tuning=True)
    convolutions = [layer.name for layer in encoder.network.layers
                    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    expected = TOP_THREE.get(backbone, set(convolutions[-3:]))
    unfrozen = {weight.path.split("/")[-2] for weight in encoder.trainable_weights}
    assert unfrozen == expected
    assert all(not isinstance(layer, keras.layers.BatchNormalization)
               for layer in encoder.network.layers if layer.trainable_weights)
    images = np.random.default_rng(0).uniform(-1, 1, (2, *shape)).astype("float32")
    np.testing.assert_allclose(encoder(images, training=True), encoder(images, training=False), rtol=1e-5, atol=1e-5)
    restored = encoder.__class__.from_config(encoder.get_config())  # by position: Inception's names change
    assert ([index for index, layer in enumerate(restored.network.layers) if layer.trainable_weights]
            == [index for index, layer in enumerate(encoder.network.layers) if layer.trainable_weights])
    frozen = build_encoder(config, shape)  # the first phase and the captioner: nothing trainable
    assert frozen.trainable_weights == []


@pytest.mark.slow
def test_phase_one_shares_the_frozen_runs_feature_cache(tmp_path):
    """fine_tune_layers changes nothing phase 1's frozen backbone computes: same cache key."""
    image = tmp_path / "image.png"
    image.write_bytes(b"pixels")
    images = ImagesConfig(x_size=224, y_size=224)
    frozen = EncoderConfig(name="mobilenet", alpha=0.75)
    key = cache_key([str(image)], frozen, images, "minus_one_to_one")[0]
    assert cache_key([str(image)], dataclasses.replace(frozen, fine_tune_layers=10), images, "minus_one_to_one")[0] == key
    assert cache_key([str(image)], dataclasses.replace(frozen, alpha=0.5), images, "minus_one_to_one")[0] != key
