"""What every decoder shares: the CaptionDecoder base class, the output layer, the time loop.

decoders.py (the RNN decoders and the ``decoder.name`` registry) and transformer_decoder.py
build on these; they live apart so that neither decoder module imports the other's.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops, tree

from captioning.config import ConfigError

OUTPUT_LAYERS = ("deep", "wide")  # OutputHead kinds


def check_choice(what: str, value: str, key: str, valid) -> None:
    """Raises ConfigError naming ``key`` and the valid values when ``value`` is not among them."""
    if value not in valid:
        raise ConfigError(f"unknown {what} '{value}' ({key}); valid: {', '.join(valid)}")


def float32_logits(logits):
    """Logits as float32 whatever the compute dtype: float16 logits would lose the small
    differences softmax and cross-entropy depend on (and -1e9 masks overflow float16)."""
    return ops.cast(logits, "float32")


def take_sorted_rows(values, rows):
    """values[rows] along the first axis, for ``rows`` in ascending order (each row's tokens
    together, as ``tf.where`` lists them): values (rows_in, ...) -> (len(rows), ...).

    The forward pass is ``tf.gather``'s; the gradient sums each row's slices with the sorted
    ``segment_sum`` instead of the ``unsorted_segment_sum`` tf.gather's gradient becomes,
    which is the slower of the two on CPU for the (tokens, regions, attention_units) slices
    OutputAttentionDecoder.recur_real takes (test_fast_training: the values and gradients agree)."""

    @tf.custom_gradient
    def take(values):
        def gradient(upstream):
            summed = tf.math.segment_sum(upstream, rows)  # (rows up to the last one taken, ...)
            missing = tf.shape(values)[0] - tf.shape(summed)[0]  # rows after the last one taken
            return tf.pad(summed, [[0, missing]] + [[0, 0]] * (len(values.shape) - 1))
        return tf.gather(values, rows), gradient

    return take(values)


@keras.saving.register_keras_serializable(package="captioning")
class OutputHead(layers.Layer):
    """A decoder's per-token outputs -> vocabulary logits (float32).

    inputs: (..., width) whose last ``embedding_dim`` columns are the embedded input word
    and whose first columns are what the decoder computed (the hidden state, and for
    attention the context). Two kinds (``decoder.output_layer``):

    - "deep", Show, Attend and Tell's deep output: logits = L_o(dropout(E y + L_hz [h, z])),
      through the embedding width: a 1,536 -> 2,500 matmul becomes 1,280 -> 256 -> 2,500,
      about 4x fewer FLOPs and millions fewer weights for the attention decoder.
    - "wide": one Dense from the whole width to the vocabulary.
    """

    def __init__(self, vocab_size, embedding_dim, kind="deep", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_choice("output_layer", kind, "decoder.output_layer", OUTPUT_LAYERS)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.kind = kind
        self.dropout_rate = dropout
        self.hidden = layers.Dense(embedding_dim, name="output_hidden") if kind == "deep" else None  # L_hz
        self.dropout = layers.Dropout(dropout)
        self.projection = layers.Dense(vocab_size, name="output_projection")  # L_o

    def build(self, input_shape):
        width = input_shape[-1]
        if self.hidden is not None:
            self.hidden.build((None, width - self.embedding_dim))
            self.projection.build((None, self.embedding_dim))
        else:
            self.projection.build((None, width))

    def call(self, inputs, training=None):
        if self.hidden is not None:
            # One split, not two slices: its gradient is one concatenation, where each slice's
            # is a zero tensor of the whole width and the two are then added.
            computed, words = ops.split(inputs, [inputs.shape[-1] - self.embedding_dim], axis=-1)  # E y: (..., embedding_dim)
            inputs = self.hidden(computed) + words  # (..., embedding_dim)
        return float32_logits(self.projection(self.dropout(inputs, training=training)))  # (..., vocab_size)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "kind": self.kind, "dropout": self.dropout_rate}


class CaptionDecoder(keras.Model):
    """What every decoder shares: teacher forcing in two halves, per-image work once per image.

        outputs = decoder.sequence_outputs(features, token_ids, captions_per_image=5)  # (rows, length, width)
        logits = decoder.output_logits(outputs)                                       # (rows, length, vocab)

    ``features`` hold one row per image and ``token_ids`` ``captions_per_image`` rows per
    image (an image's captions adjacent): the per-image work (normalization, projections,
    initial state) runs once per image and only its result is repeated per caption. The
    two halves let training apply the output layer to the real tokens alone
    (model.CaptionModel); ``call`` chains them for every position.

    Subclasses implement ``image_memory(features, training)`` (a dict of per-image
    tensors), ``recur(memory, token_ids, training)`` -> (outputs, attention or None),
    ``initial_cache`` and ``step_cache``. A subclass whose per-position work need not run
    at padding overrides ``recur_real`` too (OutputAttentionDecoder: the attention).
    """

    has_attention = False  # whether step_cache records "attention" (batch, regions) per word
    unroll = False  # set by model.compile_model under XLA: unroll the time loop (over_time)

    def call(self, inputs, training=None, captions_per_image=1, return_attention=False, output_layer=True,
             real=None):
        """inputs: features (images, regions, channels), token_ids (images * captions_per_image,
        length) int32, 0 is padding.

        Returns logits (rows, length, vocab_size) float32: position t predicts token t + 1;
        with ``return_attention`` (attention decoders) also the weights (rows, length, regions).
        With ``output_layer=False``: (outputs, attention or None) of sequence_outputs instead,
        at the positions where ``real`` (rows, length) bool is true when it is given.
        """
        features, token_ids = inputs
        outputs, attention = self.sequence_outputs(features, token_ids, training=training,
                                                   captions_per_image=captions_per_image, real=real)
        if not output_layer:
            return outputs, attention
        logits = self.output_logits(outputs, training=training)
        return (logits, attention) if return_attention else logits

    def sequence_outputs(self, features, token_ids, training=None, captions_per_image=1, real=None):
        """-> (outputs (rows, length, width) for output_logits, attention (rows, length, regions) or None);
        with ``real`` (rows, length) bool, the outputs at its true positions only, (tokens, width),
        and the attention there (tokens, regions) or None, in row-major order (tf.boolean_mask's)."""
        memory = self.image_memory(features, training=training)
        if real is not None:
            return self.recur_real(memory, token_ids, real, training=training, captions_per_image=captions_per_image)
        return self.recur(per_caption(memory, captions_per_image), token_ids, training=training)

    def recur_real(self, memory, token_ids, real, training=None, captions_per_image=1):
        """recur at the positions where ``real`` (rows, length) is true: (outputs (tokens, width),
        attention (tokens, regions) or None). ``memory`` holds one row per image (image_memory's),
        ``token_ids`` ``captions_per_image`` rows per image. Here the memory is repeated per
        caption, recur runs over every position, and the real ones are picked."""
        outputs, attention = self.recur(per_caption(memory, captions_per_image), token_ids, training=training)
        return tf.boolean_mask(outputs, real), (None if attention is None else tf.boolean_mask(attention, real))

    def output_logits(self, outputs, training=None):
        """outputs (..., width) -> logits (..., vocab_size) float32."""
        return self.head(outputs, training=training)


def per_caption(memory, captions_per_image):
    """A memory with one row per image -> one row per caption (an image's captions adjacent)."""
    if isinstance(captions_per_image, int) and captions_per_image == 1:
        return memory
    return tree.map_structure(lambda tensor: ops.repeat(tensor, captions_per_image, axis=0), memory)


def over_time(step, carry, time_major, unroll=False):
    """Runs ``step(carry, input_t) -> (carry, output_t)`` over the first axis of every
    tensor in ``time_major`` (length, rows, ...); returns the outputs stacked (length, rows, ...).

    A graph loop (scan) by default: it was faster than the unrolled steps on CPU (0.63
    against 0.85 s a Flickr8k-sized rnn step) and takes batches trimmed to their longest
    caption, whose length is known only at run time. ``unroll`` (a length known when
    tracing) is for XLA (runtime.jit_compile), which cannot differentiate scan's while
    loop: it has no maximum iteration count.
    """
    length = tree.flatten(time_major)[0].shape[0]
    if length is None or not unroll:
        _, outputs = ops.scan(step, carry, time_major)
        return outputs
    outputs = []
    for index in range(length):
        carry, output = step(carry, tree.map_structure(lambda tensor: tensor[index], time_major))
        outputs.append(output)
    return tree.map_structure(lambda *values: ops.stack(values, axis=0), *outputs)


def time_major(tensor):
    """(rows, length, ...) <-> (length, rows, ...)."""
    return ops.swapaxes(tensor, 0, 1)
