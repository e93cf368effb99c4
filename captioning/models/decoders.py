"""RNN decoders: region features + caption prefix -> next-word logits.

Two decoders, chosen by ``decoder.name`` (``build_decoder`` dispatches):

- "rnn", ``RNNDecoder`` (Show and Tell): the image only sets the initial LSTM/GRU state;
  the pooled region features, projected, become that state.
- "attention", ``AttentionDecoder`` (Show, Attend and Tell): the initial state comes from
  the mean region, and at every step soft (additive) attention over the region grid
  picks a context vector that is fed to the cell with the word. ``decoder.attention_placement``
  moves the attention after the cell (``OutputAttentionDecoder``) or between two cells
  (``BetweenAttentionDecoder``).

    decoder = build_decoder(config.decoder, vocab_size=vocabulary.size)
    logits = decoder((features, token_ids))       # teacher forcing: (batch, length, vocab)
    cache = decoder.initial_cache(features)       # before generation: a dict of tensors
    logits, cache = decoder.step_cache(token_ids, cache)  # one token: (batch, vocab)

The cache is what keras-hub's samplers carry between steps (beam search repeats and
reorders every tensor in it per beam), so search.py has one code path for both.

Under mixed precision (precision.py) the layers compute in float16, but logits are always
returned as float32 (the loss and the samplers' softmax need the range), and attention
scores are cast to float32 before their softmax.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from captioning.config import ConfigError, DecoderConfig
from captioning.data.vocabulary import END_ID, PAD_ID
from captioning.models.decoder_base import (CaptionDecoder, OutputHead, check_choice, over_time, per_caption, take_sorted_rows,
                                           time_major)
from captioning.models.recurrence import (has_fused_sequence, input_gates, kernel_blocks, lstm_hidden_sequence,
                                          recurrent_update)

CELL_CLASSES = {"lstm": layers.LSTMCell, "gru": layers.GRUCell}  # stepped by recurrence.py
STATES_PER_CELL = {"lstm": 2, "gru": 1}  # LSTM carries (hidden, cell), GRU only hidden
IMAGE_POOLINGS = ("mean", "flatten")
PENALTY_SCALES = ("per_token", "per_caption")  # decoder.attention_penalty_scale


def both_input_gates(cell, embedded, image, words_time_major=False):
    """The input-side gate pre-activations of a cell whose input is [embedded word, image]:
    embedded (rows, [length,] embedding_dim), or (length, rows, embedding_dim) when
    ``words_time_major``; image (rows, embedding_dim) -> gates shaped like ``embedded`` with
    gate_width last, the image's part once per row, not once per word."""
    word_kernel, image_kernel = kernel_blocks(cell, [embedded.shape[-1], image.shape[-1]])
    image_gates = input_gates(cell, image, bias=False, kernel=image_kernel)  # (rows, gate_width)
    gates = input_gates(cell, embedded, kernel=word_kernel)  # (rows, [length,] gate_width)
    if len(embedded.shape) == 3:
        image_gates = image_gates[None] if words_time_major else image_gates[:, None, :]
    return gates + image_gates


def hidden_sequence(cell, gates, state, unroll=False):
    """The cell over whole captions whose input side is already computed: gates (rows,
    length, gate_width), state the cell's initial state -> hidden states (rows, length, units)."""
    return time_major(time_major_hidden_sequence(cell, time_major(gates), state, unroll))


def time_major_hidden_sequence(cell, gates, state, unroll=False):
    """hidden_sequence time-major: gates (length, rows, gate_width) -> hidden states (length, rows, units).

    An LSTM with the default activations takes recurrence.lstm_hidden_sequence, whose
    hand-written backward pass is faster than autodiff through the loop; under XLA
    (``unroll``) and for GRU cells the steps run through ``over_time``.
    """
    if has_fused_sequence(cell) and not unroll:
        return lstm_hidden_sequence(cell, gates, list(state))

    def step(state, gates_t):
        _, state = recurrent_update(cell, gates_t, list(state))
        return tuple(state), tuple(state)  # keras' scan stacks outputs shaped like the carry

    return over_time(step, tuple(state), gates, unroll)[0]


@keras.saving.register_keras_serializable(package="captioning")
class RNNDecoder(CaptionDecoder):
    """Embedding -> LSTM/GRU -> vocabulary logits, started from the image (Show and Tell).

    image_pooling: "mean" averages the regions (fine for pretrained features); "flatten"
    keeps every region's position, which spatial words ("left of") need when the encoder
    is small and trained from scratch.
    image_norm: layer-normalize the pooled image vector first (pretrained features' channels
    differ widely in scale).
    image_every_step: also feed the image, projected to a word's width, beside every word.
    output_layer: "deep" or "wide" (OutputHead), over [hidden, embedded word].
    """

    def __init__(self, vocab_size, embedding_dim=256, units=512, cell="lstm", dropout=0.3, image_pooling="mean",
                 image_norm=False, image_every_step=False, output_layer="deep", **kwargs):
        super().__init__(**kwargs)
        check_choice("decoder cell", cell, "decoder.cell", CELL_CLASSES)
        check_choice("image_pooling", image_pooling, "decoder.image_pooling", IMAGE_POOLINGS)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.cell_name = cell
        self.dropout_rate = dropout
        self.image_pooling = image_pooling
        self.image_norm = image_norm
        self.image_every_step = image_every_step
        self.output_layer = output_layer
        self.state_count = STATES_PER_CELL[cell]
        self.image_normalization = layers.LayerNormalization(name="image_normalization") if image_norm else None
        self.image_projection = layers.Dense(units * self.state_count, activation="tanh", name="image_projection")
        # par-inject (Tanti et al., 2018): the image, projected to a word's width, beside every word
        self.image_input = layers.Dense(embedding_dim, activation="relu", name="image_input") if image_every_step else None
        self.embedding = layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.cell = CELL_CLASSES[cell](units, name=f"{cell}_cell")
        self.dropout = layers.Dropout(dropout)
        self.head = OutputHead(vocab_size, embedding_dim, kind=output_layer, dropout=dropout, name="output_head")

    def build(self, input_shape):
        features_shape, token_shape = input_shape
        pooled_width = features_shape[-1] if self.image_pooling == "mean" else features_shape[1] * features_shape[2]
        if self.image_normalization is not None:
            self.image_normalization.build((None, pooled_width))
        self.image_projection.build((None, pooled_width))
        if self.image_input is not None:
            self.image_input.build((None, pooled_width))
        self.embedding.build(token_shape)
        self.cell.build((None, self.embedding_dim * (2 if self.image_every_step else 1)))
        self.head.build((None, self.units + self.embedding_dim))

    def image_memory(self, features, training=None) -> dict:
        """features: (images, regions, channels) -> {"state": tuple of ``state_count`` (images, units),
        and with image_every_step "image": (images, embedding_dim)}."""
        if self.image_pooling == "mean":
            pooled = ops.mean(features, axis=1)  # (images, channels)
        else:
            pooled = ops.reshape(features, (ops.shape(features)[0], -1))  # (images, regions * channels)
        if self.image_normalization is not None:
            pooled = self.image_normalization(pooled)  # each image's vector to zero mean, unit variance
        pooled = self.dropout(pooled, training=training)
        projected = self.image_projection(pooled)  # (images, units * states)
        state = tuple(ops.split(projected, self.state_count, axis=-1)) if self.state_count > 1 else (projected,)
        memory = {"state": state}
        if self.image_input is not None:
            memory["image"] = self.image_input(pooled)  # (images, embedding_dim)
        return memory

    def initial_state(self, features, training=None) -> list:
        """features: (batch, regions, channels) -> ``state_count`` tensors of (batch, units)."""
        return list(self.image_memory(features, training=training)["state"])

    def cell_gates(self, embedded, image_input):
        """The cell's input-side gate pre-activations (recurrence.input_gates) of the words,
        plus, with image_every_step, the image's: computed once per row, not once per word.

        embedded: (rows, length, embedding_dim) or (rows, embedding_dim); image_input:
        (rows, embedding_dim) or None. Returns (rows, [length,] gate_width).
        """
        if image_input is None:
            return input_gates(self.cell, embedded)
        return both_input_gates(self.cell, embedded, image_input)

    def recur(self, memory, token_ids, training=None):
        embedded = self.dropout(self.embedding(token_ids), training=training)  # (rows, length, embedding_dim)
        gates = self.cell_gates(embedded, memory.get("image"))  # (rows, length, gate_width)

        hidden = hidden_sequence(self.cell, gates, memory["state"], self.unroll)  # (rows, length, units)
        return ops.concatenate([hidden, embedded], axis=-1), None  # (rows, length, units + embedding_dim)

    def step(self, token_ids, state, image_input=None):
        """token_ids: (batch,) int32, the last token; state from initial_state or step;
        image_input: (batch, embedding_dim) from image_memory when image_every_step.

        Returns logits (batch, vocab_size) for the next token, and the new state.
        """
        embedded = self.embedding(token_ids)  # (batch, embedding_dim)
        hidden, state = recurrent_update(self.cell, self.cell_gates(embedded, image_input), list(state))  # (batch, units)
        return self.output_logits(ops.concatenate([hidden, embedded], axis=-1)), state  # (batch, vocab_size) float32

    def initial_cache(self, features) -> dict:
        """The sampler's starting cache: {"state": tuple of (batch, units)}, and with
        image_every_step {"image": (batch, embedding_dim)} (beam search repeats it per beam)."""
        if not self.built:  # generation before any teacher-forced call
            self.build((tuple(features.shape), (None, None)))
        return self.image_memory(features, training=False)

    def step_cache(self, token_ids, cache: dict):
        """token_ids: (batch,) int32 -> logits (batch, vocab_size) and the next cache."""
        logits, state = self.step(token_ids, cache["state"], cache.get("image"))
        return logits, {**cache, "state": tuple(state)}

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell_name,
            "dropout": self.dropout_rate,
            "image_pooling": self.image_pooling,
            "image_norm": self.image_norm,
            "image_every_step": self.image_every_step,
            "output_layer": self.output_layer,
        }


@keras.saving.register_keras_serializable(package="captioning")
class AttentionDecoder(CaptionDecoder):
    """Show, Attend and Tell (Xu et al., 2015): soft additive attention over the regions.

    Per step t, with h the previous hidden state and f_i the regions:
        e_ti = v^T tanh(W_f f_i + W_h h)           attention_units wide
        alpha_t = softmax_i(e_t)                   (batch, regions), sums to 1
        context = beta * sum_i alpha_ti f_i        beta = sigmoid(w_b h) if attention_gate, else 1
        h, state = cell([embedding(word), context], state)
        logits = OutputHead([h, context, embedding(word)])   (deep by default)
    The initial state is tanh(Dense(mean_i f_i)); W_f f is computed once per image. The
    word's half of the cell's input matmul runs for the whole caption before the loop
    (recurrence.py); only the context's half and the recurrent matmul run per step.
    image_norm: layer-normalize every region's vector f_i first (as RNNDecoder does with
    the pooled vector): pretrained features' channels differ widely in scale.

    attention_regularization (lambda): in training, adds the doubly stochastic penalty
    lambda * mean over captions of sum_i (1 - sum_t alpha_ti)^2, over the steps that
    predict a real token, pushing the decoder to look at every region over the caption.
    attention_penalty_scale: "per_token" divides each caption's penalty by its number of
    such steps (the cross-entropy is a mean per token); "per_caption" does not.
    """

    has_attention = True
    attention_placement = "input"  # decoder.attention_placement

    def __init__(self, vocab_size, embedding_dim=256, units=512, cell="lstm", dropout=0.3, attention_units=256,
                 attention_gate=True, attention_regularization=1.0, image_norm=False, output_layer="deep",
                 attention_penalty_scale="per_token", **kwargs):
        super().__init__(**kwargs)
        check_choice("decoder cell", cell, "decoder.cell", CELL_CLASSES)
        check_choice("attention_penalty_scale", attention_penalty_scale, "decoder.attention_penalty_scale",
                     PENALTY_SCALES)
        if attention_regularization < 0:
            raise ConfigError(f"decoder.attention_regularization must be 0 or more, got {attention_regularization}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.cell_name = cell
        self.dropout_rate = dropout
        self.attention_units = attention_units
        self.attention_gate = attention_gate
        self.attention_regularization = attention_regularization
        self.attention_penalty_scale = attention_penalty_scale
        self.image_norm = image_norm
        self.output_layer = output_layer
        self.state_count = STATES_PER_CELL[cell]
        self.region_normalization = layers.LayerNormalization(name="region_normalization") if image_norm else None
        self.image_projection = layers.Dense(units * self.state_count, activation="tanh", name="image_projection")
        self.embedding = layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.feature_projection = layers.Dense(attention_units, name="feature_projection")  # W_f (and the bias)
        self.hidden_projection = layers.Dense(attention_units, use_bias=False, name="hidden_projection")  # W_h
        # v: no bias, softmax ignores a constant added to every score.
        self.attention_score = layers.Dense(1, use_bias=False, name="attention_score")
        # A scalar gate per step, as in the paper.
        self.gate = layers.Dense(1, activation="sigmoid", name="attention_gate") if attention_gate else None
        self.cell = CELL_CLASSES[cell](units, name=f"{cell}_cell")
        self.dropout = layers.Dropout(dropout)
        self.head = OutputHead(vocab_size, embedding_dim, kind=output_layer, dropout=dropout, name="output_head")

    def build(self, input_shape):
        features_shape, token_shape = input_shape
        channels = features_shape[-1]
        if self.region_normalization is not None:
            self.region_normalization.build((None, None, channels))
        self.image_projection.build((None, channels))
        self.embedding.build(token_shape)
        self.feature_projection.build((None, None, channels))
        self.hidden_projection.build((None, self.units))
        self.attention_score.build((None, None, self.attention_units))
        if self.gate is not None:
            self.gate.build((None, self.units))
        self.cell.build((None, self.cell_input_width(channels)))
        self.head.build((None, self.units + channels + self.embedding_dim))

    def cell_input_width(self, channels: int) -> int:
        """The cell's input: [embedded word, context]."""
        return self.embedding_dim + channels

    def image_memory(self, features, training=None) -> dict:
        """features: (images, regions, channels) -> the state before the first word.

        {"features" (layer-normalized when image_norm), "projected_features": (images, regions, attention_units),
         "state": tuple of (images, units), "context": (images, channels),
         "attention": (images, regions) float32, the weights of the last step (zeros before any)}.
        """
        if not self.built:  # generation before any teacher-forced call
            self.build((tuple(features.shape), (None, None)))
        # the compute dtype (bfloat16 or float16 under mixed precision): the context is a
        # product of the features, and the gate and the cell meet it in that dtype
        features = ops.cast(features, self.compute_dtype)
        if self.region_normalization is not None:
            features = self.region_normalization(features)  # each region's vector to zero mean, unit variance
        pooled = ops.mean(features, axis=1)  # (images, channels)
        projected = self.image_projection(pooled)  # (images, units * states)
        state = tuple(ops.split(projected, self.state_count, axis=-1)) if self.state_count > 1 else (projected,)
        return {
            "features": features,
            "projected_features": self.feature_projection(features),  # (images, regions, attention_units)
            "state": state,
            "context": ops.zeros_like(pooled),  # (images, channels)
            "attention": ops.zeros_like(features[:, :, 0], dtype="float32"),  # (images, regions)
        }

    def initial_state(self, features, training=None) -> dict:
        return self.image_memory(features, training=training)

    def attend(self, features, projected_features, hidden):
        """hidden: (batch, units) -> context (batch, channels), attention weights (batch, regions) float32."""
        scores = self.attention_score(
            ops.tanh(projected_features + self.hidden_projection(hidden)[:, None, :]))  # (batch, regions, 1)
        attention = ops.softmax(ops.cast(scores[:, :, 0], "float32"), axis=-1)  # (batch, regions)
        weights = ops.cast(attention, features.dtype)[:, None, :]  # (batch, 1, regions), the compute dtype
        context = ops.matmul(weights, features)[:, 0, :]  # (batch, channels): a batched matmul, no (batch, regions, channels) product
        if self.gate is not None:
            context = self.gate(hidden) * context  # gate: (batch, 1)
        return context, attention

    def advance(self, word_gates, features, projected_features, state):
        """One recurrence: word_gates (batch, gate_width), the word's input_gates -> {"state", "context", "attention"}."""
        context, attention = self.attend(features, projected_features, state[0])
        gates = word_gates + input_gates(self.cell, context, first_row=self.embedding_dim, bias=False)
        _, new_state = recurrent_update(self.cell, gates, list(state))
        return {"state": tuple(new_state), "context": context, "attention": attention}

    def recur(self, memory, token_ids, training=None):
        embedded = self.dropout(self.embedding(token_ids), training=training)  # (rows, length, embedding_dim)
        word_gates = input_gates(self.cell, embedded)  # (rows, length, gate_width), one matmul for every step

        def step(carry, word_gates_t):
            result = self.advance(word_gates_t, memory["features"], memory["projected_features"], carry["state"])
            return result, result  # keras' scan stacks outputs shaped like the carry

        carry = {key: memory[key] for key in ("state", "context", "attention")}
        steps = over_time(step, carry, time_major(word_gates), self.unroll)  # each (length, rows, ...)
        hidden = time_major(steps["state"][0])  # (rows, length, units)
        context = time_major(steps["context"])  # (rows, length, channels)
        attention = time_major(steps["attention"])  # (rows, length, regions)
        self.add_attention_penalty(attention, token_ids, training)
        return ops.concatenate([hidden, context, embedded], axis=-1), attention  # (rows, length, units + channels + embedding_dim)

    def add_attention_penalty(self, attention, token_ids, training) -> None:
        """In training, the doubly stochastic penalty of attention (rows, length, regions) as a layer loss."""
        if training and self.attention_regularization > 0:
            self.add_loss(self.attention_regularization * self.attention_penalty(
                attention, token_ids, per_token=self.attention_penalty_scale == "per_token"))

    @staticmethod
    def attention_penalty(attention, token_ids, per_token=False):
        """Doubly stochastic penalty: mean over captions of sum_i (1 - sum_t alpha_ti)^2,
        each caption's divided by its number of steps when ``per_token``.

        attention: (batch, length, regions); token_ids: (batch, length), the inputs. A step
        counts when it predicts a real token (its input is neither padding nor <end>); a
        caption with no such step (an all-padding filler caption) is left out of the mean.
        """
        real = ops.logical_and(ops.not_equal(token_ids, PAD_ID), ops.not_equal(token_ids, END_ID))
        real = ops.cast(real, attention.dtype)  # (batch, length)
        attention_sum = ops.sum(attention * real[:, :, None], axis=1)  # (batch, regions)
        penalty = ops.sum(ops.square(1.0 - attention_sum), axis=-1)  # (batch,)
        if per_token:
            penalty = penalty / ops.maximum(ops.sum(real, axis=1), 1.0)
        has_steps = ops.cast(ops.any(real > 0, axis=1), attention.dtype)  # (batch,)
        return ops.sum(penalty * has_steps) / ops.maximum(ops.sum(has_steps), 1.0)

    def step(self, token_ids, state: dict):
        """token_ids: (batch,) int32, the last token; state from initial_state or step.

        Returns logits (batch, vocab_size) for the next token, and the new state, whose
        "attention" (batch, regions) holds the weights this step used.
        """
        embedded = self.embedding(token_ids)  # (batch, embedding_dim)
        step = self.advance(input_gates(self.cell, embedded), state["features"], state["projected_features"],
                            state["state"])
        logits = self.output_logits(ops.concatenate([step["state"][0], step["context"], embedded], axis=-1))  # (batch, vocab_size)
        return logits, {**state, **step}

    def initial_cache(self, features) -> dict:
        """The sampler's starting cache; it carries the features and W_f f, repeated per beam."""
        return self.image_memory(features, training=False)

    def step_cache(self, token_ids, cache: dict):
        return self.step(token_ids, cache)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell_name,
            "dropout": self.dropout_rate,
            "attention_units": self.attention_units,
            "attention_gate": self.attention_gate,
            "attention_regularization": self.attention_regularization,
            "attention_penalty_scale": self.attention_penalty_scale,
            "image_norm": self.image_norm,
            "output_layer": self.output_layer,
        }


def _build_rnn_decoder(config: DecoderConfig, vocab_size: int) -> RNNDecoder:
    return RNNDecoder(
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units, cell=config.cell,
        dropout=config.dropout, image_pooling=config.image_pooling, image_norm=config.image_norm,
        image_every_step=config.image_every_step, output_layer=config.output_layer, name="decoder",
    )


@keras.saving.register_keras_serializable(package="captioning")
class OutputAttentionDecoder(AttentionDecoder):
    """Spatial attention after the cell (Lu et al., 2017, "Knowing When to Look", sec. 2.2),
    ``decoder.attention_placement = "output"``.

    Per step t, with f_i the regions and g = relu(Dense(mean_i f_i)) once per image:
        h_t, state = cell([embedding(word), g], state)
        e_ti = v^T tanh(W_f f_i + W_h h_t)           the new hidden state attends
        alpha_t = softmax_i(e_t); context = beta * sum_i alpha_ti f_i
        logits = OutputHead([h_t, context, embedding(word)])
    The cell's input no longer depends on the attention, so the time loop holds only the
    recurrent matmul (as RNNDecoder's does); the attention then runs for every step of every
    caption at once, as a few large batched matmuls. Lu et al. found this placement better
    than Show, Attend and Tell's on COCO and Flickr30k. The initial state, the gate and the
    doubly stochastic penalty are AttentionDecoder's.
    """

    attention_placement = "output"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the image beside every word, at a word's width (RNNDecoder's image_every_step)
        self.image_input = layers.Dense(self.embedding_dim, activation="relu", name="image_input")

    def build(self, input_shape):
        super().build(input_shape)
        self.image_input.build((None, input_shape[0][-1]))

    def cell_input_width(self, channels: int) -> int:
        """The cell's input: [embedded word, image]."""
        return 2 * self.embedding_dim

    def image_memory(self, features, training=None) -> dict:
        """AttentionDecoder's memory, plus "image": (images, embedding_dim), g above."""
        memory = super().image_memory(features, training=training)
        pooled = self.dropout(ops.mean(memory["features"], axis=1), training=training)  # (images, channels)
        return {**memory, "image": self.image_input(pooled)}

    def attention_weights(self, projected_features, hidden):
        """projected_features (..., regions, attention_units), hidden (..., units), the same
        leading shape -> the weights (..., regions) float32."""
        queries = self.hidden_projection(hidden)  # (..., attention_units)
        scores = self.attention_score(ops.tanh(projected_features + queries[..., None, :]))  # (..., regions, 1)
        return ops.softmax(ops.cast(scores[..., 0], "float32"), axis=-1)  # (..., regions)

    def attend_steps(self, features, projected_features, hidden):
        """hidden: (batch, length, units), every step's new state -> context (batch, length,
        channels), attention weights (batch, length, regions) float32."""
        attention = self.attention_weights(projected_features[:, None], hidden)  # (batch, length, regions)
        context = ops.matmul(ops.cast(attention, features.dtype), features)  # (batch, length, channels)
        if self.gate is not None:
            context = self.gate(hidden) * context  # gate: (batch, length, 1)
        return context, attention

    def cell_gates(self, embedded, image):
        """embedded: (rows, [length,] embedding_dim); image: (rows, embedding_dim) ->
        the input-side gate pre-activations (rows, [length,] gate_width), the image's once per row."""
        return both_input_gates(self.cell, embedded, image)

    def recur(self, memory, token_ids, training=None):
        embedded, hidden = (time_major(tensor) for tensor in self.hidden_states(memory, token_ids, training=training))
        context, attention = self.attend_steps(memory["features"], memory["projected_features"], hidden)
        self.add_attention_penalty(attention, token_ids, training)
        return ops.concatenate([hidden, context, embedded], axis=-1), attention  # (rows, length, units + channels + embedding_dim)

    def recur_real(self, memory, token_ids, real, training=None, captions_per_image=1):
        """recur with the attention at the real positions alone (about 70 % of a Flickr8k
        batch's): the cell still runs over every step (it is sequential), but the scores,
        their tanh over regions x attention_units and the gate skip the padding. Same values
        as recur's at those positions (test_fast_training: test_real_token_outputs_match_every_position).

        The regions stay one row per image (``memory`` is image_memory's): each token takes its
        image's projected regions, and the context is one batched matmul per image over all
        its captions' steps, so the (regions, channels) features are never repeated per caption."""
        cell_memory = per_caption({key: memory[key] for key in ("state", "image")}, captions_per_image)
        # The tokens are picked from the time-major words and hidden states (length, rows, ...)
        embedded, hidden = self.hidden_states(cell_memory, token_ids, training=training)
        positions = tf.where(real)  # (tokens, 2): row, step, in row-major order
        steps_first = tf.reverse(positions, axis=[1])  # (tokens, 2): step, row
        hidden = tf.gather_nd(hidden, steps_first)  # (tokens, units)
        token_images = positions[:, 0] // ops.cast(captions_per_image, positions.dtype)  # (tokens,), ascending
        projected = take_sorted_rows(memory["projected_features"], token_images)  # (tokens, regions, attention_units)
        attention = self.attention_weights(projected, hidden)  # (tokens, regions)
        # The context as a batched matmul per image: the weights back in place, zeros at padding.
        rows, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        regions = ops.shape(attention)[-1]
        every_step = tf.scatter_nd(positions, attention, (rows, length, regions))  # (rows, length, regions)
        features = memory["features"]  # (images, regions, channels)
        per_image = ops.reshape(ops.cast(every_step, features.dtype), (ops.shape(features)[0], -1, regions))  # (images, captions * length, regions)
        context = ops.reshape(ops.matmul(per_image, features), (rows, length, ops.shape(features)[-1]))  # (rows, length, channels)
        context = tf.gather_nd(context, positions)  # (tokens, channels)
        if self.gate is not None:
            context = self.gate(hidden) * context  # gate: (tokens, 1)
        self.add_attention_penalty(every_step, token_ids, training)
        outputs = ops.concatenate([hidden, context, tf.gather_nd(embedded, steps_first)], axis=-1)
        return outputs, attention  # (tokens, units + channels + embedding_dim), (tokens, regions)

    def hidden_states(self, memory, token_ids, training=None):
        """-> the embedded words (length, rows, embedding_dim) and the cell's hidden states
        (length, rows, units), time-major: the words are embedded in that order, so neither
        the (rows, length, gate_width) gates nor the hidden states are transposed."""
        embedded = self.dropout(self.embedding(time_major(token_ids)), training=training)  # (length, rows, embedding_dim)
        gates = both_input_gates(self.cell, embedded, memory["image"], words_time_major=True)  # (length, rows, gate_width)
        return embedded, time_major_hidden_sequence(self.cell, gates, memory["state"], self.unroll)

    def cell_and_attention_step(self, token_ids, state: dict):
        """One token through the cell, then the attention: -> embedded (batch, embedding_dim),
        hidden (batch, units), the cell's new state, context (batch, channels), attention (batch, regions)."""
        embedded = self.embedding(token_ids)  # (batch, embedding_dim)
        hidden, new_state = recurrent_update(self.cell, self.cell_gates(embedded, state["image"]), list(state["state"]))
        context, attention = self.attend_steps(state["features"], state["projected_features"], hidden[:, None, :])
        return embedded, hidden, tuple(new_state), context[:, 0], attention[:, 0]

    def step(self, token_ids, state: dict):
        """As AttentionDecoder.step; "attention" holds the weights the new hidden state used."""
        embedded, hidden, new_state, context, attention = self.cell_and_attention_step(token_ids, state)
        logits = self.output_logits(ops.concatenate([hidden, context, embedded], axis=-1))  # (batch, vocab_size)
        return logits, {**state, "state": new_state, "context": context, "attention": attention}


@keras.saving.register_keras_serializable(package="captioning")
class BetweenAttentionDecoder(OutputAttentionDecoder):
    """Attention between two recurrent layers, ``decoder.attention_placement = "between"``:
    OutputAttentionDecoder with a language cell over its context (after the two-layer
    decoder of Anderson et al., 2018, "Bottom-Up and Top-Down Attention", without its
    feedback from the upper layer to the lower one, so that neither layer's time loop holds
    the attention).

    Per step t, with f_i the regions and g = relu(Dense(mean_i f_i)) once per image:
        h_t, state = cell([embedding(word), g], state)          the attention cell
        alpha_t = softmax_i(v^T tanh(W_f f_i + W_h h_t)); context = beta * sum_i alpha_ti f_i
        s_t, language_state = language_cell([context, h_t], language_state)
        logits = OutputHead([s_t, context, embedding(word)])
    The language cell starts from zeros. In OutputAttentionDecoder the context reaches the
    output layer alone, step by step; here a recurrent layer reads the contexts in order, so
    what was looked at before informs the next word. Training runs the attention cell over
    every step, the attention for every step at once, then the language cell (recurrence.py
    takes each cell's input matmul out of its loop): two cell loops, no attention in either.
    """

    attention_placement = "between"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.language_cell = CELL_CLASSES[self.cell_name](self.units, name=f"language_{self.cell_name}_cell")

    def build(self, input_shape):
        super().build(input_shape)
        self.language_cell.build((None, input_shape[0][-1] + self.units))  # [context, h]

    def image_memory(self, features, training=None) -> dict:
        """OutputAttentionDecoder's memory, plus "language_state": the language cell's zeros."""
        memory = super().image_memory(features, training=training)
        return {**memory, "language_state": tuple(ops.zeros_like(tensor) for tensor in memory["state"])}

    def language_gates(self, context, hidden):
        """context (..., channels), the attention cell's hidden (..., units) -> the language
        cell's input-side gate pre-activations (..., gate_width). Training passes the hidden
        state through dropout first (recur); generation does not."""
        context_kernel, hidden_kernel = kernel_blocks(self.language_cell, [context.shape[-1], hidden.shape[-1]])
        return (input_gates(self.language_cell, context, kernel=context_kernel)
                + input_gates(self.language_cell, hidden, kernel=hidden_kernel, bias=False))

    def recur(self, memory, token_ids, training=None):
        embedded, hidden = self.hidden_states(memory, token_ids, training=training)  # time-major (length, rows, ...)
        context, attention = self.attend_steps(memory["features"], memory["projected_features"], time_major(hidden))
        hidden = self.dropout(hidden, training=training)
        gates = self.language_gates(time_major(context), hidden)  # (length, rows, gate_width)
        language = time_major_hidden_sequence(self.language_cell, gates, memory["language_state"], self.unroll)
        self.add_attention_penalty(attention, token_ids, training)
        outputs = ops.concatenate([language, time_major(context), embedded], axis=-1)  # (length, rows, units + channels + embedding_dim)
        return time_major(outputs), attention  # (rows, length, ...), (rows, length, regions)

    def recur_real(self, memory, token_ids, real, training=None, captions_per_image=1):
        """The language cell reads the context at every step, so the attention runs at every
        step too: CaptionDecoder's recur_real (recur over every position, the real ones picked)."""
        return CaptionDecoder.recur_real(self, memory, token_ids, real, training=training,
                                         captions_per_image=captions_per_image)

    def step(self, token_ids, state: dict):
        """As OutputAttentionDecoder.step, the language cell after the attention."""
        embedded, hidden, new_state, context, attention = self.cell_and_attention_step(token_ids, state)
        language, language_state = recurrent_update(self.language_cell, self.language_gates(context, hidden),
                                                    list(state["language_state"]))  # (batch, units)
        logits = self.output_logits(ops.concatenate([language, context, embedded], axis=-1))  # (batch, vocab_size)
        return logits, {**state, "state": new_state, "language_state": tuple(language_state),
                        "context": context, "attention": attention}


# decoder.attention_placement -> the attention decoder's class
ATTENTION_PLACEMENTS = {"input": AttentionDecoder, "output": OutputAttentionDecoder, "between": BetweenAttentionDecoder}


def _build_attention_decoder(config: DecoderConfig, vocab_size: int) -> AttentionDecoder:
    check_choice("attention_placement", config.attention_placement, "decoder.attention_placement", ATTENTION_PLACEMENTS)
    return ATTENTION_PLACEMENTS[config.attention_placement](
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units, cell=config.cell,
        dropout=config.dropout, attention_units=config.attention_units, attention_gate=config.attention_gate,
        attention_regularization=config.attention_regularization,
        attention_penalty_scale=config.attention_penalty_scale, image_norm=config.image_norm,
        output_layer=config.output_layer, name="decoder",
    )


def _build_transformer_decoder(config: DecoderConfig, vocab_size: int) -> CaptionDecoder:
    from captioning.models.transformer_decoder import TransformerCaptionDecoder  # it builds on this module

    return TransformerCaptionDecoder(
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units,
        transformer_layers=config.transformer_layers, transformer_heads=config.transformer_heads,
        dropout=config.dropout, max_length=config.max_length, image_norm=config.image_norm,
        output_layer=config.output_layer, name="decoder",
    )


# The valid ``decoder.name`` values.
DECODERS = {"rnn": _build_rnn_decoder, "attention": _build_attention_decoder,
            "transformer": _build_transformer_decoder}


def build_decoder(config: DecoderConfig, vocab_size: int) -> CaptionDecoder:
    """The decoder named by ``config.name``."""
    check_choice("decoder", config.name, "decoder.name", DECODERS)
    return DECODERS[config.name](config, vocab_size)
