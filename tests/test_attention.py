"""The soft-attention decoder: shapes, attention weights, the doubly stochastic penalty,
generation (greedy and beam) through the shared search code, and the attention picture."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_decoder_inputs, tiny_config
from PIL import Image

from captioning.captioner import Captioner
from captioning.cli import main
from captioning.config import ConfigError, DecoderConfig, GenerationConfig, load_config, to_dict
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID, Vocabulary
from captioning.evaluation.attention_statistics import attention_entropy_and_peak
from captioning.models.caption_model import build_model
from captioning.models.decoders import CELL_CLASSES, AttentionDecoder, build_decoder
from captioning.models.search import CaptionBeamSampler, build_sampler, forbid_special_tokens, generate_token_ids

VOCAB_SIZE = 11
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


PLACEMENT = {"value": "input"}  # make_decoder's decoder.attention_placement, set by the placement fixture


@pytest.fixture(params=["input", "output", "between"])
def placement(request, monkeypatch):
    """A test that uses it runs for every attention placement (AttentionDecoder, OutputAttentionDecoder,
    BetweenAttentionDecoder)."""
    monkeypatch.setitem(PLACEMENT, "value", request.param)
    return request.param


both_placements = pytest.mark.usefixtures("placement")


def make_decoder(cell="lstm", dropout=0.0, gate=True, regularization=1.0, penalty_scale="per_caption"):
    config = DecoderConfig(name="attention", cell=cell, embedding_dim=6, units=8, dropout=dropout, attention_units=5,
                           attention_gate=gate, attention_regularization=regularization,
                           attention_penalty_scale=penalty_scale, attention_placement=PLACEMENT["value"])
    return build_decoder(config, VOCAB_SIZE)


def decoder_inputs(batch=3, regions=4, channels=5, length=7, seed=0):
    return random_decoder_inputs(VOCAB_SIZE, batch, regions, channels, length, seed)


@pytest.mark.slow
@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_a_caption_length_known_only_at_run_time_gives_the_same_logits(cell):
    """A known length is unrolled step by step (XLA needs it); an unknown one runs as keras'
    scan (a graph while loop). Both are the same recurrence."""
    decoder = make_decoder(cell)
    features, token_ids = decoder_inputs()
    unrolled, unrolled_attention = decoder((features, token_ids), return_attention=True)
    scanned_call = tf.function(lambda features, token_ids: decoder((features, token_ids), return_attention=True),
                               input_signature=[tf.TensorSpec((None, 4, 5), tf.float32),
                                                tf.TensorSpec((None, None), tf.int32)])
    scanned, scanned_attention = scanned_call(features, token_ids)
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scanned_attention, unrolled_attention, rtol=1e-5, atol=1e-6)


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
@pytest.mark.parametrize("gate", [True, False])
def test_logits_and_attention_shapes(cell, gate):
    decoder = make_decoder(cell, gate=gate)
    assert isinstance(decoder, AttentionDecoder)
    features, token_ids = decoder_inputs()
    assert tuple(decoder((features, token_ids)).shape) == (3, 7, VOCAB_SIZE)
    logits, attention = decoder((features, token_ids), return_attention=True)
    assert tuple(logits.shape) == (3, 7, VOCAB_SIZE)
    assert tuple(attention.shape) == (3, 7, 4)  # (batch, length, regions)


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_attention_weights_sum_to_one_at_every_step(cell):
    decoder = make_decoder(cell)
    features, token_ids = decoder_inputs()
    _, attention = decoder((features, token_ids), return_attention=True)
    assert np.all(np.asarray(attention) >= 0)
    np.testing.assert_allclose(np.sum(attention, axis=-1), np.ones((3, 7)), atol=1e-5)


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
@pytest.mark.parametrize("gate", [True, False])
def test_step_by_step_equals_teacher_forcing(cell, gate):
    """Generation's logits and attention weights are training's, position by position."""
    decoder = make_decoder(cell, dropout=0.3, gate=gate)  # dropout is off outside training
    features, token_ids = decoder_inputs()
    logits, attention = decoder((features, token_ids), training=False, return_attention=True)
    state = decoder.initial_state(features)
    for position in range(token_ids.shape[1]):
        step_logits, state = decoder.step(token_ids[:, position], state)
        np.testing.assert_allclose(step_logits, logits[:, position], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state["attention"], attention[:, position], rtol=1e-4, atol=1e-6)


@both_placements
def test_features_are_projected_once_per_sequence():
    decoder = make_decoder()
    features, token_ids = decoder_inputs()
    decoder((features, token_ids))
    calls = []
    original = decoder.feature_projection.call
    decoder.feature_projection.call = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        decoder((features, token_ids))
        state = decoder.initial_state(features)
        for position in range(3):
            _, state = decoder.step(token_ids[:, position], state)
    finally:
        decoder.feature_projection.call = original
    assert len(calls) == 2  # once for the whole sequence, once in initial_state, none per step


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_serialization_round_trip(cell):
    decoder = make_decoder(cell, dropout=0.2, gate=False, regularization=0.5)
    features, token_ids = decoder_inputs()
    expected = decoder((features, token_ids), training=False)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    restored((features, token_ids))
    restored.set_weights(decoder.get_weights())
    np.testing.assert_allclose(restored((features, token_ids), training=False), expected, rtol=1e-5, atol=1e-6)
    assert restored.get_config() == decoder.get_config()
    assert (restored.attention_gate, restored.attention_regularization, restored.attention_units) == (False, 0.5, 5)
    assert restored.attention_penalty_scale == "per_caption" and restored.attention_placement == decoder.attention_placement


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_every_weight_gets_a_gradient(cell):
    decoder = make_decoder(cell, dropout=0.1)
    features, token_ids = decoder_inputs()
    decoder((features, token_ids))
    with tf.GradientTape() as tape:
        logits = decoder((features, token_ids), training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(token_ids, logits, from_logits=True))
        loss += tf.add_n(decoder.losses)
    gradients = tape.gradient(loss, decoder.trainable_weights)
    names = {weight.path.split("/")[-2] for weight in decoder.trainable_weights}
    assert {"feature_projection", "hidden_projection", "attention_score", "attention_gate"} <= names
    for weight, gradient in zip(decoder.trainable_weights, gradients):
        assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0, weight.path


# ---- the doubly stochastic penalty -------------------------------------------------------

# Row 0 predicts 3 real tokens (inputs <start> 5 6; <end> and padding predict nothing real),
# row 1 predicts 2, row 2 is an all-padding filler caption and is left out of the mean.
PENALTY_TOKENS = np.array([[START_ID, 5, 6, END_ID, PAD_ID, PAD_ID],
                           [START_ID, 7, END_ID, PAD_ID, PAD_ID, PAD_ID],
                           [PAD_ID] * 6], dtype="int32")


@both_placements
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")  # one region is the point here
def test_with_one_region_the_penalty_is_one_minus_the_step_count_squared():
    """One region: alpha is always 1, so sum_t alpha = T and the penalty is (1 - T)^2.
    Row 0: (1 - 3)^2 = 4; row 1: (1 - 2)^2 = 1; mean 2.5; lambda 0.5 -> 1.25."""
    decoder = make_decoder(regularization=0.5)
    features = np.random.default_rng(0).normal(size=(3, 1, 5)).astype("float32")  # (batch, 1 region, channels)
    decoder((features, PENALTY_TOKENS), training=True)
    assert len(decoder.losses) == 1
    np.testing.assert_allclose(float(decoder.losses[0]), 1.25, rtol=1e-6)
    # per token: row 0 4 / 3 steps, row 1 1 / 2 steps; mean 11 / 12; lambda 0.5 -> 11 / 24
    per_token = make_decoder(regularization=0.5, penalty_scale="per_token")
    per_token((features, PENALTY_TOKENS), training=True)
    np.testing.assert_allclose(float(per_token.losses[0]), 11 / 24, rtol=1e-6)


@both_placements
def test_the_penalty_is_added_only_in_training():
    decoder = make_decoder()
    features, token_ids = decoder_inputs()
    decoder((features, token_ids), training=False)
    assert decoder.losses == []
    decoder((features, token_ids), training=True)
    assert len(decoder.losses) == 1 and float(decoder.losses[0]) > 0
    decoder((features, token_ids))
    assert decoder.losses == []
    no_penalty = make_decoder(regularization=0.0)
    no_penalty((features, token_ids), training=True)
    assert no_penalty.losses == []


def test_the_penalty_is_zero_when_every_region_gets_one_unit_of_attention():
    """4 regions, 4 real steps, uniform weights 1/4: each region sums to exactly 1."""
    attention = np.full((1, 4, 4), 0.25, dtype="float32")
    token_ids = np.array([[START_ID, 5, 6, 7]], dtype="int32")
    assert float(AttentionDecoder.attention_penalty(attention, token_ids)) == 0.0
    # Looking only at region 0 for all 4 steps: (1 - 4)^2 + 3 * (1 - 0)^2 = 12.
    focused = np.zeros((1, 4, 4), dtype="float32")
    focused[:, :, 0] = 1.0
    assert float(AttentionDecoder.attention_penalty(focused, token_ids)) == pytest.approx(12.0)


# ---- generation ------------------------------------------------------------------------


@both_placements
def test_greedy_decoding_follows_the_decoders_own_argmax():
    decoder = make_decoder("gru")
    features, _ = decoder_inputs(batch=2, regions=6)
    token_ids = np.asarray(generate_token_ids(decoder, features, 6, build_sampler(GenerationConfig())))
    assert token_ids.shape == (2, 6) and np.all(token_ids[:, 0] == START_ID)
    # generation never emits <pad>/<start>/<unk>: compare with the argmax over the other tokens
    logits = np.asarray(forbid_special_tokens(decoder((features, token_ids[:, :-1]), training=False)))  # (2, 5, vocab)
    for row in range(2):
        generated = token_ids[row, 1:].tolist()
        length = generated.index(END_ID) + 1 if END_ID in generated else len(generated)
        np.testing.assert_array_equal(np.argmax(logits[row, :length], axis=-1), generated[:length])


@both_placements
@pytest.mark.parametrize("cell", sorted(CELL_CLASSES))
def test_beam_search_with_width_two_scores_each_beam_by_its_own_image(cell):
    """Every beam's score must be the teacher-forced log-probability of its tokens, given
    its own image's features: the cached features and their projection follow the beams."""
    decoder = make_decoder(cell)
    features, _ = decoder_inputs(batch=2, regions=6)
    sampler = CaptionBeamSampler(num_beams=2, return_all_beams=True)
    token_ids, scores = (np.asarray(part) for part in generate_token_ids(decoder, features, 6, sampler))
    assert token_ids.shape == (2, 2, 6) and scores.shape == (2, 2)
    assert np.all(token_ids[:, :, 0] == START_ID) and np.all((token_ids >= 0) & (token_ids < VOCAB_SIZE))
    for image in range(2):
        logits = decoder((np.repeat(features[image:image + 1], 2, axis=0), token_ids[image, :, :-1]), training=False)
        log_probs = np.asarray(tf.nn.log_softmax(forbid_special_tokens(logits)))  # (beams, 5, vocab)
        for beam in range(2):
            generated = token_ids[image, beam, 1:].tolist()
            length = generated.index(END_ID) + 1 if END_ID in generated else len(generated)
            expected = sum(log_probs[beam, position, generated[position]] for position in range(length))
            np.testing.assert_allclose(scores[image, beam], expected, rtol=1e-4, atol=1e-4)
    best = np.asarray(generate_token_ids(decoder, features, 6, CaptionBeamSampler(num_beams=2)))
    np.testing.assert_array_equal(best, token_ids[:, 0])


@pytest.mark.slow
@both_placements
def test_beam_search_runs_inside_tf_function():
    decoder = make_decoder("gru")
    sampler = CaptionBeamSampler(num_beams=2)
    generate = tf.function(lambda features: generate_token_ids(decoder, features, 6, sampler),
                           input_signature=[tf.TensorSpec((None, 4, 5), tf.float32)])
    features, _ = decoder_inputs(batch=3)
    assert tuple(generate(features).shape) == (3, 6)


# ---- config ----------------------------------------------------------------------------


def test_unknown_decoder_name_is_a_config_error_listing_valid_names():
    with pytest.raises(ConfigError, match=r"unknown decoder 'transformers' \(decoder.name\); valid: rnn, attention, transformer"):
        build_decoder(DecoderConfig(name="transformers"), VOCAB_SIZE)


def test_shapes_attention_experiment_differs_from_the_default_experiment_in_the_decoder_name_only():
    attention = to_dict(load_config(EXPERIMENTS / "shapes_decoders" / "conv_gru_attention.toml"))
    default = to_dict(load_config(EXPERIMENTS / "shapes_conv_gru.toml"))
    assert attention["decoder"]["name"] == "attention"
    differences = {(section, key) for section in default if isinstance(default[section], dict)
                   for key in default[section] if default[section][key] != attention[section][key]}
    assert differences == {("decoder", "name")}  # the inherited image_pooling is unused by attention


# ---- end to end: train, caption, attention picture -------------------------------------


def test_rnn_decoder_has_no_attention_to_show(tmp_path):
    config = tiny_config(tmp_path)
    vocabulary = Vocabulary.build(["a red square"])
    captioner = Captioner(config, build_model(config, vocabulary.size), vocabulary)
    with pytest.raises(ConfigError, match="decoder.name is 'rnn': no attention to show"):
        captioner.attention_maps("unused.png")


def test_tiny_attention_run_trains_and_draws_its_attention(trained_attention_run, tmp_path, capsys):
    run_dir = trained_attention_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["bleu_4"] <= 1
    # how peaked the attention is, on the grid of 8 x 8 regions
    assert metrics["attention_uniform_entropy"] == pytest.approx(np.log(64))
    assert 0 < metrics["attention_entropy"] <= metrics["attention_uniform_entropy"] + 1e-6
    assert 1 / 64 - 1e-6 <= metrics["attention_max_weight"] <= 1 and metrics["attention_words"] > 0

    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image_path)
    maps = Captioner.from_run(run_dir).attention_maps(str(image_path))
    assert maps.attention.shape == (len(maps.words), 8, 8)  # 32 px, two pooling blocks: an 8 x 8 grid
    assert maps.image.shape == (32, 32, 3) and 0 <= maps.image.min() and maps.image.max() <= 1
    np.testing.assert_allclose(maps.attention.sum(axis=(1, 2)), 1.0, atol=1e-5)

    out = tmp_path / "attention.png"
    capsys.readouterr()  # training's report
    code = main(["caption", str(image_path), "--run", str(run_dir), "--attention", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(captured.out.strip().splitlines()) == 1  # the caption, as without --attention
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 0 and picture.height > 0


def test_attention_entropy_and_peak_known_answers():
    """Uniform over 4 regions: entropy log 4, peak 1/4; all on one region: 0 and 1;
    (1/2, 1/2, 0, 0): log 2 and 1/2."""
    attention = np.array([[0.25] * 4, [1.0, 0, 0, 0], [0.5, 0.5, 0, 0]])
    entropy, peak = attention_entropy_and_peak(attention.reshape(3, 2, 2))
    np.testing.assert_allclose(entropy, [np.log(4), 0.0, np.log(2)], atol=1e-12)
    np.testing.assert_allclose(peak, [0.25, 1.0, 0.5])
