"""The trainable captioner: encoder + decoder over several captions per image.

One training example is an image with its ``captions_per_image`` reference captions, so
the encoder runs once per image while the decoder learns from every caption.
"""

from __future__ import annotations

import keras
from keras import ops

from captioning.config import ExperimentConfig
from captioning.decoders import build_decoder
from captioning.encoders import build_encoder
from captioning.vocabulary import PAD_ID


@keras.saving.register_keras_serializable(package="captioning")
class CaptionModel(keras.Model):
    """inputs: {"images": (batch, height, width, 3), "captions": (batch, captions, length) int32}.

    Returns logits (batch, captions, length, vocab_size); position t predicts token t + 1.
    """

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def call(self, inputs, training=None):
        images, captions = inputs["images"], inputs["captions"]
        features = self.encoder(images, training=training)  # (batch, regions, channels)
        captions_per_image, length = ops.shape(captions)[1], ops.shape(captions)[2]
        features = ops.repeat(features, captions_per_image, axis=0)  # (batch * captions, regions, channels)
        token_ids = ops.reshape(captions, (-1, length))  # (batch * captions, length)
        logits = self.decoder((features, token_ids), training=training)  # (batch * captions, length, vocab)
        return ops.reshape(logits, (-1, captions_per_image, length, self.decoder.vocab_size))

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)


def image_shape(config: ExperimentConfig) -> tuple[int, int, int]:
    return (config.images.y_size, config.images.x_size, 3)


def build_model(config: ExperimentConfig, vocab_size: int, load_pretrained: bool = True) -> CaptionModel:
    """Encoder and decoder from their config sections, built on a dummy batch."""
    encoder = build_encoder(config.encoder, image_shape(config), load_pretrained=load_pretrained)
    decoder = build_decoder(config.decoder, vocab_size)
    model = CaptionModel(encoder, decoder, name="caption_model")
    model({
        "images": ops.zeros((1, *image_shape(config))),
        "captions": ops.zeros((1, 1, 2), dtype="int32"),
    })
    return model


def masked_loss() -> keras.losses.Loss:
    """Cross-entropy over real tokens only: padding (id 0) targets count for nothing."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID)
