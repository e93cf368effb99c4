"""Caption generation with keras-hub samplers over a one-token decoder step.

The sampler calls ``next(prompt, cache, index)`` and expects the logits of the token at
``index``; the cache carries the RNN state (and, for attention decoders, the features),
so each step costs one decoder step, not a re-run of the prefix. keras-hub's BeamSampler
repeats and reorders every tensor of the cache per beam, so the same step serves beams.
"""

from __future__ import annotations

import keras_hub
import tensorflow as tf
from keras import ops

from captioning.config import ConfigError
from captioning.vocabulary import END_ID, PAD_ID, START_ID

SAMPLERS = {"greedy": keras_hub.samplers.GreedySampler}


def build_sampler(name: str):
    if name not in SAMPLERS:
        raise ConfigError(f"unknown generation.sampler '{name}'; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


def make_step(decoder):
    """The sampler's ``next``: cache = {"state": tuple of (batch, units)}."""

    def next_token_logits(prompt, cache, index):
        previous_tokens = prompt[:, index - 1]  # (batch,)
        logits, state = decoder.step(previous_tokens, cache["state"])  # (batch, vocab)
        return logits, None, {"state": tuple(state)}

    return next_token_logits


def generate_token_ids(decoder, features, max_length: int, sampler) -> tf.Tensor:
    """features: (batch, regions, channels) -> token ids (batch, max_length) int32.

    Position 0 holds <start>; everything after the first <end> is meaningless (the sampler
    keeps going until every row has ended) and ``Vocabulary.decode`` drops it.
    """
    batch = ops.shape(features)[0]
    prompt = tf.concat(
        [tf.fill((batch, 1), START_ID), tf.fill((batch, max_length - 1), PAD_ID)], axis=1
    )  # (batch, max_length)
    mask = tf.concat([tf.ones((batch, 1), tf.bool), tf.zeros((batch, max_length - 1), tf.bool)], axis=1)
    cache = {"state": tuple(decoder.initial_state(features, training=False))}
    return sampler(make_step(decoder), prompt, cache=cache, index=1, mask=mask, stop_token_ids=(END_ID,))
