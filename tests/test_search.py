"""Greedy decoding through keras-hub's sampler, with a fake decoder whose answer is known."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from captioning.search import build_sampler, generate_token_ids
from captioning.vocabulary import END_ID, PAD_ID, START_ID

VOCAB_SIZE = 10


class TransitionDecoder:
    """Next-token logits depend only on the previous token: logits = table[previous]."""

    def __init__(self, next_token: dict[int, int]):
        table = np.full((VOCAB_SIZE, VOCAB_SIZE), -5.0, dtype="float32")
        for previous, following in next_token.items():
            table[previous, following] = 5.0
        self.table = tf.constant(table)
        self.steps = 0

    def initial_state(self, features, training=None):
        return [tf.zeros((tf.shape(features)[0], 1))]

    def step(self, token_ids, state):
        self.steps += 1
        return tf.gather(self.table, token_ids), [state[0] + 1.0]  # (batch, vocab), state counts steps


def generate(decoder, batch=2, max_length=8):
    features = tf.zeros((batch, 3, 4))
    return np.asarray(generate_token_ids(decoder, features, max_length, build_sampler("greedy")))


def test_greedy_follows_the_most_likely_chain_and_stops_at_the_end_token():
    decoder = TransitionDecoder({START_ID: 5, 5: 6, 6: 7, 7: END_ID, END_ID: 9})
    token_ids = generate(decoder)
    np.testing.assert_array_equal(token_ids[0], [START_ID, 5, 6, 7, END_ID, PAD_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(token_ids[0], token_ids[1])
    assert decoder.steps == 4  # one decoder step per generated token, none after every row ended


def test_greedy_stops_at_the_maximum_length_without_an_end_token():
    decoder = TransitionDecoder({START_ID: 5, 5: 6, 6: 5})
    token_ids = generate(decoder, max_length=6)
    np.testing.assert_array_equal(token_ids[0], [START_ID, 5, 6, 5, 6, 5])
    assert decoder.steps == 5


def test_rows_decode_independently():
    """Row-specific state: the first image's features steer it to token 8, the second's to 5."""

    class FeatureDecoder(TransitionDecoder):
        def initial_state(self, features, training=None):
            return [features[:, 0, :1]]  # (batch, 1): 0 or 1

        def step(self, token_ids, state):
            logits, _ = super().step(token_ids, state)
            start_logits = tf.where(state[0] > 0.5, tf.one_hot(8, VOCAB_SIZE) * 20, tf.one_hot(5, VOCAB_SIZE) * 20)
            is_start = tf.equal(token_ids, START_ID)[:, None]
            return tf.where(is_start, start_logits, logits), state

    decoder = FeatureDecoder({5: END_ID, 8: END_ID})
    features = tf.constant(np.array([[[1.0]], [[0.0]]], dtype="float32"))
    token_ids = np.asarray(generate_token_ids(decoder, features, 4, build_sampler("greedy")))
    np.testing.assert_array_equal(token_ids, [[START_ID, 8, END_ID, PAD_ID], [START_ID, 5, END_ID, PAD_ID]])
