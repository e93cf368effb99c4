"""Greedy and beam decoding through keras-hub's samplers, with fake decoders whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from captioning.config import ConfigError, GenerationConfig
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID, UNKNOWN_ID
from captioning.models.search import (
    SAMPLERS,
    CaptionBeamSampler,
    build_sampler,
    build_top_beams_sampler,
    generate_token_ids,
)

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

    # The decoders' sampler interface, as RNNDecoder implements it over initial_state / step.
    def initial_cache(self, features):
        return {"state": tuple(self.initial_state(features))}

    def step_cache(self, token_ids, cache):
        logits, state = self.step(token_ids, cache["state"])
        return logits, {"state": tuple(state)}


def generate(decoder, batch=2, max_length=8):
    features = tf.zeros((batch, 3, 4))
    return np.asarray(generate_token_ids(decoder, features, max_length, build_sampler(GenerationConfig(sampler="greedy"))))


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
    token_ids = np.asarray(generate_token_ids(decoder, features, 4, build_sampler(GenerationConfig(sampler="greedy"))))
    np.testing.assert_array_equal(token_ids, [[START_ID, 8, END_ID, PAD_ID], [START_ID, 5, END_ID, PAD_ID]])


# ---- beam search ----------------------------------------------------------------------


class MarkovDecoder(TransitionDecoder):
    """Next-token probabilities depend only on the previous token: ``probabilities[previous]``
    maps tokens to probabilities summing to 1; every other token gets logit -30 (p ~ 1e-13,
    invisible in float32 log-probabilities), and an unlisted row is uniform (p = 0.1)."""

    def __init__(self, probabilities: dict[int, dict[int, float]]):
        super().__init__({})
        table = np.full((VOCAB_SIZE, VOCAB_SIZE), -30.0, dtype="float32")
        for previous, row in probabilities.items():
            assert math.isclose(sum(row.values()), 1.0)
            for token, probability in row.items():
                table[previous, token] = math.log(probability)
        self.table = tf.constant(table)


W4, W5, W6, W7, W8, W9 = 4, 5, 6, 7, 8, 9  # word ids (0-3 are <pad>, <start>, <end>, <unk>)

# Greedy's first word leads nowhere likely: <start> 4 8 <end> = 0.6 * 0.4 * 1 = 0.24,
# while <start> 5 9 <end> = 0.4 * 0.9 * 1 = 0.36. Width 2 keeps 5 after step one
# (0.6, 0.4), then ranks 5 9 (0.36) > 4 8 (0.24) > 4 6 = 4 7 (0.18) > 5 6 (0.04).
GREEDY_IS_WRONG = {
    START_ID: {W4: 0.6, W5: 0.4},
    W4: {W6: 0.3, W7: 0.3, W8: 0.4},
    W5: {W9: 0.9, W6: 0.1},
    W6: {END_ID: 1.0}, W7: {END_ID: 1.0}, W8: {END_ID: 1.0}, W9: {END_ID: 1.0},
}

# Width 2: <start> 4 6 <end> = 0.7 after three steps; <start> 5 <end> = 0.3 ends after two.
ENDS_AT_STEP_THREE = {START_ID: {W4: 0.7, W5: 0.3}, W4: {W6: 1.0}, W6: {END_ID: 1.0}, W5: {END_ID: 1.0}}


def decode(decoder, sampler, max_length=8, features=None):
    features = tf.zeros((1, 1, 1)) if features is None else features  # (batch, regions, channels)
    result = generate_token_ids(decoder, features, max_length, sampler)
    return tuple(np.asarray(part) for part in result) if isinstance(result, tuple) else np.asarray(result)


def up_to_end(token_ids):
    """A row's tokens up to and including the first <end> (what Vocabulary.decode reads)."""
    token_ids = list(token_ids)
    return token_ids[: token_ids.index(END_ID) + 1] if END_ID in token_ids else token_ids


def greedy():
    return build_sampler(GenerationConfig(sampler="greedy"))


def beam(width, length_penalty=0.0, return_all_beams=False):
    return CaptionBeamSampler(num_beams=width, length_penalty=length_penalty, return_all_beams=return_all_beams)


def test_beam_finds_the_likelier_caption_greedy_misses():
    decoder = MarkovDecoder(GREEDY_IS_WRONG)
    np.testing.assert_array_equal(decode(decoder, greedy(), max_length=6)[0], [START_ID, W4, W8, END_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(decode(decoder, beam(2), max_length=6)[0], [START_ID, W5, W9, END_ID, PAD_ID, PAD_ID])


NEVER_ENDS = {START_ID: {W5: 0.8, W6: 0.2}, W5: {W6: 0.6, W7: 0.4}, W6: {W5: 1.0}}


@pytest.mark.parametrize("table", [GREEDY_IS_WRONG, ENDS_AT_STEP_THREE, NEVER_ENDS])
def test_beam_width_one_is_greedy(table):
    greedy_ids = decode(MarkovDecoder(table), greedy())[0]
    beam_ids = decode(MarkovDecoder(table), beam(1))[0]
    assert up_to_end(beam_ids) == up_to_end(greedy_ids)


def test_a_finished_beam_is_frozen_at_its_score():
    """<start> 4 <end> = 0.7 * 0.6 = 0.42 beats <start> 5 7 <end> = 0.3 and <start> 4 6 <end> = 0.28.

    Step two keeps 4 <end> (0.42) and 5 7 (0.3); step three must only pad the finished beam.
    keras-hub's own BeamSampler extends it with the uniform row after <end> (0.42 * 0.1 = 0.042
    per token), so it returns 5 7 <end> (0.3) first: this test fails on it.
    """
    decoder = MarkovDecoder({START_ID: {W4: 0.7, W5: 0.3}, W4: {END_ID: 0.6, W6: 0.4}, W6: {END_ID: 1.0},
                             W5: {W7: 1.0}, W7: {END_ID: 1.0}})  # the row after <end> is uniform
    token_ids, scores = decode(decoder, CaptionBeamSampler(num_beams=2, return_all_beams=True), max_length=6)
    np.testing.assert_array_equal(token_ids[0], [[START_ID, W4, END_ID, PAD_ID, PAD_ID, PAD_ID],
                                                 [START_ID, W5, W7, END_ID, PAD_ID, PAD_ID]])
    np.testing.assert_allclose(scores[0], [math.log(0.42), math.log(0.3)], rtol=1e-5)  # -0.8675, -1.2040


# Short <start> 4 <end> = 0.55 (2 generated tokens); long <start> 5 6 7 8 <end> = 0.45 (5 tokens).
SHORT_OR_LONG = {START_ID: {W4: 0.55, W5: 0.45}, W4: {END_ID: 1.0}, W5: {W6: 1.0}, W6: {W7: 1.0}, W7: {W8: 1.0},
                 W8: {END_ID: 1.0}}
SHORT = [START_ID, W4, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
LONG = [START_ID, W5, W6, W7, W8, END_ID, PAD_ID, PAD_ID]


def test_without_a_length_penalty_the_short_caption_wins():
    # alpha = 0: plain sums, log 0.55 = -0.5978 > log 0.45 = -0.7985.
    token_ids, scores = decode(MarkovDecoder(SHORT_OR_LONG), beam(2, 0.0, return_all_beams=True))
    np.testing.assert_array_equal(token_ids[0], [SHORT, LONG])
    np.testing.assert_allclose(scores[0], [-0.597837, -0.798508], rtol=1e-5)


def test_a_length_penalty_lets_the_long_caption_win():
    # alpha = 1: short -0.597837 / ((5 + 2) / 6) = -0.512432; long -0.798508 / ((5 + 5) / 6) = -0.479105.
    token_ids, scores = decode(MarkovDecoder(SHORT_OR_LONG), beam(2, 1.0, return_all_beams=True))
    np.testing.assert_array_equal(token_ids[0], [LONG, SHORT])
    np.testing.assert_allclose(scores[0], [-0.479105, -0.512432], rtol=1e-5)
    np.testing.assert_array_equal(decode(MarkovDecoder(SHORT_OR_LONG), beam(2, 1.0))[0], LONG)


def test_beam_search_stops_once_every_beam_has_ended():
    decoder = MarkovDecoder(ENDS_AT_STEP_THREE)
    token_ids = decode(decoder, beam(2))
    np.testing.assert_array_equal(token_ids[0], [START_ID, W4, W6, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID])
    assert decoder.steps == 3  # 4, 6, <end>: no step after both beams ended


def test_beam_search_stops_at_the_maximum_length():
    # 4 and 5 alternate forever: <start> 4 5 4 5 = 0.7, <start> 5 4 5 4 = 0.3, four tokens each.
    decoder = MarkovDecoder({START_ID: {W4: 0.7, W5: 0.3}, W4: {W5: 1.0}, W5: {W4: 1.0}})
    token_ids, scores = decode(decoder, beam(2, return_all_beams=True), max_length=5)
    np.testing.assert_array_equal(token_ids[0], [[START_ID, W4, W5, W4, W5], [START_ID, W5, W4, W5, W4]])
    np.testing.assert_allclose(scores[0], [math.log(0.7), math.log(0.3)], rtol=1e-5)
    assert decoder.steps == 4


class TwoImageDecoder(MarkovDecoder):
    """Image 0 (feature 0) follows GREEDY_IS_WRONG, image 1 (feature 1) ENDS_AT_STEP_THREE;
    the state carries the feature, so each beam must keep its own image's state."""

    def __init__(self):
        super().__init__(GREEDY_IS_WRONG)
        self.other_table = MarkovDecoder(ENDS_AT_STEP_THREE).table

    def initial_state(self, features, training=None):
        return [features[:, 0, :1]]  # (batch, 1): 0 or 1

    def step(self, token_ids, state):
        self.steps += 1
        logits = tf.where(state[0] > 0.5, tf.gather(self.other_table, token_ids), tf.gather(self.table, token_ids))
        return logits, state


def test_images_in_a_batch_decode_independently():
    features = tf.constant([[[0.0]], [[1.0]]])  # (2, 1, 1)
    token_ids, scores = decode(TwoImageDecoder(), beam(2, return_all_beams=True), features=features)
    for image in range(2):
        alone_ids, alone_scores = decode(TwoImageDecoder(), beam(2, return_all_beams=True), features=features[image:image + 1])
        np.testing.assert_array_equal(token_ids[image], alone_ids[0])
        np.testing.assert_allclose(scores[image], alone_scores[0])
    np.testing.assert_array_equal(token_ids[:, 0], [[START_ID, W5, W9, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                                                    [START_ID, W4, W6, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])


def test_all_beams_come_sorted_best_first():
    # Width 3: after step one 4 (0.5), 5 (0.3), 6 (0.2); step two keeps 4 7 (0.4), 5 <end> (0.3),
    # 6 <end> (0.2) over 4 <end> (0.1); step three ends 4 7 <end> (0.4).
    decoder = MarkovDecoder({START_ID: {W4: 0.5, W5: 0.3, W6: 0.2}, W4: {END_ID: 0.2, W7: 0.8}, W7: {END_ID: 1.0},
                             W5: {END_ID: 1.0}, W6: {END_ID: 1.0}})
    token_ids, scores = decode(decoder, beam(3, return_all_beams=True), max_length=5)
    np.testing.assert_array_equal(token_ids[0], [[START_ID, W4, W7, END_ID, PAD_ID], [START_ID, W5, END_ID, PAD_ID, PAD_ID],
                                                 [START_ID, W6, END_ID, PAD_ID, PAD_ID]])
    np.testing.assert_allclose(scores[0], [-0.916291, -1.203973, -1.609438], rtol=1e-5)  # log 0.4, 0.3, 0.2
    assert np.all(np.diff(scores[0]) <= 0)


@pytest.mark.slow
def test_beam_search_runs_inside_tf_function_with_any_batch_size():
    """The captioner wraps decoding in tf.function; the batch dimension is then unknown."""
    decoder = TwoImageDecoder()
    sampler = beam(2)
    generate = tf.function(lambda features: generate_token_ids(decoder, features, 8, sampler),
                           input_signature=[tf.TensorSpec((None, 1, 1), tf.float32)])
    features = tf.constant([[[0.0]], [[1.0]]])
    np.testing.assert_array_equal(generate(features).numpy(), decode(TwoImageDecoder(), beam(2), features=features))


def test_samplers_are_built_from_the_generation_section():
    assert set(SAMPLERS) == {"greedy", "beam", "top_k", "top_p"}
    sampler = build_sampler(GenerationConfig(sampler="beam", beam_width=5, length_penalty=0.6))
    assert isinstance(sampler, CaptionBeamSampler)
    assert (sampler.num_beams, sampler.length_penalty, sampler.return_all_beams) == (5, 0.6, False)
    top = build_top_beams_sampler(GenerationConfig(beam_width=3), top=5)
    assert (top.num_beams, top.return_all_beams) == (5, True)  # widened to show five beams
    assert CaptionBeamSampler.from_config(sampler.get_config()).length_penalty == 0.6


@pytest.mark.parametrize("generation, message", [
    (GenerationConfig(sampler="beem"), "valid: greedy, beam"),
    (GenerationConfig(sampler="beam", beam_width=0), "beam_width"),
    (GenerationConfig(sampler="beam", length_penalty=-1.0), "length_penalty"),
    (GenerationConfig(sampler="top_k", top_k=0), "top_k"),
    (GenerationConfig(sampler="top_p", top_p=0.0), "top_p"),
    (GenerationConfig(sampler="top_p", top_p=1.5), "top_p"),
    (GenerationConfig(sampler="top_k", temperature=0.0), "temperature"),
])
def test_bad_generation_settings_are_config_errors(generation, message):
    with pytest.raises(ConfigError, match=message):
        build_sampler(generation)


def test_special_tokens_are_never_generated():
    """<unk> (3) is the most likely token after <start>, then 5: greedy must say 5."""
    decoder = TransitionDecoder({START_ID: UNKNOWN_ID, 5: END_ID, UNKNOWN_ID: END_ID})
    decoder.table = tf.tensor_scatter_nd_update(decoder.table, [[START_ID, 5]], [4.0])  # second best after <unk>
    token_ids = generate(decoder, batch=1, max_length=5)
    np.testing.assert_array_equal(token_ids[0], [START_ID, 5, END_ID, PAD_ID, PAD_ID])


# ---- n-gram blocking ------------------------------------------------------------------

# 5 6 7 loops; after 6, <end> is the runner-up (logit 0 against 7's 5).
LOOP_WITH_AN_EXIT = {START_ID: 5, 5: 6, 6: 7, 7: 5}


def loop_decoder():
    decoder = TransitionDecoder(LOOP_WITH_AN_EXIT)
    decoder.table = tf.tensor_scatter_nd_update(decoder.table, [[6, END_ID]], [0.0])
    return decoder


@pytest.mark.parametrize("make_sampler", [
    lambda size: build_sampler(GenerationConfig(sampler="greedy", no_repeat_ngram_size=size)),
    lambda size: build_sampler(GenerationConfig(sampler="beam", beam_width=2, no_repeat_ngram_size=size)),
], ids=["greedy", "beam"])
def test_trigram_blocking_stops_a_loop_at_the_repeat(make_sampler):
    looping = decode(loop_decoder(), make_sampler(0), max_length=8)
    np.testing.assert_array_equal(looping[0], [START_ID, 5, 6, 7, 5, 6, 7, 5])  # "5 6 7" twice: allowed at 0
    blocked = decode(loop_decoder(), make_sampler(3), max_length=8)
    # "5 6" again may not be followed by 7; the runner-up <end> is taken instead.
    np.testing.assert_array_equal(up_to_end(blocked[0]), [START_ID, 5, 6, 7, 5, 6, END_ID])


def test_bigram_blocking_bans_the_follower_of_an_earlier_prefix():
    from captioning.models.search import repeated_ngram_tokens

    prompt = tf.constant([[START_ID, 5, 6, 5, PAD_ID, PAD_ID],  # prefix 5 once followed by 6
                          [START_ID, 7, 8, 9, PAD_ID, PAD_ID]])  # prefix 9 never seen before
    banned = np.asarray(repeated_ngram_tokens(prompt, 4, 2, VOCAB_SIZE))
    assert banned.shape == (2, VOCAB_SIZE)
    assert np.flatnonzero(banned[0]).tolist() == [6]
    assert not banned[1].any()
    # Trigrams: the prefix (6, 5) has not occurred before, so nothing is banned.
    assert not np.asarray(repeated_ngram_tokens(prompt, 4, 3, VOCAB_SIZE)).any()
    # Only tokens before index count: at index 2 the prefix is 5 (position 1) and nothing precedes it.
    assert not np.asarray(repeated_ngram_tokens(prompt, 2, 2, VOCAB_SIZE)).any()


def test_blocking_settings_reach_both_samplers_and_survive_get_config():
    for sampler_name in ("greedy", "beam", "top_k", "top_p"):
        sampler = build_sampler(GenerationConfig(sampler=sampler_name, no_repeat_ngram_size=3))
        assert sampler.no_repeat_ngram_size == 3
        assert type(sampler).from_config(sampler.get_config()).no_repeat_ngram_size == 3
    assert build_top_beams_sampler(GenerationConfig(no_repeat_ngram_size=3), top=2).no_repeat_ngram_size == 3
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        build_sampler(GenerationConfig(no_repeat_ngram_size=-1))


# ---- top-k and top-p sampling ---------------------------------------------------------

# After <start>: 5 (0.5), 6 (0.3), 7 (0.2); each word then ends the caption.
THREE_FIRST_WORDS = {START_ID: {W5: 0.5, W6: 0.3, W7: 0.2}, W5: {END_ID: 1.0}, W6: {END_ID: 1.0}, W7: {END_ID: 1.0}}


def first_words(generation, rows=300):
    """The first generated word of ``rows`` captions sampled from THREE_FIRST_WORDS."""
    token_ids = decode(MarkovDecoder(THREE_FIRST_WORDS), build_sampler(generation), max_length=4,
                       features=tf.zeros((rows, 1, 1)))
    assert (token_ids[:, 2] == END_ID).all()
    return token_ids[:, 1]


@pytest.mark.parametrize("generation, allowed", [
    (GenerationConfig(sampler="top_k", top_k=2), {W5, W6}),
    (GenerationConfig(sampler="top_k", top_k=3), {W5, W6, W7}),
    (GenerationConfig(sampler="top_p", top_p=0.6), {W5, W6}),  # 0.5 < 0.6: the nucleus needs 6 as well
    (GenerationConfig(sampler="top_p", top_p=0.4), {W5}),
], ids=["top_k=2", "top_k=3", "top_p=0.6", "top_p=0.4"])
def test_sampling_draws_from_the_likeliest_words_only_and_from_all_of_them(generation, allowed):
    words = first_words(generation)
    assert set(words.tolist()) == allowed  # 300 draws: a missing word has probability below 1e-20
    if generation.sampler == "top_k" and generation.top_k == 3:
        assert 0.4 < np.mean(words == W5) < 0.6  # the model's own probability, 0.5


def test_top_k_of_one_is_greedy_even_where_greedy_is_wrong():
    sampled = decode(MarkovDecoder(GREEDY_IS_WRONG), build_sampler(GenerationConfig(sampler="top_k", top_k=1)))
    assert up_to_end(sampled[0]) == up_to_end(decode(MarkovDecoder(GREEDY_IS_WRONG), greedy())[0])
    assert up_to_end(sampled[0]) == [START_ID, W4, W8, END_ID]


def test_the_seed_makes_samples_repeatable():
    first = first_words(GenerationConfig(sampler="top_k", top_k=3, seed=7))
    again = first_words(GenerationConfig(sampler="top_k", top_k=3, seed=7))
    other = first_words(GenerationConfig(sampler="top_k", top_k=3, seed=8))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_sampling_also_blocks_repeated_trigrams():
    sampler = build_sampler(GenerationConfig(sampler="top_k", top_k=1, no_repeat_ngram_size=3))
    np.testing.assert_array_equal(up_to_end(decode(loop_decoder(), sampler, max_length=8)[0]),
                                  [START_ID, 5, 6, 7, 5, 6, END_ID])
