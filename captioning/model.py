"""The trainable captioner: encoder + decoder over several captions per image.

One training example is an image with its ``captions_per_image`` reference captions, so
the encoder runs once per image while the decoder learns from every caption.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops, tree

from captioning.config import ExperimentConfig, TrainingConfig
from captioning.decoders import build_decoder
from captioning.encoders import build_encoder
from captioning.vocabulary import PAD_ID


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
        if self.encoder is None:
            features = inputs["features"]  # (batch, regions, channels), precomputed
        else:
            features = self.encoder(inputs["images"], training=training)  # (batch, regions, channels)
        captions_per_image, length = ops.shape(captions)[1], ops.shape(captions)[2]
        features = ops.repeat(features, captions_per_image, axis=0)  # (batch * captions, regions, channels)
        token_ids = ops.reshape(captions, (-1, length))  # (batch * captions, length)
        logits = self.decoder((features, token_ids), training=training)  # (batch * captions, length, vocab)
        return ops.reshape(logits, (-1, captions_per_image, length, self.decoder.vocab_size))

    def train_step(self, data):
        return self._logs_for_several_workers(super().train_step(data))

    def test_step(self, data):
        return self._logs_for_several_workers(super().test_step(data))

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


def compile_model(model: CaptionModel, training: TrainingConfig, learning_rate: float | None = None) -> None:
    """Adam with gradient clipping and the masked loss; XLA if ``training.jit_compile``.
    learning_rate: ``training.learning_rate`` if None (a fine-tuning phase gives its own).

    Under mixed precision Keras wraps the optimizer in a LossScaleOptimizer here (the
    model's dtype policy was set when it was built, see precision.py).
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate or training.learning_rate, clipnorm=5.0), loss=masked_loss(),
                  jit_compile=training.jit_compile)
