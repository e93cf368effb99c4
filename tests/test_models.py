"""Encoders and decoders: shapes, serialization round trips, gradients, step == sequence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_decoder_inputs

from captioning.config import DecoderConfig, EncoderConfig
from captioning.data.images import NORMALIZATIONS
from captioning.models.decoders import CELL_CLASSES, DECODERS, build_decoder
from captioning.models.decoders import STATES_PER_CELL as STATES
from captioning.models.encoders import (
    ENCODERS,
    EncoderWeightsError,
    build_encoder,
    encoder_is_frozen,
    is_pretrained,
    normalization_for,
)
from captioning.models.optimizer import FusedAdam
from captioning.models.recurrence import (has_fused_sequence, input_gates, kernel_blocks, lstm_hidden_sequence,
                                          recurrent_update)

IMAGE_SHAPE = (32, 48, 3)  # height != width catches swapped axes
ENCODER_CONFIGS = {
    "conv_stack": EncoderConfig(name="conv_stack", filters=[4, 8], batch_norm=True),
    "vgg16": EncoderConfig(name="vgg16", weights="none", trainable=True),
    "mobilenet": EncoderConfig(name="mobilenet", weights="none", trainable=True, alpha=0.25),
    "resnet50": EncoderConfig(name="resnet50", weights="none", trainable=True),
    "inception_v3": EncoderConfig(name="inception_v3", weights="none", trainable=True),
    "efficientnet_b0": EncoderConfig(name="efficientnet_b0", weights="none", trainable=True),
}
# InceptionV3 needs at least 75 px; the others run on the small test image.
ENCODER_IMAGE_SHAPES = {"inception_v3": (75, 96, 3)}
EXPECTED_FEATURES = {
    "conv_stack": (8 * 12, 8), "vgg16": (1 * 1, 512), "mobilenet": (1 * 1, 256), "resnet50": (1 * 2, 2048),
    "inception_v3": (1 * 1, 2048), "efficientnet_b0": (1 * 2, 1280),
}


def test_every_registered_encoder_is_covered():
    assert set(ENCODER_CONFIGS) == set(ENCODERS)


# The deep backbones take 2-10 s a test to build on 2 cores: make test-fast checks the small ones.
DEEP_ENCODERS = {"efficientnet_b0", "inception_v3", "resnet50"}


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name in DEEP_ENCODERS else name
                        for name in sorted(ENCODERS)])
def encoder_name(request):
    return request.param


def random_images(batch=2, shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, *shape)).astype("float32")


def build_test_encoder(name):
    shape = ENCODER_IMAGE_SHAPES.get(name, IMAGE_SHAPE)
    return build_encoder(ENCODER_CONFIGS[name], shape), random_images(shape=shape)


def test_encoder_output_is_a_region_grid(encoder_name):
    encoder, images = build_test_encoder(encoder_name)
    features = encoder(images)
    assert tuple(features.shape) == (2, *EXPECTED_FEATURES[encoder_name])
    assert tuple(encoder.compute_output_shape(images.shape)) == (2, *EXPECTED_FEATURES[encoder_name])
    assert normalization_for(ENCODER_CONFIGS[encoder_name]) in NORMALIZATIONS


def test_encoder_serialization_round_trip(encoder_name):
    encoder, images = build_test_encoder(encoder_name)
    expected = encoder(images, training=False)
    restored = encoder.__class__.from_config(encoder.get_config())
    restored(images)
    restored.set_weights(encoder.get_weights())
    np.testing.assert_allclose(restored(images, training=False), expected, rtol=1e-5, atol=1e-5)
    assert restored.get_config() == encoder.get_config()


def test_every_trainable_encoder_weight_gets_a_gradient(encoder_name):
    encoder, images = build_test_encoder(encoder_name)
    images = tf.constant(images)
    encoder(images)
    # Inference mode: EfficientNet's stochastic depth would skip whole blocks at random.
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(encoder(images, training=encoder_name == "conv_stack")))
    gradients = tape.gradient(loss, encoder.trainable_weights)
    assert encoder.trainable_weights
    for weight, gradient in zip(encoder.trainable_weights, gradients):
        assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0, weight.path


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu", "elu"])
def test_conv_stack_activation_is_a_config_choice(activation):
    encoder = build_encoder(EncoderConfig(filters=[4], activation=activation, batch_norm=False), IMAGE_SHAPE)
    features = np.asarray(encoder(random_images() - 0.5))
    if activation in ("relu",):
        assert features.min() >= 0
    if activation in ("sigmoid",):
        assert features.min() > 0 and features.max() < 1
    if activation in ("leaky_relu", "elu", "tanh"):
        assert features.min() < 0


def test_the_registry_says_which_encoders_are_pretrained_and_so_can_be_frozen():
    assert {name for name in ENCODERS if is_pretrained(name)} == set(ENCODERS) - {"conv_stack"}
    for name in ENCODERS:
        assert encoder_is_frozen(EncoderConfig(name=name)) == is_pretrained(name)  # frozen unless asked to train
        assert not encoder_is_frozen(EncoderConfig(name=name, trainable=True))
        assert not encoder_is_frozen(EncoderConfig(name=name, fine_tune_last_block=True))
    assert normalization_for(EncoderConfig(name="conv_stack")) == "unit"


@pytest.mark.parametrize("config", [EncoderConfig(name="conv_stack", filters=[4]),
                                    EncoderConfig(name="mobilenet", weights="none", alpha=0.25)], ids=lambda c: c.name)
def test_an_encoder_the_registry_calls_frozen_builds_without_trainable_weights(config):
    encoder = build_encoder(config, IMAGE_SHAPE)
    encoder(random_images())
    assert (not encoder.trainable_weights) == encoder_is_frozen(config)


def test_unknown_encoder_and_activation_are_errors_listing_valid_names():
    with pytest.raises(ValueError, match="unknown encoder 'resnet9' .encoder.name.; valid: conv_stack.*vgg16"):
        build_encoder(EncoderConfig(name="resnet9"), IMAGE_SHAPE)
    with pytest.raises(ValueError, match="unknown encoder activation 'swishy' .encoder.activation..*leaky_relu"):
        build_encoder(EncoderConfig(activation="swishy"), IMAGE_SHAPE)


def test_vgg16_is_frozen_by_default_and_can_fine_tune_only_the_last_block():
    frozen = build_encoder(EncoderConfig(name="vgg16", weights="none"), IMAGE_SHAPE)
    frozen(random_images())
    assert frozen.trainable_weights == []
    last_block = build_encoder(EncoderConfig(name="vgg16", weights="none", fine_tune_last_block=True), IMAGE_SHAPE)
    last_block(random_images())
    names = [weight.path for weight in last_block.trainable_weights]
    assert len(names) == 6 and all("block5_" in name for name in names)  # 3 convolutions: kernel + bias


def test_mobilenet_fine_tunes_only_its_last_depthwise_block():
    encoder = build_encoder(EncoderConfig(name="mobilenet", weights="none", alpha=0.25, fine_tune_last_block=True),
                            IMAGE_SHAPE)
    encoder(random_images())
    names = {weight.path.split("/")[-2] for weight in encoder.trainable_weights}
    assert names == {"conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn"}


def test_vgg16_loads_a_local_weights_file(tmp_path):
    source = build_encoder(EncoderConfig(name="vgg16", weights="none"), IMAGE_SHAPE)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.network.save_weights(path)
    loaded = build_encoder(EncoderConfig(name="vgg16", weights=str(path)), IMAGE_SHAPE)
    images = random_images()
    np.testing.assert_allclose(loaded(images), source(images), rtol=1e-5, atol=1e-4)


def test_vgg16_missing_weights_file_names_the_file(tmp_path):
    with pytest.raises(EncoderWeightsError, match="nowhere.h5: encoder weights file not found"):
        build_encoder(EncoderConfig(name="vgg16", weights=str(tmp_path / "nowhere.h5")), IMAGE_SHAPE)


def test_vgg16_imagenet_offline_says_how_to_give_a_local_file(monkeypatch):
    from keras.src.applications import vgg16

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: Temporary failure in name resolution")

    monkeypatch.setattr(vgg16.file_utils, "get_file", offline)
    with pytest.raises(EncoderWeightsError, match=r"encoder\.weights=/path/to/vgg16_weights_tf_dim_ordering"):
        build_encoder(EncoderConfig(name="vgg16", weights="imagenet"), IMAGE_SHAPE)


# ---- decoders ----

VOCAB_SIZE = 11


# "rnn+image": the rnn decoder with the image normalized and fed beside every word;
# "attention+image": the attention decoder with every region normalized
# "+wide": the wide output layer instead of the deep one
# "attention+output": attention after the cell (OutputAttentionDecoder); "attention+between":
# attention between two cells (BetweenAttentionDecoder)
DECODER_VARIANTS = {**{name: {} for name in DECODERS}, "rnn+image": {"image_norm": True, "image_every_step": True},
                    "attention+image": {"image_norm": True}, "rnn+wide": {"output_layer": "wide"},
                    "attention+wide": {"output_layer": "wide"}, "attention+output": {"attention_placement": "output"},
                    "attention+between": {"attention_placement": "between"},
                    "transformer": {"transformer_heads": 2, "transformer_layers": 2}}


def make_decoder(cell, pooling="mean", dropout=0.0, name="rnn"):
    options = DECODER_VARIANTS[name]
    config = DecoderConfig(name=name.split("+")[0], cell=cell, embedding_dim=6, units=8, dropout=dropout,
                           image_pooling=pooling, attention_units=5, **options)
    return build_decoder(config, VOCAB_SIZE)


@pytest.fixture(params=sorted(DECODER_VARIANTS))
def decoder_name(request):
    return request.param


def decoder_inputs(batch=3, regions=4, channels=5, length=7, seed=0):
    return random_decoder_inputs(VOCAB_SIZE, batch, regions, channels, length, seed)


@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
@pytest.mark.parametrize("pooling", ["mean", "flatten"])
@pytest.mark.parametrize("name", ["rnn", "rnn+image"])
def test_decoder_logits_shape(cell, pooling, name):
    decoder = make_decoder(cell, pooling, name=name)
    features, token_ids = decoder_inputs()
    assert tuple(decoder((features, token_ids)).shape) == (3, 7, VOCAB_SIZE)


def test_image_every_step_makes_every_position_depend_on_the_image():
    """With par-inject, changing only the image changes the logits at every position even
    when the initial state is the same, i.e. the image reaches the cell beside each word."""
    decoder = make_decoder("lstm", name="rnn+image")
    features, token_ids = decoder_inputs()
    decoder((features, token_ids))
    memory = decoder.image_memory(features)
    other = decoder.image_memory(np.roll(features, 1, axis=0))  # each row another image
    assert tuple(memory["image"].shape) == (3, 6)
    same_start, _ = decoder.recur(memory, token_ids)
    other_image, _ = decoder.recur({**memory, "image": other["image"]}, token_ids)
    assert np.all(np.abs(np.asarray(same_start) - np.asarray(other_image))[:, :, :8].max(axis=-1) > 1e-6)
    assert "image" not in make_decoder("lstm").image_memory(features)  # off by default


@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_hoisted_recurrence_equals_the_keras_cell(cell):
    """recurrence.py: the input half of the matmul taken out of the loop, the rest per
    step, gives exactly what the Keras cell's own call gives (known answer: the cell)."""
    keras_cell = CELL_CLASSES[cell](8)
    keras_cell.build((None, 5))
    rng = np.random.default_rng(0)
    for weight in keras_cell.weights:  # non-zero biases, so every bias term is checked
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    inputs = rng.normal(size=(4, 3, 5)).astype("float32")  # (batch, steps, width)
    state = [tf.constant(rng.normal(size=(4, 8)).astype("float32")) for _ in range(STATES[cell])]
    expected_state, state_by_hand = list(state), list(state)
    gates = input_gates(keras_cell, inputs[:, :, :2]) + input_gates(keras_cell, inputs[:, :, 2:], first_row=2,
                                                                       bias=False)  # (batch, steps, gates)
    for step in range(3):
        expected_hidden, expected_state = keras_cell(inputs[:, step], expected_state)
        hidden, state_by_hand = recurrent_update(keras_cell, gates[:, step], state_by_hand)
        np.testing.assert_allclose(hidden, expected_hidden, rtol=1e-5, atol=1e-6)
        for mine, theirs in zip(state_by_hand, expected_state):
            np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_lstm_matches_autodiff(compiled):
    """recurrence.lstm_hidden_sequence's hand-written backward pass: its hidden states and
    the gradients of the gates, the initial hidden and carry state and the recurrent kernel
    equal autodiff through recurrent_update step by step (known answer), eagerly and
    traced (as training runs it)."""
    keras_cell = keras.layers.LSTMCell(6)
    keras_cell.build((None, 4))
    rng = np.random.default_rng(0)
    keras_cell.recurrent_kernel.assign(rng.normal(size=keras_cell.recurrent_kernel.shape).astype("float32"))
    gates = tf.constant(rng.normal(size=(5, 3, 24)).astype("float32"))  # (length, rows, 4 * units)
    state = [tf.constant(rng.normal(size=(3, 6)).astype("float32")) for _ in range(2)]
    weights = tf.constant(rng.normal(size=(5, 3, 6)).astype("float32"))  # a loss that weighs every output

    def by_steps(gates, hidden, carry):
        outputs, step_state = [], [hidden, carry]
        for step in range(gates.shape[0]):
            output, step_state = recurrent_update(keras_cell, gates[step], step_state)
            outputs.append(output)
        return tf.stack(outputs)  # (length, rows, units)

    def fused(gates, hidden, carry):
        return lstm_hidden_sequence(keras_cell, gates, [hidden, carry])

    def value_and_gradients(sequence):
        with tf.GradientTape() as tape:
            tape.watch([gates, *state])
            hidden = sequence(gates, *state)
            loss = tf.reduce_sum(tf.sin(hidden) * weights)
        return [hidden, *tape.gradient(loss, [gates, *state, keras_cell.recurrent_kernel])]

    if compiled:
        value_and_gradients = tf.function(value_and_gradients)
    assert has_fused_sequence(keras_cell)
    expected = value_and_gradients(by_steps)
    for name, mine, theirs in zip(["hidden", "gates", "hidden0", "carry0", "recurrent_kernel"],
                                  value_and_gradients(fused), expected):
        assert float(tf.reduce_max(tf.abs(theirs))) > 1e-3, name  # a real gradient to compare
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5, err_msg=name)


def test_kernel_blocks_are_the_kernel_rows_and_refuse_too_many():
    """recurrence.kernel_blocks: consecutive row blocks of the cell's kernel (one split),
    each gradient lands on its own rows, and blocks wider than the kernel are a clear error."""
    keras_cell = keras.layers.LSTMCell(3)
    keras_cell.build((None, 7))  # kernel (7, 12)
    with tf.GradientTape() as tape:
        first, second = kernel_blocks(keras_cell, [2, 4])
        loss = tf.reduce_sum(first) + 2.0 * tf.reduce_sum(second)
    np.testing.assert_array_equal(first, keras_cell.kernel[:2])
    np.testing.assert_array_equal(second, keras_cell.kernel[2:6])
    expected = np.concatenate([np.ones((2, 12)), 2 * np.ones((4, 12)), np.zeros((1, 12))]).astype("float32")
    np.testing.assert_array_equal(tape.gradient(loss, keras_cell.kernel), expected)
    with pytest.raises(ValueError, match="exceed the kernel's 7"):
        kernel_blocks(keras_cell, [4, 4])


@pytest.mark.parametrize("clipnorm", [None, 0.5])
def test_fused_adam_matches_keras_adam(clipnorm):
    """optimizer.FusedAdam (one ResourceApplyAdam a weight) gives Keras Adam's weights and
    slots after several steps (known answer), with an embedding's sparse gradient beside
    dense ones and with clipping."""
    def train(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Embedding(12, 4), keras.layers.Flatten(), keras.layers.Dense(3)])
        model.compile(optimizer=optimizer, loss="mse")
        rng = np.random.default_rng(1)
        model.fit(rng.integers(0, 12, (32, 5)), rng.normal(size=(32, 3)), batch_size=8, epochs=3, verbose=0)
        return model

    fused, plain = train(FusedAdam(0.01, clipnorm=clipnorm)), train(keras.optimizers.Adam(0.01, clipnorm=clipnorm))
    assert int(fused.optimizer.iterations) == 12
    for mine, theirs in zip(fused.weights + fused.optimizer.variables, plain.weights + plain.optimizer.variables):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6, err_msg=mine.path)
    initial = train(keras.optimizers.SGD(0.0))  # the same start, never moved: FusedAdam did move the weights
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(fused.weights, initial.weights)) > 1e-3


def test_only_default_lstm_activations_take_the_fused_sequence():
    """The hand-written backward pass assumes sigmoid gates and tanh: other cells step."""
    assert has_fused_sequence(keras.layers.LSTMCell(4))
    assert not has_fused_sequence(keras.layers.LSTMCell(4, activation="relu"))
    assert not has_fused_sequence(keras.layers.GRUCell(4))


def test_per_image_work_runs_once_and_matches_repeated_features(decoder_name):
    """captions_per_image=C: the decoder's per-image work on each image once, repeated per
    caption, gives the logits of the features repeated C times beforehand."""
    decoder = make_decoder("lstm", name=decoder_name)
    features, _ = decoder_inputs(batch=2)
    _, token_ids = decoder_inputs(batch=6, seed=1)  # 3 captions per image, an image's captions adjacent
    repeated = np.repeat(features, 3, axis=0)
    expected = decoder((repeated, token_ids), training=False)
    np.testing.assert_allclose(decoder((features, token_ids), training=False, captions_per_image=3), expected,
                               rtol=1e-5, atol=1e-6)


def test_attention_image_norm_ignores_each_regions_scale_and_offset():
    """Normalized regions: scaling and shifting every region's vector leaves the logits
    unchanged; without image_norm the same change moves them."""
    features, token_ids = decoder_inputs()
    rescaled = features * np.linspace(1.0, 4.0, features.shape[1])[None, :, None] + 3.0  # per-region scale, offset
    normalized = make_decoder("lstm", name="attention+image")
    np.testing.assert_allclose(normalized((rescaled, token_ids)), normalized((features, token_ids)), atol=2e-3)  # LayerNorm epsilon
    plain = make_decoder("lstm", name="attention")
    assert np.abs(np.asarray(plain((rescaled, token_ids))) - np.asarray(plain((features, token_ids)))).max() > 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_decoder_step_by_step_equals_the_whole_sequence(cell, decoder_name):
    """Generation (one token at a time, state carried) must see what training saw."""
    decoder = make_decoder(cell, name=decoder_name)
    features, token_ids = decoder_inputs()
    expected = np.asarray(decoder((features, token_ids), training=False))  # (batch, length, vocab)
    cache = decoder.initial_cache(features)
    for position in range(token_ids.shape[1]):
        logits, cache = decoder.step_cache(token_ids[:, position], cache)
        np.testing.assert_allclose(logits, expected[:, position], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_decoder_serialization_round_trip(cell, decoder_name):
    decoder = make_decoder(cell, pooling="flatten", dropout=0.2, name=decoder_name)
    features, token_ids = decoder_inputs()
    expected = decoder((features, token_ids), training=False)
    restored = decoder.__class__.from_config(decoder.get_config())
    restored((features, token_ids))
    restored.set_weights(decoder.get_weights())
    np.testing.assert_allclose(restored((features, token_ids), training=False), expected, rtol=1e-5, atol=1e-6)
    assert restored.get_config() == decoder.get_config()


@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_every_decoder_weight_gets_a_gradient(cell, decoder_name):
    decoder = make_decoder(cell, pooling="flatten", name=decoder_name)
    features, token_ids = decoder_inputs()
    decoder((features, token_ids))
    with tf.GradientTape() as tape:
        logits = decoder((features, token_ids), training=True)
        loss = keras.losses.sparse_categorical_crossentropy(token_ids, logits, from_logits=True)
    gradients = tape.gradient(loss, decoder.trainable_weights)
    for weight, gradient in zip(decoder.trainable_weights, gradients):
        assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0, weight.path


def test_decoder_rejects_unknown_cell_and_pooling():
    with pytest.raises(ValueError, match="unknown decoder cell 'rnn' .decoder.cell..*lstm, gru"):
        make_decoder("rnn")
    with pytest.raises(ValueError, match="unknown image_pooling 'max' .decoder.image_pooling..*mean.*flatten"):
        make_decoder("gru", pooling="max")


def test_the_grid14_experiment_gives_mobilenet_a_14_by_14_region_grid_and_its_base_7_by_7():
    from captioning.config import load_config
    from captioning.models.caption_model import image_shape

    grids = {}
    for name in ("flickr8k_attention_lambda/lambda_0_01", "flickr8k_attention_grid14"):
        config = load_config(Path(__file__).parents[1] / "experiments" / f"{name}.toml")
        encoder = build_encoder(replace(config.encoder, weights="none"), image_shape(config), load_pretrained=False)
        grids[name] = tuple(encoder.grid_shape(image_shape(config)))
    assert grids == {"flickr8k_attention_lambda/lambda_0_01": (7, 7), "flickr8k_attention_grid14": (14, 14)}


def experiment_differences(first: str, second: str) -> list[str]:
    """Every field but the name in which experiments/<first>.toml differs from <second>.toml,
    as runs.config_differences writes them ("decoder.units: 512 -> 256")."""
    from captioning.config import load_config
    from captioning.runs import config_differences

    experiments = Path(__file__).parents[1] / "experiments"
    changes = config_differences(load_config(experiments / f"{first}.toml"), load_config(experiments / f"{second}.toml"))
    return [change for change in changes if not change.startswith("name:")]


def test_the_self_critical_comparisons_differ_from_their_rows_in_what_they_say():
    """flickr8k_attention_grid14_scst3.toml is the grid14 run with three self-critical epochs
    (so make compare starts it from that run's phase 1) and the 7 x 7 recipe with the larger
    images and lambda = 0.01; flickr8k_attention_scst3_lambda0_01.toml is the recipe at
    lambda = 0.01 and the sweep's lambda = 0.01 run with the three epochs. So the grids
    compare at one lambda, and the lambdas at one grid. The mirror at lambda = 0.01 differs
    from the mirror in lambda alone, and from the recipe at lambda = 0.01 in the mirror alone; the mirror with the attention between
    two cells differs from the mirror in the placement alone."""
    assert experiment_differences("flickr8k_attention_grid14_scst3", "flickr8k_attention_grid14") == [
        "self_critical.epochs: 3 -> 0"]
    assert experiment_differences("flickr8k_attention_grid14_scst3", "flickr8k_attention_scst3") == [
        "images.x_size: 448 -> 224", "images.y_size: 448 -> 224", "images.cache: False -> True",
        "decoder.attention_regularization: 0.01 -> 1.0"]
    assert experiment_differences("flickr8k_attention_scst3_lambda0_01", "flickr8k_attention_scst3") == [
        "decoder.attention_regularization: 0.01 -> 1.0"]
    assert experiment_differences("flickr8k_attention_scst3_lambda0_01", "flickr8k_attention_lambda/lambda_0_01") == [
        "self_critical.epochs: 3 -> 0"]
    assert experiment_differences("flickr8k_attention_grid14_scst3", "flickr8k_attention_scst3_lambda0_01") == [
        "images.x_size: 448 -> 224", "images.y_size: 448 -> 224", "images.cache: False -> True"]
    assert experiment_differences("flickr8k_attention_scst3_mirror_lambda0_01", "flickr8k_attention_scst3_mirror") == [
        "decoder.attention_regularization: 0.01 -> 1.0"]
    assert experiment_differences("flickr8k_attention_scst3_mirror_lambda0_01", "flickr8k_attention_scst3_lambda0_01") == [
        "images.augment: True -> False"]
    assert experiment_differences("flickr8k_attention_scst3_mirror_between", "flickr8k_attention_scst3_mirror") == [
        "decoder.attention_placement: 'between' -> 'output'"]


def test_the_transformer_sweep_changes_one_field_of_the_decoder_tables_transformer():
    """experiments/flickr8k_transformer_sweep/: lr_5e-4 is the decoder table's Transformer
    without its self-critical epochs; lr_1e-3 changes its learning rate alone."""
    assert experiment_differences("flickr8k_transformer_sweep/lr_5e-4", "flickr8k_transformer_scst3") == ["self_critical.epochs: 0 -> 3"]
    assert experiment_differences("flickr8k_transformer_sweep/lr_1e-3", "flickr8k_transformer_sweep/lr_5e-4") == [
        "training.learning_rate: 0.001 -> 0.0005"]
