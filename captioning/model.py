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
