"""Decoder training that does less work per real token: the loss on real tokens only, and
batches bucketed by caption length and trimmed to their longest caption."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from captioning.data.pipeline import caption_lengths, feature_dataset
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID
from captioning.models.caption_model import build_feature_model, compile_model

VOCAB_SIZE = 13


def padded_captions(images, captions=3, length=9, seed=0):
    """(images, captions, length) int32: <start>, 1 to length - 2 words, <end>, padding."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((images, captions, length), dtype=np.int32)
    for image in range(images):
        for caption in range(captions):
            words = int(rng.integers(1, length - 1))
            tokens[image, caption, 0] = START_ID
            tokens[image, caption, 1:words + 1] = rng.integers(4, VOCAB_SIZE, words)
            tokens[image, caption, words + 1] = END_ID
    return tokens


DECODER_SETTINGS = {"rnn": ["decoder.name=rnn"], "attention": ["decoder.name=attention"],
                    "attention_output": ["decoder.name=attention", "decoder.attention_placement=output"],
                    "attention_between": ["decoder.name=attention", "decoder.attention_placement=between"]}


@pytest.mark.slow
@pytest.mark.parametrize("decoder", list(DECODER_SETTINGS))
@pytest.mark.parametrize("jit_compile", [False, True])
def test_token_loss_equals_the_masked_loss_over_every_position(tmp_path, decoder, jit_compile):
    """Known answer: the output layer on the real tokens alone gives the loss of the full
    logits with padding masked (Keras' ignore_class), plus the attention penalty."""
    keras.utils.set_random_seed(0)
    config = tiny_config(tmp_path, *DECODER_SETTINGS[decoder], f"runtime.jit_compile={str(jit_compile).lower()}")
    model = build_feature_model(config, VOCAB_SIZE, (4, 8))
    compile_model(model, config.runtime, config.training.learning_rate)
    tokens = padded_captions(2)
    inputs = {"features": np.random.default_rng(1).normal(size=(2, 4, 8)).astype("float32"),
              "captions": tokens[:, :, :-1]}
    targets = tokens[:, :, 1:]
    logits = model(inputs, training=False)  # (2, 3, 8, vocab)
    masked = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)
    expected = float(masked(targets, logits))
    assert float(model.token_loss(inputs, targets, training=False)) == pytest.approx(expected, rel=1e-5)
    if decoder != "rnn":  # in training, the doubly stochastic penalty is added to it
        model.decoder.dropout.rate = model.decoder.head.dropout.rate = 0.0  # so training=True changes nothing else
        rows = np.repeat(inputs["features"], 3, axis=0), tokens[:, :, :-1].reshape(6, -1)
        _, attention = model.decoder(rows, training=False, return_attention=True)
        penalty = float(model.decoder.attention_penalty(attention, rows[1], per_token=True))  # the default scale
        trained = float(model.token_loss(inputs, targets, training=True))
        assert penalty > 0.1 and trained == pytest.approx(expected + penalty, rel=1e-5)


@pytest.mark.parametrize("decoder", list(DECODER_SETTINGS))
def test_real_token_outputs_match_every_position(tmp_path, decoder):
    """Known answer: a decoder's outputs and attention at the real positions alone
    (sequence_outputs with ``real``; OutputAttentionDecoder attends there only) equal its
    outputs over every position with the padding dropped, and so do the gradients of every
    weight through them and through the attention penalty."""
    keras.utils.set_random_seed(0)
    config = tiny_config(tmp_path, *DECODER_SETTINGS[decoder], "decoder.dropout=0")
    decoder_model = build_feature_model(config, VOCAB_SIZE, (4, 8)).decoder
    tokens = padded_captions(2)
    token_ids = tokens[:, :, :-1].reshape(6, -1)
    real = tokens[:, :, 1:].reshape(6, -1) != PAD_ID
    assert 0 < real.mean() < 1
    features = tf.constant(np.random.default_rng(1).normal(size=(2, 4, 8)).astype("float32"))
    weights = tf.constant(np.random.default_rng(2).normal(size=(int(real.sum()), VOCAB_SIZE)).astype("float32"))

    def outputs_and_gradients(every_position: bool):
        with tf.GradientTape() as tape:
            outputs, attention = decoder_model((features, token_ids), training=True, captions_per_image=3,
                                               output_layer=False, real=None if every_position else real)
            if every_position:
                outputs = tf.boolean_mask(outputs, real)
                attention = None if attention is None else tf.boolean_mask(attention, real)
            logits = decoder_model.output_logits(outputs)  # (real tokens, vocab)
            loss = tf.reduce_sum(logits * weights) + sum(decoder_model.losses)
        return outputs, attention, loss, tape.gradient(loss, decoder_model.trainable_weights)

    expected, real_only = outputs_and_gradients(True), outputs_and_gradients(False)
    np.testing.assert_allclose(real_only[0], expected[0], rtol=1e-5, atol=1e-6)
    if decoder != "rnn":
        np.testing.assert_allclose(real_only[1], expected[1], rtol=1e-5, atol=1e-6)
        assert len(decoder_model.losses) == 1  # the penalty, in both
    np.testing.assert_allclose(float(real_only[2]), float(expected[2]), rtol=1e-5)
    for variable, gradient, expected_gradient in zip(decoder_model.trainable_weights, real_only[3], expected[3]):
        expected_gradient = tf.convert_to_tensor(expected_gradient)
        assert expected_gradient is not None and float(tf.reduce_max(tf.abs(expected_gradient))) > 0, variable.path
        np.testing.assert_allclose(tf.convert_to_tensor(gradient), expected_gradient, rtol=1e-4, atol=1e-6,
                                   err_msg=variable.path)


def test_feature_batches_are_trimmed_to_their_longest_caption_and_cover_every_image_once():
    tokens = padded_captions(40, length=12, seed=2)
    features = np.arange(40, dtype=np.float16)[:, None, None] * np.ones((40, 2, 3), dtype=np.float16)
    seen = []
    for inputs, targets in feature_dataset(features, tokens, batch_size=4, shuffle=True, seed=0):
        images = np.asarray(inputs["features"])[:, 0, 0].astype(int)  # each image's own number
        seen.extend(images)
        longest = caption_lengths(tokens[images]).max()
        assert inputs["captions"].shape[2] == targets.shape[2] == longest - 1
        np.testing.assert_array_equal(np.asarray(inputs["captions"]), tokens[images, :, :longest - 1])
        np.testing.assert_array_equal(np.asarray(targets), tokens[images, :, 1:longest])
    assert sorted(seen) == list(range(40))


def test_length_buckets_group_images_of_similar_caption_length():
    """Bucketed training batches are much shorter than the unbucketed batches of the same
    data; the seed repeats the order and another seed changes it."""
    tokens = padded_captions(512, captions=1, length=24, seed=3)
    features = np.zeros((512, 1, 1), dtype=np.float16)

    def batch_lengths(bucket, seed=0):
        dataset = feature_dataset(features, tokens, batch_size=8, shuffle=True, seed=seed, bucket=bucket)
        return [int(inputs["captions"].shape[2]) for inputs, _ in dataset]

    bucketed, plain = batch_lengths(True), batch_lengths(False)
    assert np.mean(bucketed) < 0.75 * np.mean(plain), (np.mean(bucketed), np.mean(plain))
    assert batch_lengths(True) == bucketed and batch_lengths(True, seed=1) != bucketed  # the seed repeats


@pytest.mark.parametrize("rows", [[0, 0, 1, 3, 3, 3], [1, 2, 2]], ids=["every_row_to_the_last", "first_and_last_rows_untaken"])
def test_take_sorted_rows_gives_tf_gathers_values_and_gradient(rows):
    """Known answer: tf.gather's values and gradient, also when rows at either end are never taken."""
    from captioning.models.decoder_base import take_sorted_rows

    values = tf.constant(np.random.default_rng(0).normal(size=(4, 3, 2)), dtype=tf.float32)
    weights = tf.constant(np.random.default_rng(1).normal(size=(len(rows), 3, 2)), dtype=tf.float32)
    indices = tf.constant(rows, dtype=tf.int64)
    results = {}
    for name, take in {"gather": lambda v: tf.gather(v, indices), "sorted": lambda v: take_sorted_rows(v, indices)}.items():
        with tf.GradientTape() as tape:
            tape.watch(values)
            taken = take(values)
            loss = tf.reduce_sum(tf.tanh(taken) * weights)
        results[name] = (taken.numpy(), tf.convert_to_tensor(tape.gradient(loss, values)).numpy())
    np.testing.assert_allclose(results["sorted"][0], results["gather"][0])
    np.testing.assert_allclose(results["sorted"][1], results["gather"][1], rtol=1e-6)
    untaken = [row for row in range(4) if row not in rows]
    assert np.all(results["sorted"][1][untaken] == 0) and np.all(np.delete(results["sorted"][1], untaken, axis=0) != 0)
