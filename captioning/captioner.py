"""A trained model as a captioner: image paths, PIL images or arrays in, caption strings out.

    captioner = load("models/flickr8k.keras")        # or a run directory
    captioner.caption("photo.jpg")                   # -> "a dog runs through the grass"
    captioner.caption([pil_image, uint8_array])      # -> a list of captions
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from captioning.config import ConfigError, ExperimentConfig
from captioning.data.images import load_image, load_pil_image
from captioning.data.pipeline import ImageReader, image_dataset
from captioning.data.vocabulary import END_ID, Vocabulary
from captioning.models.caption_model import CaptionModel, build_model
from captioning.models.encoders import normalization_for
from captioning.models.precision import precision_policy
from captioning.models.search import build_sampler, build_top_beams_sampler, generate_token_ids
from captioning.runs import VOCABULARY_FILE, WEIGHTS_FILE, RunError, load_run_config

# What a model file's --set may change: how it generates and caches, not what it is.
MODEL_FILE_OVERRIDABLE = ("generation.", "images.cache=", "images.cache_dir=")


@dataclasses.dataclass
class AttentionMaps:
    """What the attention picture shows for one image.

    image: (y_size, x_size, 3) float32 in [0, 1], the image as the encoder saw it.
    words: the generated words, then "<end>" if the caption ended.
    attention: (len(words), grid_height, grid_width) float32, word k's attention weights.
    """

    caption: str
    image: np.ndarray
    words: list[str]
    attention: np.ndarray


class Captioner:
    def __init__(self, config: ExperimentConfig, model: CaptionModel, vocabulary: Vocabulary):
        self.config = config
        self.model = model
        self.vocabulary = vocabulary
        self.reader = ImageReader(config.images, normalization_for(config.encoder))
        self.sampler = build_sampler(config.generation)
        self._generate = tf.function(self._generate_eager, reduce_retracing=True)
        self._generate_top = {}  # top -> compiled beam search returning the top beams and their scores
        self._teacher_forced_attention = tf.function(self._teacher_forced_attention_eager, reduce_retracing=True)

    @classmethod
    def from_run(cls, run_dir: str | Path, overrides: list[str] = ()) -> "Captioner":
        """Rebuilds the model from the run's config and loads its weights (no code is loaded)."""
        run_dir = Path(run_dir)
        config = load_run_config(run_dir, overrides)
        weights_path = run_dir / WEIGHTS_FILE
        if not weights_path.is_file():
            raise RunError(f"{run_dir}: no trained weights ({WEIGHTS_FILE}); is training finished?")
        vocabulary = Vocabulary.load(run_dir / VOCABULARY_FILE)
        with precision_policy(config.runtime):  # a mixed-precision run also generates in float16
            model = build_model(config, vocabulary.size, load_pretrained=False)
        model.load_weights(weights_path)
        return cls(config, model, vocabulary)

    @classmethod
    def from_model_file(cls, path: str | Path, overrides: list[str] = ()) -> "Captioner":
        """A one-file model (``make export``); ``overrides`` may change generation.* and the image cache."""
        from captioning.models.model_file import read_model_file

        for text in overrides:
            if not text.strip().startswith(MODEL_FILE_OVERRIDABLE):
                raise ConfigError(f"override '{text}': a model file is already built; only generation.* and "
                                  "images.cache / images.cache_dir can change")
        packaged = read_model_file(path)
        return cls(packaged.experiment_config(overrides), packaged.caption_model, packaged.vocabulary())

    def _generate_eager(self, images):
        features = self.model.encoder(images, training=False)  # (batch, regions, channels)
        return generate_token_ids(self.model.decoder, features, self.config.decoder.max_length, self.sampler)

    def _teacher_forced_attention_eager(self, images, token_ids):
        """images: (1, y_size, x_size, 3); token_ids: (1, max_length - 1) -> attention weights
        (1, max_length - 1, regions), row k the step that predicts token k + 1."""
        features = self.model.encoder(images, training=False)  # (1, regions, channels)
        _, attention = self.model.decoder((features, token_ids), training=False, return_attention=True)
        return attention

    def caption_images(self, images) -> list[str]:
        """images: (batch, y_size, x_size, 3) float32, normalized for this encoder."""
        token_ids = self._generate(tf.convert_to_tensor(images, tf.float32))  # (batch, max_length)
        return [self.vocabulary.decode(row[1:]) for row in np.asarray(token_ids)]

    def top_captions(self, path: str, top: int) -> list[tuple[str, float]]:
        """The ``top`` beams for one image, best first, each with its score: the summed
        log-probability, divided by the length penalty when generation.length_penalty > 0."""
        with self.reader.reporting_errors():
            images = next(iter(image_dataset([str(path)], self.reader, 1)))  # (1, y_size, x_size, 3)
        return self.top_captions_images(images, top)[0]

    def top_captions_images(self, images, top: int) -> list[list[tuple[str, float]]]:
        """images: (batch, y_size, x_size, 3) float32, normalized. For each image its ``top``
        beams, best first, as (caption, score) (see ``top_captions``)."""
        if top not in self._generate_top:
            sampler = build_top_beams_sampler(self.config.generation, top)
            max_length = self.config.decoder.max_length

            def generate(batch):
                features = self.model.encoder(batch, training=False)  # (batch, regions, channels)
                return generate_token_ids(self.model.decoder, features, max_length, sampler)

            self._generate_top[top] = tf.function(generate, reduce_retracing=True)
        token_ids, scores = self._generate_top[top](tf.convert_to_tensor(images, tf.float32))
        token_ids = np.asarray(token_ids)[:, :top]  # (batch, top, max_length)
        scores = np.asarray(scores)[:, :top]  # (batch, top)
        return [[(self.vocabulary.decode(row[1:]), float(score)) for row, score in zip(image_rows, image_scores)]
                for image_rows, image_scores in zip(token_ids, scores)]

    def attention_maps(self, path: str) -> AttentionMaps:
        """Captions one image with the run's sampler, then reruns the decoder on that caption
        (teacher forcing gives the same steps) to read each word's attention weights."""
        if not self.model.decoder.has_attention:
            raise ConfigError(f"decoder.name is '{self.config.decoder.name}': no attention to show "
                              "(train with decoder.name=attention or transformer)")
        with self.reader.reporting_errors():
            images = next(iter(image_dataset([str(path)], self.reader, 1)))  # (1, y_size, x_size, 3)
        token_ids = np.asarray(self._generate(images))[0]  # (max_length,), <start> first
        attention = self._teacher_forced_attention(images, tf.constant(token_ids[None, :-1]))
        attention = np.asarray(attention)[0]  # (max_length - 1, regions): row k predicts token k + 1
        generated = token_ids[1:].tolist()
        length = generated.index(END_ID) + 1 if END_ID in generated else len(generated)
        words = [self.vocabulary.tokens[token_id] for token_id in generated[:length]]
        grid_shape = self.model.encoder.grid_shape(images.shape[1:])
        image = load_image(path, self.config.images.x_size, self.config.images.y_size, "none") / 255.0
        return AttentionMaps(caption=self.vocabulary.decode(token_ids[1:]), image=image, words=words,
                             attention=attention[:length].reshape(length, *grid_shape))

    def caption_paths(self, paths: list[str], batch_size: int = 64, progress: bool = False) -> list[str]:
        captions = []
        progress_bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
        with self.reader.reporting_errors():
            for images in image_dataset([str(path) for path in paths], self.reader, batch_size):
                captions.extend(self.caption_images(images))
                if progress_bar is not None:
                    progress_bar.update(len(captions))
        return captions

    def prepare(self, image) -> np.ndarray:
        """One image -> float32 (y_size, x_size, 3), resized and normalized for this encoder.

        image: a path; a PIL image; or a numpy array (height, width, 3), uint8 in 0..255 or
        float in [0, 1] (as matplotlib shows them). Resizing is the file loader's (Pillow bicubic)."""
        images_config, normalization = self.config.images, self.reader.normalization
        if isinstance(image, (str, os.PathLike)):
            return self.reader(str(image))
        if isinstance(image, Image.Image):
            return load_pil_image(image, images_config.x_size, images_config.y_size, normalization)
        if isinstance(image, np.ndarray):
            return load_pil_image(pil_from_array(image), images_config.x_size, images_config.y_size, normalization,
                                  source=f"a {image.dtype} array of shape {image.shape}")
        raise TypeError(f"cannot caption a {type(image).__name__}: pass a path, a PIL image or a numpy array "
                        "(height, width, 3), or a list of these")

    def caption(self, images, batch_size: int = 32):
        """A caption for one image (a path, PIL image or numpy array, see ``prepare``) or a
        list of captions for a list of them, generated with the model's sampler."""
        if isinstance(images, (list, tuple)):
            captions = []
            for start in range(0, len(images), batch_size):
                batch = np.stack([self.prepare(image) for image in images[start:start + batch_size]])
                captions.extend(self.caption_images(batch))  # batch: (images, y_size, x_size, 3)
            return captions
        return self.caption_images(self.prepare(images)[None])[0]


def pil_from_array(array: np.ndarray) -> Image.Image:
    """(height, width, 3) uint8 0..255, or float in [0, 1] -> an RGB PIL image."""
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image array must be (height, width, 3) RGB, got shape {array.shape}")
    if array.dtype == np.uint8:
        return Image.fromarray(array, "RGB")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"a float image array must hold values in [0, 1] (got {array.min()} .. {array.max()}); "
                             "pass uint8 for 0..255")
        return Image.fromarray(np.round(array * 255.0).astype(np.uint8), "RGB")
    raise ValueError(f"an image array must be uint8 (0..255) or float ([0, 1]), got {array.dtype}")


def load(path: str | Path, overrides: list[str] = ()) -> Captioner:
    """A Captioner from a one-file model (``.keras``) or a run directory."""
    path = Path(path)
    if path.is_dir():
        return Captioner.from_run(path, overrides)
    return Captioner.from_model_file(path, overrides)
