"""The trainable captioner: encoder + decoder over several captions per image.

One training example is an image with its ``captions_per_image`` reference captions, so
the encoder runs once per image while the decoder learns from every caption.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops, tree
from keras.src.losses.loss import scale_loss_for_distribution, unscale_loss_for_distribution

from captioning.config import ExperimentConfig, RuntimeConfig
from captioning.data.vocabulary import PAD_ID
from captioning.models.decoders import build_decoder
from captioning.models.encoders import build_encoder
from captioning.models.optimizer import FusedAdam


@keras.saving.register_keras_serializable(package="captioning")
class CaptionModel(keras.Model):
    """inputs: {"images": (batch, height, width, 3), "captions": (batch, captions, length) int32}.

    Returns logits (batch, captions, length, vocab_size); position t predicts token t + 1.
    With ``encoder=None`` the model trains on cached features instead:
    inputs["features"] is (batch, regions, channels).
    """

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def call(self, inputs, training=None):
        captions = inputs["captions"]
        outputs, _ = self.sequence_outputs(inputs, training=training)  # (batch * captions, length, width)
        logits = self.decoder.output_logits(outputs, training=training)  # (batch * captions, length, vocab)
        return ops.reshape(logits, (-1, ops.shape(captions)[1], ops.shape(captions)[2], self.decoder.vocab_size))

    def sequence_outputs(self, inputs, training=None, real=None):
        """The decoder's per-token outputs before its output layer, (batch * captions, length, width),
        and its attention (or None); with ``real`` (batch * captions, length) bool, at its true
        positions only (tokens, width). The encoder and the decoder's per-image work run once per image."""
        captions = inputs["captions"]
        if self.encoder is None:
            features = inputs["features"]  # (batch, regions, channels), precomputed
        else:
            features = self.encoder(inputs["images"], training=training)  # (batch, regions, channels)
        token_ids = ops.reshape(captions, (-1, ops.shape(captions)[2]))  # (batch * captions, length)
        return self.decoder((features, token_ids), training=training, captions_per_image=ops.shape(captions)[1],
                            output_layer=False, real=real)

    def token_loss(self, inputs, targets, training=False):
        """Mean cross-entropy over the real (non-padding) target tokens, plus the decoder's own
        losses (the attention penalty). The output layer (and the attention after the cell,
        decoders.OutputAttentionDecoder.recur_real) runs on the real tokens alone: about 45 % of
        Flickr8k's positions padded to 24 tokens are padding, about 29 % of those of batches
        trimmed to their longest caption. Under XLA (jit_compile), whose shapes must be
        static, it runs on every position and padding is masked instead."""
        targets = ops.reshape(targets, (-1, ops.shape(targets)[-1]))  # (rows, length)
        real = ops.not_equal(targets, PAD_ID)  # (rows, length)
        if self.jit_compile:
            outputs, _ = self.sequence_outputs(inputs, training=training)  # (rows, length, width)
            logits = self.decoder.output_logits(outputs, training=training)  # (rows, length, vocab)
            token_losses = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            weights = ops.cast(real, token_losses.dtype)
            loss = ops.sum(token_losses * weights) / ops.maximum(ops.sum(weights), 1.0)
        else:
            outputs, _ = self.sequence_outputs(inputs, training=training, real=real)  # (real, width)
            logits = self.decoder.output_logits(outputs, training=training)  # (real, vocab)
            loss = ops.mean(keras.losses.sparse_categorical_crossentropy(tf.boolean_mask(targets, real), logits,
                                                                         from_logits=True))
        for extra in self.decoder.losses:  # the decoder's call (inside sequence_outputs) clears and sets them
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    def train_step(self, data):
        """Keras' TensorFlow train_step with ``token_loss`` in place of call + compiled loss."""
        inputs, targets = data[0], data[1]
        with tf.GradientTape() as tape:
            loss = scale_loss_for_distribution(self.token_loss(inputs, targets, training=True))
            self._loss_tracker.update_state(unscale_loss_for_distribution(loss),
                                            sample_weight=ops.shape(inputs["captions"])[0])
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._logs_for_several_workers(self.get_metrics_result())

    def test_step(self, data):
        inputs, targets = data[0], data[1]
        loss = scale_loss_for_distribution(self.token_loss(inputs, targets, training=False))
        self._loss_tracker.update_state(unscale_loss_for_distribution(loss),
                                        sample_weight=ops.shape(inputs["captions"])[0])
        return self._logs_for_several_workers(self.get_metrics_result())

    def _logs_for_several_workers(self, logs: dict) -> dict:
        """Under MultiWorkerMirroredStrategy with several workers, Keras 3 averages each step's
        logs over the replicas with ``strategy.reduce("MEAN", value, axis=0)``, which fails on
        the scalar loss ("Invalid reduction dimension 0 for input with 0 dimensions",
        tensorflow/tensorflow#72388). Shaped (1,), each replica's value is averaged into the
        scalar Keras expects; one worker or one machine keeps the logs as they are."""
        if not spans_several_workers(self.distribute_strategy):
            return logs
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' hook that builds the compiled loss from the first batch under a strategy.

        Keras first averages that batch over the replicas with ``strategy.reduce``, which
        MultiWorkerMirroredStrategy cannot do for a nested batch like ours (a dict of
        inputs; keras-team/keras#20329: "Attempt to convert a value ({'features': PerReplica...")).
        Only shapes and dtypes matter here, so this takes each tensor's first local replica
        value instead and hands Keras the batch ready-made.
        """
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(first_local_value, next(batches))
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": None if self.encoder is None else keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder_config = config.pop("encoder")
        encoder = None if encoder_config is None else keras.saving.deserialize_keras_object(encoder_config)
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)


def spans_several_workers(strategy) -> bool:
    """Whether ``strategy`` runs replicas on other machines (MultiWorkerMirroredStrategy with
    more replicas than this worker has devices)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def first_local_value(value):
    """A distributed value's tensor on this worker's first replica; any other value as it is."""
    return value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value


def image_shape(config: ExperimentConfig) -> tuple[int, int, int]:
    return (config.images.y_size, config.images.x_size, 3)


def build_model(config: ExperimentConfig, vocab_size: int, load_pretrained: bool = True,
                fine_tuning: bool = False) -> CaptionModel:
    """Encoder and decoder from their config sections, built on a dummy batch.

    fine_tuning=True: the encoder of a fine-tuning phase (encoders.build_encoder).
    """
    encoder = build_encoder(config.encoder, image_shape(config), load_pretrained=load_pretrained,
                            fine_tuning=fine_tuning)
    decoder = build_decoder(config.decoder, vocab_size)
    model = CaptionModel(encoder, decoder, name="caption_model")
    model({"images": ops.zeros((1, *image_shape(config))), "captions": ops.zeros((1, 1, 2), dtype="int32")})
    return model


def build_feature_model(config: ExperimentConfig, vocab_size: int, feature_shape: tuple[int, int]) -> CaptionModel:
    """The decoder alone, trained on cached features of shape (regions, channels)."""
    model = CaptionModel(None, build_decoder(config.decoder, vocab_size), name="caption_model")
    model({"features": ops.zeros((1, *feature_shape)), "captions": ops.zeros((1, 1, 2), dtype="int32")})
    return model


def masked_loss() -> keras.losses.Loss:
    """Cross-entropy over real tokens only: padding (id 0) targets count for nothing."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)


def compile_model(model: CaptionModel, runtime: RuntimeConfig, learning_rate: float) -> None:
    """Adam (optimizer.FusedAdam) with gradient clipping and the masked loss; XLA if ``runtime.jit_compile``.
    learning_rate: Adam's rate, the phase's own (training.learning_rate, fine_tune.learning_rate, ...).

    Under mixed precision Keras wraps the optimizer in a LossScaleOptimizer here (the
    model's dtype policy was set when it was built, see precision.py).
    """
    model.decoder.unroll = runtime.jit_compile  # XLA differentiates only an unrolled time loop
    model.compile(optimizer=FusedAdam(learning_rate, clipnorm=5.0), loss=masked_loss(),
                  jit_compile=runtime.jit_compile)
