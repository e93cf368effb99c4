"""RNN decoders: region features + caption prefix -> next-word logits.

Two decoders, chosen by ``decoder.name`` (``build_decoder`` dispatches):

- "rnn", ``RNNDecoder`` (Show and Tell): the image only sets the initial LSTM/GRU state;
  the pooled region features, projected, become that state.
- "attention", ``AttentionDecoder`` (Show, Attend and Tell): the initial state comes from
  the mean region, and at every step soft (additive) attention over the region grid
  picks a context vector that is fed to the cell with the word.

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
from keras import layers, ops, tree

from captioning.config import ConfigError, DecoderConfig
from captioning.vocabulary import END_ID, PAD_ID

CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}
CELL_CLASSES = {"lstm": layers.LSTMCell, "gru": layers.GRUCell}  # stepped by hand in AttentionDecoder
STATES_PER_CELL = {"lstm": 2, "gru": 1}  # LSTM carries (hidden, cell), GRU only hidden
IMAGE_POOLINGS = ("mean", "flatten")


def float32_logits(logits):
    """Logits as float32 whatever the compute dtype: float16 logits would lose the small
    differences softmax and cross-entropy depend on (and -1e9 masks overflow float16)."""
    return ops.cast(logits, "float32")


@keras.saving.register_keras_serializable(package="captioning")
class RNNDecoder(keras.Model):
    """Embedding -> LSTM/GRU -> vocabulary logits, started from the image.

    image_pooling: "mean" averages the regions (fine for pretrained features); "flatten"
    keeps every region's position, which spatial words ("left of") need when the encoder
    is small and trained from scratch.
    image_norm: layer-normalize the pooled image vector first (pretrained features' channels
    differ widely in scale).
    image_every_step: also feed the image, projected to a word's width, beside every word.
    """

    def __init__(self, vocab_size, embedding_dim=256, units=512, cell="lstm", dropout=0.3, image_pooling="mean",
                 image_norm=False, image_every_step=False, **kwargs):
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ConfigError(f"unknown decoder cell '{cell}' (decoder.cell); valid: {', '.join(CELLS)}")
        if image_pooling not in IMAGE_POOLINGS:
            raise ConfigError(f"unknown image_pooling '{image_pooling}' (decoder.image_pooling); valid: {', '.join(IMAGE_POOLINGS)}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.cell = cell
        self.dropout_rate = dropout
        self.image_pooling = image_pooling
        self.image_norm = image_norm
        self.image_every_step = image_every_step
        self.state_count = STATES_PER_CELL[cell]
        self.image_normalization = layers.LayerNormalization(name="image_normalization") if image_norm else None
        self.image_projection = layers.Dense(units * self.state_count, activation="tanh", name="image_projection")
        # par-inject (Tanti et al., 2018): the image, projected to a word's width, beside every word
        self.image_input = layers.Dense(embedding_dim, activation="relu", name="image_input") if image_every_step else None
        self.embedding = layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.rnn = CELLS[cell](units, return_sequences=True, return_state=True, name=cell)
        self.dropout = layers.Dropout(dropout)
        self.output_projection = layers.Dense(vocab_size, name="output_projection")

    def build(self, input_shape):
        features_shape, token_shape = input_shape
        pooled_width = features_shape[-1] if self.image_pooling == "mean" else features_shape[1] * features_shape[2]
        if self.image_normalization is not None:
            self.image_normalization.build((None, pooled_width))
        self.image_projection.build((None, pooled_width))
        if self.image_input is not None:
            self.image_input.build((None, pooled_width))
        self.embedding.build(token_shape)
        rnn_input_width = self.embedding_dim * (2 if self.image_every_step else 1)
        self.rnn.build((None, None, rnn_input_width))
        self.output_projection.build((None, None, self.units))

    def encode_image(self, features, training=None) -> tuple[list, object]:
        """features: (batch, regions, channels) -> (initial state: ``state_count`` tensors of
        (batch, units), the per-step image input (batch, embedding_dim) or None)."""
        if self.image_pooling == "mean":
            pooled = ops.mean(features, axis=1)  # (batch, channels)
        else:
            pooled = ops.reshape(features, (ops.shape(features)[0], -1))  # (batch, regions * channels)
        if self.image_normalization is not None:
            pooled = self.image_normalization(pooled)  # each image's vector to zero mean, unit variance
        pooled = self.dropout(pooled, training=training)
        projected = self.image_projection(pooled)  # (batch, units * states)
        state = list(ops.split(projected, self.state_count, axis=-1)) if self.state_count > 1 else [projected]
        image_input = self.image_input(pooled) if self.image_input is not None else None  # (batch, embedding_dim)
        return state, image_input

    def initial_state(self, features, training=None) -> list:
        """features: (batch, regions, channels) -> ``state_count`` tensors of (batch, units)."""
        return self.encode_image(features, training=training)[0]

    def rnn_inputs(self, embedded, image_input):
        """embedded: (batch, length, embedding_dim) -> the same, or with the image beside every word
        (batch, length, 2 * embedding_dim)."""
        if image_input is None:
            return embedded
        repeated = ops.repeat(image_input[:, None, :], ops.shape(embedded)[1], axis=1)  # (batch, length, embedding_dim)
        return ops.concatenate([embedded, repeated], axis=-1)

    def call(self, inputs, training=None):
        """inputs: features (batch, regions, channels), token_ids (batch, length) int32.

        Returns logits (batch, length, vocab_size): position t predicts token t + 1.
        """
        features, token_ids = inputs
        state, image_input = self.encode_image(features, training=training)
        embedded = self.dropout(self.embedding(token_ids), training=training)  # (batch, length, embedding_dim)
        outputs = self.rnn(self.rnn_inputs(embedded, image_input), initial_state=state, training=training)[0]  # (batch, length, units)
        logits = self.output_projection(self.dropout(outputs, training=training))  # (batch, length, vocab_size)
        return float32_logits(logits)

    def step(self, token_ids, state, image_input=None):
        """token_ids: (batch,) int32, the last token; state from initial_state or step;
        image_input: (batch, embedding_dim) from encode_image when image_every_step.

        Returns logits (batch, vocab_size) for the next token, and the new state.
        """
        embedded = self.embedding(token_ids)[:, None, :]  # (batch, 1, embedding_dim)
        outputs, *state = self.rnn(self.rnn_inputs(embedded, image_input), initial_state=list(state))  # (batch, 1, units)
        return float32_logits(self.output_projection(outputs[:, 0])), state  # (batch, vocab_size) float32

    def initial_cache(self, features) -> dict:
        """The sampler's starting cache: {"state": tuple of (batch, units)}, and with
        image_every_step {"image": (batch, embedding_dim)} (beam search repeats it per beam)."""
        state, image_input = self.encode_image(features, training=False)
        cache = {"state": tuple(state)}
        if image_input is not None:
            cache["image"] = image_input
        return cache

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
            "cell": self.cell,
            "dropout": self.dropout_rate,
            "image_pooling": self.image_pooling,
            "image_norm": self.image_norm,
            "image_every_step": self.image_every_step,
        }


@keras.saving.register_keras_serializable(package="captioning")
class AttentionDecoder(keras.Model):
    """Show, Attend and Tell (Xu et al., 2015): soft additive attention over the regions.

    Per step t, with h the previous hidden state and f_i the regions:
        e_ti = v^T tanh(W_f f_i + W_h h)           attention_units wide
        alpha_t = softmax_i(e_t)                   (batch, regions), sums to 1
        context = beta * sum_i alpha_ti f_i        beta = sigmoid(w_b h) if attention_gate, else 1
        h, state = cell([embedding(word), context], state)
        logits = Dense(dropout([h, context, embedding(word)]))
    The initial state is tanh(Dense(mean_i f_i)); W_f f is computed once per sequence.
    image_norm: layer-normalize every region's vector f_i first (as RNNDecoder does with
    the pooled vector): pretrained features' channels differ widely in scale.

    attention_regularization (lambda): in training, adds the doubly stochastic penalty
    lambda * mean over captions of sum_i (1 - sum_t alpha_ti)^2, over the steps that
    predict a real token, pushing the decoder to look at every region over the caption.
    """

    def __init__(self, vocab_size, embedding_dim=256, units=512, cell="lstm", dropout=0.3, attention_units=256,
                 attention_gate=True, attention_regularization=1.0, image_norm=False, **kwargs):
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ConfigError(f"unknown decoder cell '{cell}' (decoder.cell); valid: {', '.join(CELLS)}")
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
        self.image_norm = image_norm
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
        self.output_projection = layers.Dense(vocab_size, name="output_projection")

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
        self.cell.build((None, self.embedding_dim + channels))
        self.output_projection.build((None, None, self.units + channels + self.embedding_dim))

    def initial_state(self, features, training=None) -> dict:
        """features: (batch, regions, channels) -> the state before the first word.

        {"features" (layer-normalized when image_norm), "projected_features": (batch, regions, attention_units),
         "state": tuple of (batch, units), "context": (batch, channels),
         "attention": (batch, regions) float32, the weights of the last step (zeros before any)}.
        """
        if not self.built:  # generation before any teacher-forced call
            self.build((tuple(features.shape), (None, None)))
        if self.region_normalization is not None:
            features = self.region_normalization(features)  # each region's vector to zero mean, unit variance
        pooled = ops.mean(features, axis=1)  # (batch, channels)
        projected = self.image_projection(pooled)  # (batch, units * states)
        state = tuple(ops.split(projected, self.state_count, axis=-1)) if self.state_count > 1 else (projected,)
        return {
            "features": features,
            "projected_features": self.feature_projection(features),  # (batch, regions, attention_units)
            "state": state,
            "context": ops.zeros_like(pooled),  # (batch, channels)
            "attention": ops.zeros_like(features[:, :, 0], dtype="float32"),  # (batch, regions)
        }

    def attend(self, features, projected_features, hidden):
        """hidden: (batch, units) -> context (batch, channels), attention weights (batch, regions) float32."""
        scores = self.attention_score(
            ops.tanh(projected_features + self.hidden_projection(hidden)[:, None, :]))  # (batch, regions, 1)
        attention = ops.softmax(ops.cast(scores[:, :, 0], "float32"), axis=-1)  # (batch, regions)
        weights = ops.cast(attention, features.dtype)[:, :, None]  # (batch, regions, 1), the compute dtype
        context = ops.sum(weights * features, axis=1)  # (batch, channels)
        if self.gate is not None:
            context = self.gate(hidden) * context  # gate: (batch, 1)
        return context, attention

    def advance(self, embedded, features, projected_features, state):
        """One recurrence: embedded (batch, embedding_dim) -> {"state", "context", "attention"}."""
        context, attention = self.attend(features, projected_features, state[0])
        _, new_state = self.cell(ops.concatenate([embedded, context], axis=-1), list(state))
        return {"state": tuple(new_state), "context": context, "attention": attention}

    def output_logits(self, hidden, context, embedded, training=None):
        """The deep output layer over the last axis: (..., units + channels + embedding_dim) -> (..., vocab) float32."""
        return float32_logits(self.output_projection(self.dropout(ops.concatenate([hidden, context, embedded], axis=-1),
                                                                  training=training)))

    def call(self, inputs, training=None, return_attention=False):
        """inputs: features (batch, regions, channels), token_ids (batch, length) int32, 0 is padding.

        Returns logits (batch, length, vocab_size): position t predicts token t + 1; with
        ``return_attention`` also the attention weights (batch, length, regions) float32,
        row t being the weights used to predict token t + 1.
        """
        features, token_ids = inputs
        start = self.initial_state(features, training=training)
        embedded = self.dropout(self.embedding(token_ids), training=training)  # (batch, length, embedding_dim)

        def recur(carry, embedded_t):
            step = self.advance(embedded_t, start["features"], start["projected_features"], carry["state"])
            return step, step  # keras' scan stacks outputs shaped like the carry

        carry = {key: start[key] for key in ("state", "context", "attention")}
        time_major = ops.transpose(embedded, (1, 0, 2))  # (length, batch, embedding_dim)
        if embedded.shape[1] is None:  # length known only at run time: a graph while loop
            _, steps = ops.scan(recur, carry, time_major)  # each (length, batch, ...)
        else:
            # A known length (always so in training) is unrolled: XLA (training.jit_compile)
            # cannot differentiate scan's while loop, which has no maximum iteration count.
            outputs = []
            for embedded_t in ops.unstack(time_major, axis=0):
                carry, output = recur(carry, embedded_t)
                outputs.append(output)
            steps = tree.map_structure(lambda *step_values: ops.stack(step_values, axis=0), *outputs)
        hidden = ops.transpose(steps["state"][0], (1, 0, 2))  # (batch, length, units)
        context = ops.transpose(steps["context"], (1, 0, 2))  # (batch, length, channels)
        attention = ops.transpose(steps["attention"], (1, 0, 2))  # (batch, length, regions)
        logits = self.output_logits(hidden, context, embedded, training=training)  # (batch, length, vocab_size)
        if training and self.attention_regularization > 0:
            self.add_loss(self.attention_regularization * self.attention_penalty(attention, token_ids))
        return (logits, attention) if return_attention else logits

    @staticmethod
    def attention_penalty(attention, token_ids):
        """Doubly stochastic penalty: mean over captions of sum_i (1 - sum_t alpha_ti)^2.

        attention: (batch, length, regions); token_ids: (batch, length), the inputs. A step
        counts when it predicts a real token (its input is neither padding nor <end>); a
        caption with no such step (an all-padding filler caption) is left out of the mean.
        """
        real = ops.logical_and(ops.not_equal(token_ids, PAD_ID), ops.not_equal(token_ids, END_ID))
        real = ops.cast(real, attention.dtype)  # (batch, length)
        attention_sum = ops.sum(attention * real[:, :, None], axis=1)  # (batch, regions)
        penalty = ops.sum(ops.square(1.0 - attention_sum), axis=-1)  # (batch,)
        has_steps = ops.cast(ops.any(real > 0, axis=1), attention.dtype)  # (batch,)
        return ops.sum(penalty * has_steps) / ops.maximum(ops.sum(has_steps), 1.0)

    def step(self, token_ids, state: dict):
        """token_ids: (batch,) int32, the last token; state from initial_state or step.

        Returns logits (batch, vocab_size) for the next token, and the new state, whose
        "attention" (batch, regions) holds the weights this step used.
        """
        embedded = self.embedding(token_ids)  # (batch, embedding_dim)
        step = self.advance(embedded, state["features"], state["projected_features"], state["state"])
        logits = self.output_logits(step["state"][0], step["context"], embedded)  # (batch, vocab_size)
        return logits, {**state, **step}

    def initial_cache(self, features) -> dict:
        """The sampler's starting cache; it carries the features and W_f f, repeated per beam."""
        return self.initial_state(features, training=False)

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
            "image_norm": self.image_norm,
        }


def _build_rnn_decoder(config: DecoderConfig, vocab_size: int) -> RNNDecoder:
    return RNNDecoder(
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units, cell=config.cell,
        dropout=config.dropout, image_pooling=config.image_pooling, image_norm=config.image_norm,
        image_every_step=config.image_every_step, name="decoder",
    )


def _build_attention_decoder(config: DecoderConfig, vocab_size: int) -> AttentionDecoder:
    return AttentionDecoder(
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units, cell=config.cell,
        dropout=config.dropout, attention_units=config.attention_units, attention_gate=config.attention_gate,
        attention_regularization=config.attention_regularization, image_norm=config.image_norm, name="decoder",
    )


# The valid ``decoder.name`` values.
DECODERS = {"rnn": _build_rnn_decoder, "attention": _build_attention_decoder}


def build_decoder(config: DecoderConfig, vocab_size: int) -> RNNDecoder | AttentionDecoder:
    """The decoder named by ``config.name``."""
    if config.name not in DECODERS:
        raise ConfigError(f"unknown decoder '{config.name}' (decoder.name); valid: {', '.join(DECODERS)}")
    return DECODERS[config.name](config, vocab_size)
