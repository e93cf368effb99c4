"""Caption generation with keras-hub samplers over a one-token decoder step.

The sampler calls ``next(prompt, cache, index)`` and expects the logits of the token at
``index``; the cache carries the RNN state (and, for attention decoders, the features),
so each step costs one decoder step, not a re-run of the prefix. keras-hub's BeamSampler
repeats and reorders every tensor of the cache per beam, so the same step serves beams.

Every sampler here can also refuse to repeat an n-gram (``generation.no_repeat_ngram_size``):
the wrapped ``next`` sets to -1e9 the logit of any token that would complete an n-gram the
row already holds (Paulus et al., 2018 block repeated trigrams in beam search), against
LSTM captions such as "a man in a white shirt and a white shirt and a white shirt".
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras import ops, tree
from keras_hub.src.utils.tensor_utils import any_equal

from captioning.config import ConfigError, GenerationConfig
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID, UNKNOWN_ID


class CaptionBeamSampler(keras_hub.samplers.BeamSampler):
    """keras-hub's beam search with finished beams frozen and a GNMT length penalty.

    ``__call__`` is keras-hub 0.32's ``BeamSampler.__call__`` with three changes, each
    marked ``CHANGED`` below:

    1. A beam whose prompt holds a generated stop token is frozen: its only continuation
       is ``pad_token_id`` with log-probability 0, every other token gets -inf. keras-hub
       keeps extending finished beams, so tokens after <end> keep adding log-probabilities
       to their score (and one finished beam can fill several beam slots).
    2. The final ranking divides each beam's summed log-probability by the GNMT length
       penalty ``((5 + length) / 6) ** length_penalty`` (Wu et al., 2016), where length
       counts generated tokens up to and including the first stop token. keras-hub ranks
       by the plain sum, which favours short captions; ``length_penalty=0`` keeps that.
    3. Log-probabilities come from ``log_softmax`` rather than ``log(softmax)``, which
       underflows to -inf for unlikely tokens.

    Returns the best beam, (batch, max_length); with ``return_all_beams`` the beams
    (batch, num_beams, max_length) and their penalized scores (batch, num_beams) float32,
    both sorted best first.
    """

    def __init__(self, num_beams=5, return_all_beams=False, length_penalty=0.0, pad_token_id=PAD_ID,
                 no_repeat_ngram_size=0, **kwargs):
        super().__init__(num_beams=num_beams, return_all_beams=return_all_beams, **kwargs)
        self.length_penalty = length_penalty
        self.pad_token_id = pad_token_id
        self.no_repeat_ngram_size = no_repeat_ngram_size

    def __call__(self, next, prompt, cache=None, index=0, mask=None, stop_token_ids=None, hidden_states=None, model=None):
        next = block_repeated_ngrams(next, self.no_repeat_ngram_size)  # (a no-op at size 0)
        batch_size, max_length = ops.shape(prompt)[0], ops.shape(prompt)[1]
        index = ops.cast(index, "int32")
        start_index = index  # CHANGED (2): lengths are counted from here

        def create_beams(x):
            return ops.repeat(x, self.num_beams, axis=0)

        def flatten_beams(x):
            return ops.reshape(x, (-1,) + ops.shape(x)[2:])

        def unflatten_beams(x):
            return ops.reshape(x, (-1, self.num_beams) + ops.shape(x)[1:])

        mask = ops.zeros_like(prompt, dtype="bool") if mask is None else ops.cast(mask, dtype="bool")
        has_cache = cache is not None
        cache = cache if has_cache else ()
        prompt, mask = create_beams(prompt), create_beams(mask)  # (batch * beams, max_length)
        cache = tree.map_structure(create_beams, cache)
        # On the first step only the original beam is considered.
        log_probs = ops.array([[0.0] + [-1e9] * (self.num_beams - 1)], dtype="float32")
        log_probs = flatten_beams(ops.broadcast_to(log_probs, (batch_size, self.num_beams)))  # (batch * beams,)

        def has_ended(prompt, mask):
            """(batch * beams,) bool: a stop token was generated (outside the given prompt)."""
            if stop_token_ids is None:
                return ops.zeros((ops.shape(prompt)[0],), dtype="bool")
            return ops.any(any_equal(prompt, stop_token_ids, ops.logical_not(mask)), axis=-1)

        def cond(prompt, cache, index, mask, log_probs):
            return ops.logical_not(ops.all(has_ended(prompt, mask)))

        def body(prompt, cache, index, mask, log_probs):
            logits, _, cache = next(prompt, cache, index)
            vocab_size = ops.shape(logits)[-1]
            # CHANGED (3): log_softmax, not log(softmax).
            token_log_probs = ops.log_softmax(ops.cast(logits, "float32") / self.temperature)  # (batch * beams, vocab)
            # CHANGED (1): a finished beam continues only with padding, at no cost.
            frozen = ops.where(ops.equal(ops.arange(vocab_size), self.pad_token_id), 0.0, float("-inf"))  # (vocab,)
            ended = has_ended(prompt, mask)[:, None]
            token_log_probs = ops.where(ended, frozen[None, :], token_log_probs)

            next_log_probs = token_log_probs + log_probs[..., None]
            next_log_probs = ops.reshape(next_log_probs, [-1, self.num_beams * vocab_size])
            next_log_probs, indices = ops.top_k(next_log_probs, k=self.num_beams, sorted=False)
            beam_indices = indices // vocab_size  # (batch, beams): which beam each survivor extends
            next_token = flatten_beams(indices % vocab_size)
            next_log_probs = flatten_beams(next_log_probs)
            if keras.config.backend() == "tensorflow":
                log_probs = tf.ensure_shape(next_log_probs, log_probs.shape)  # keras-hub's top_k shape work-around
            else:
                log_probs = next_log_probs

            def gather_beams(x):
                x = unflatten_beams(x)
                indices = beam_indices
                for axis in range(2, len(x.shape)):
                    indices = ops.expand_dims(indices, axis=axis)
                return flatten_beams(ops.take_along_axis(x, indices, axis=1))

            prompt = gather_beams(prompt)
            if has_cache:
                cache = tree.map_structure(gather_beams, cache)
            next_token = ops.cast(next_token, prompt.dtype)
            next_token = ops.where(mask[:, index], prompt[:, index], next_token)  # keep given prompt tokens
            prompt = ops.slice_update(prompt, [0, index], next_token[:, None])
            return (prompt, cache, index + 1, mask, log_probs)

        prompt, _, _, mask, log_probs = self.run_loop(
            cond=cond,
            body=body,
            loop_vars=(prompt, cache, index, mask, log_probs),
            maximum_iterations=(max_length - index),
            model=model,
        )

        # CHANGED (2): rank by log_prob / ((5 + length) / 6) ** alpha.
        scores = log_probs / ops.power((5.0 + self.generated_lengths(prompt, mask, start_index, stop_token_ids)) / 6.0,
                                       self.length_penalty)  # (batch * beams,)
        all_prompts = unflatten_beams(prompt)  # (batch, beams, max_length)
        all_scores = unflatten_beams(scores)  # (batch, beams)
        if self.return_all_beams:
            sorted_indices = ops.argsort(-all_scores, axis=-1)
            sorted_scores = ops.take_along_axis(all_scores, sorted_indices, axis=1)
            sorted_prompts = ops.take_along_axis(all_prompts, ops.expand_dims(sorted_indices, -1), axis=1)
            return sorted_prompts, sorted_scores
        top_beams = ops.argmax(all_scores, axis=-1)[:, None, None]
        return ops.squeeze(ops.take_along_axis(all_prompts, top_beams, axis=1), axis=1)

    @staticmethod
    def generated_lengths(prompt, mask, start_index, stop_token_ids):
        """(rows,) float32: generated tokens up to and including the first stop token (all if none)."""
        positions = ops.arange(ops.shape(prompt)[1], dtype="int32")[None, :]  # (1, max_length)
        generated = ops.logical_and(positions >= start_index, ops.logical_not(mask))  # (rows, max_length)
        if stop_token_ids is not None:
            is_stop = any_equal(prompt, stop_token_ids, generated)
            first_stop = ops.argmax(ops.cast(is_stop, "int32"), axis=-1)
            last = ops.where(ops.any(is_stop, axis=-1), ops.cast(first_stop, "int32"), ops.shape(prompt)[1] - 1)
            generated = ops.logical_and(generated, positions <= last[:, None])
        return ops.sum(ops.cast(generated, "float32"), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"length_penalty": self.length_penalty, "pad_token_id": self.pad_token_id,
                       "no_repeat_ngram_size": self.no_repeat_ngram_size})
        return config


class NgramBlocking:
    """Mixin for a keras-hub sampler: its ``next`` never repeats an n-gram of
    ``no_repeat_ngram_size`` tokens (0: off). List it before the sampler class."""

    def __init__(self, no_repeat_ngram_size=0, **kwargs):
        super().__init__(**kwargs)
        self.no_repeat_ngram_size = no_repeat_ngram_size

    def __call__(self, next, *args, **kwargs):
        return super().__call__(block_repeated_ngrams(next, self.no_repeat_ngram_size), *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "no_repeat_ngram_size": self.no_repeat_ngram_size}


class CaptionGreedySampler(NgramBlocking, keras_hub.samplers.GreedySampler):
    """keras-hub's greedy search (the most likely token each step), optionally without repeated n-grams."""


class CaptionTopKSampler(NgramBlocking, keras_hub.samplers.TopKSampler):
    """keras-hub's top-k sampling (a random token among the k likeliest), optionally without repeated n-grams."""


class CaptionTopPSampler(NgramBlocking, keras_hub.samplers.TopPSampler):
    """keras-hub's nucleus sampling (a random token among the likeliest whose probabilities
    reach p), optionally without repeated n-grams."""


def block_repeated_ngrams(next_token_logits, size: int):
    """A sampler's ``next`` whose logits are -1e9 for every token that would repeat an n-gram
    of ``size`` tokens already in the row; ``size`` 0 returns ``next_token_logits`` itself."""
    if size == 0:
        return next_token_logits

    def next_without_repeats(prompt, cache, index):
        logits, hidden_states, cache = next_token_logits(prompt, cache, index)  # logits (rows, vocab)
        banned = repeated_ngram_tokens(prompt, index, size, ops.shape(logits)[-1])  # (rows, vocab) bool
        return ops.where(banned, ops.full_like(logits, -1e9), logits), hidden_states, cache

    return next_without_repeats


def repeated_ngram_tokens(prompt, index, size: int, vocab_size: int):
    """(rows, vocab_size) bool: the tokens that, written at ``index``, would complete an n-gram of
    ``size`` tokens that already occurs in ``prompt[:, 1:index]`` (position 0 is <start>).

    prompt: (rows, max_length) int with a static max_length; index: the position being
    generated (a scalar, a tensor inside the sampler's loop). The last ``size - 1`` tokens
    are the prefix; each earlier place the prefix occurs bans the token that followed it.
    """
    max_length = prompt.shape[1]
    if max_length is None:
        raise ValueError("repeated_ngram_tokens needs the prompt's length (axis 1) known when it is traced")
    index = ops.cast(index, "int32")
    # The prefix needs size - 1 generated tokens: positions index - size + 1 .. index - 1, all >= 1.
    prefix_is_generated = index - (size - 1) >= 1
    prefix = [ops.take(prompt, ops.maximum(index - (size - 1) + offset, 0), axis=1)
              for offset in range(size - 1)]  # size - 1 tensors of (rows,)
    banned = ops.zeros((ops.shape(prompt)[0], vocab_size), dtype="bool")
    for start in range(1, max_length - size + 1):  # an earlier n-gram at start .. start + size - 1
        matches = ops.logical_and(prefix_is_generated, start + size - 1 < index)  # it lies before index
        for offset in range(size - 1):
            matches = ops.logical_and(matches, ops.equal(prompt[:, start + offset], prefix[offset]))  # (rows,)
        follower = ops.one_hot(prompt[:, start + size - 1], vocab_size) > 0  # (rows, vocab)
        banned = ops.logical_or(banned, ops.logical_and(follower, matches[:, None]))
    return banned


# The valid ``generation.sampler`` names, each building its sampler from the section.
SAMPLERS = {
    "greedy": lambda generation: CaptionGreedySampler(no_repeat_ngram_size=generation.no_repeat_ngram_size),
    "beam": lambda generation: CaptionBeamSampler(num_beams=generation.beam_width,
                                                  length_penalty=generation.length_penalty,
                                                  no_repeat_ngram_size=generation.no_repeat_ngram_size),
    "top_k": lambda generation: CaptionTopKSampler(k=generation.top_k, seed=generation.seed,
                                                   temperature=generation.temperature,
                                                   no_repeat_ngram_size=generation.no_repeat_ngram_size),
    "top_p": lambda generation: CaptionTopPSampler(p=generation.top_p, seed=generation.seed,
                                                   temperature=generation.temperature,
                                                   no_repeat_ngram_size=generation.no_repeat_ngram_size),
}


def check_generation(generation: GenerationConfig) -> None:
    """ConfigError naming the first [generation] field whose value no sampler can use."""
    if generation.sampler not in SAMPLERS:
        raise ConfigError(f"unknown generation.sampler '{generation.sampler}'; valid: {', '.join(SAMPLERS)}")
    if generation.beam_width < 1:
        raise ConfigError(f"generation.beam_width must be at least 1, got {generation.beam_width}")
    if generation.length_penalty < 0:
        raise ConfigError(f"generation.length_penalty must be 0 or more, got {generation.length_penalty}")
    if generation.top_k < 1:
        raise ConfigError(f"generation.top_k must be at least 1, got {generation.top_k}")
    if not 0 < generation.top_p <= 1:
        raise ConfigError(f"generation.top_p must be above 0 and at most 1, got {generation.top_p}")
    if generation.temperature <= 0:
        raise ConfigError(f"generation.temperature must be above 0, got {generation.temperature}")
    if generation.no_repeat_ngram_size < 0:
        raise ConfigError(f"generation.no_repeat_ngram_size must be 0 (off) or more, got {generation.no_repeat_ngram_size}")


def build_sampler(generation: GenerationConfig):
    check_generation(generation)
    return SAMPLERS[generation.sampler](generation)


def build_top_beams_sampler(generation: GenerationConfig, top: int) -> CaptionBeamSampler:
    """Beam search returning every beam and its score: at least ``top`` beams, wider if configured."""
    build_sampler(generation)  # the same checks
    return CaptionBeamSampler(num_beams=max(top, generation.beam_width), length_penalty=generation.length_penalty,
                              no_repeat_ngram_size=generation.no_repeat_ngram_size, return_all_beams=True)


def make_step(decoder):
    """The sampler's ``next``: the cache is the decoder's (``decoder.initial_cache``), a
    dict of tensors whose first axis is the batch (RNN state; attention decoders add the
    features and their projection)."""

    def next_token_logits(prompt, cache, index):
        previous_tokens = prompt[:, index - 1]  # (batch,)
        logits, cache = decoder.step_cache(previous_tokens, cache)  # (batch, vocab)
        return forbid_special_tokens(logits), None, cache

    return next_token_logits


def forbid_special_tokens(logits):
    """<pad>, <start> and <unk> are never generated: a caption saying "<unk>" helps nobody.

    logits: (batch, vocab) -> the same with those three columns at -1e9 (<end> stays allowed).
    """
    forbidden = ops.sum(ops.one_hot([PAD_ID, START_ID, UNKNOWN_ID], ops.shape(logits)[-1]), axis=0)  # (vocab,) 0/1
    return ops.where(forbidden[None, :] > 0, ops.full_like(logits, -1e9), logits)


def generate_token_ids(decoder, features, max_length: int, sampler):
    """features: (batch, regions, channels) -> token ids (batch, max_length) int32.

    Position 0 holds <start>; everything after the first <end> is meaningless (the sampler
    keeps going until every row has ended) and ``Vocabulary.decode`` drops it. A sampler
    with ``return_all_beams`` returns (batch, beams, max_length) ids and (batch, beams)
    scores instead, best first.
    """
    batch = ops.shape(features)[0]
    prompt = tf.concat(
        [tf.fill((batch, 1), START_ID), tf.fill((batch, max_length - 1), PAD_ID)], axis=1
    )  # (batch, max_length)
    mask = tf.concat([tf.ones((batch, 1), tf.bool), tf.zeros((batch, max_length - 1), tf.bool)], axis=1)
    cache = decoder.initial_cache(features)
    return sampler(make_step(decoder), prompt, cache=cache, index=1, mask=mask, stop_token_ids=(END_ID,))
