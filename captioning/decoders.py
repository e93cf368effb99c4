"""RNN decoders: region features + caption prefix -> next-word logits.

The decoder is its own Keras model, conditioned on the image through its initial state
(Show and Tell): the pooled region features, projected, become the LSTM/GRU state.

    decoder = RNNDecoder(vocab_size=vocabulary.size, units=512, cell="lstm")
    logits = decoder((features, token_ids))       # teacher forcing: (batch, length, vocab)
    state = decoder.initial_state(features)       # before generation
    logits, state = decoder.step(token_ids, state)  # one token: (batch, vocab)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioning.config import ConfigError, DecoderConfig

CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}
STATES_PER_CELL = {"lstm": 2, "gru": 1}  # LSTM carries (hidden, cell), GRU only hidden
IMAGE_POOLINGS = ("mean", "flatten")


@keras.saving.register_keras_serializable(package="captioning")
class RNNDecoder(keras.Model):
    """Embedding -> LSTM/GRU -> vocabulary logits, started from the image.

    image_pooling: "mean" averages the regions (fine for pretrained features); "flatten"
    keeps every region's position, which spatial words ("left of") need when the encoder
    is small and trained from scratch.
    """

    def __init__(self, vocab_size, embedding_dim=256, units=512, cell="lstm", dropout=0.3, image_pooling="mean", **kwargs):
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
        self.state_count = STATES_PER_CELL[cell]
        self.image_projection = layers.Dense(units * self.state_count, activation="tanh", name="image_projection")
        self.embedding = layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.rnn = CELLS[cell](units, return_sequences=True, return_state=True, name=cell)
        self.dropout = layers.Dropout(dropout)
        self.output_projection = layers.Dense(vocab_size, name="output_projection")

    def build(self, input_shape):
        features_shape, token_shape = input_shape
        pooled_width = features_shape[-1] if self.image_pooling == "mean" else features_shape[1] * features_shape[2]
        self.image_projection.build((None, pooled_width))
        self.embedding.build(token_shape)
        self.rnn.build((None, None, self.embedding_dim))
        self.output_projection.build((None, None, self.units))

    def initial_state(self, features, training=None) -> list:
        """features: (batch, regions, channels) -> ``state_count`` tensors of (batch, units)."""
        if self.image_pooling == "mean":
            pooled = ops.mean(features, axis=1)  # (batch, channels)
        else:
            pooled = ops.reshape(features, (ops.shape(features)[0], -1))  # (batch, regions * channels)
        projected = self.image_projection(self.dropout(pooled, training=training))  # (batch, units * states)
        return list(ops.split(projected, self.state_count, axis=-1)) if self.state_count > 1 else [projected]

    def call(self, inputs, training=None):
        """inputs: features (batch, regions, channels), token_ids (batch, length) int32.

        Returns logits (batch, length, vocab_size): position t predicts token t + 1.
        """
        features, token_ids = inputs
        state = self.initial_state(features, training=training)
        embedded = self.dropout(self.embedding(token_ids), training=training)  # (batch, length, embedding_dim)
        outputs = self.rnn(embedded, initial_state=state, training=training)[0]  # (batch, length, units)
        return self.output_projection(self.dropout(outputs, training=training))  # (batch, length, vocab_size)

    def step(self, token_ids, state):
        """token_ids: (batch,) int32, the last token; state from initial_state or step.

        Returns logits (batch, vocab_size) for the next token, and the new state.
        """
        embedded = self.embedding(token_ids)[:, None, :]  # (batch, 1, embedding_dim)
        outputs, *state = self.rnn(embedded, initial_state=list(state))  # (batch, 1, units)
        return self.output_projection(outputs[:, 0]), state  # (batch, vocab_size)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell,
            "dropout": self.dropout_rate,
            "image_pooling": self.image_pooling,
        }


def build_decoder(config: DecoderConfig, vocab_size: int) -> RNNDecoder:
    return RNNDecoder(
        vocab_size=vocab_size, embedding_dim=config.embedding_dim, units=config.units, cell=config.cell,
        dropout=config.dropout, image_pooling=config.image_pooling, name="decoder",
    )
