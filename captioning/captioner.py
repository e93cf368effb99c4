"""A trained run as a captioner: image paths or arrays in, caption strings out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioning.config import ConfigError, ExperimentConfig
from captioning.encoders import normalization_for
from captioning.images import load_image
from captioning.model import CaptionModel, build_model
from captioning.pipeline import ImageReader, image_dataset
from captioning.precision import precision_policy
from captioning.runs import VOCABULARY_FILE, WEIGHTS_FILE, RunError, load_run_config
from captioning.search import build_sampler, build_top_beams_sampler, generate_token_ids
from captioning.vocabulary import END_ID, Vocabulary


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
        self._top_beams_functions = {}  # top -> compiled beam search returning that many beams
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
        with precision_policy(config.training):  # a mixed-precision run also generates in float16
            model = build_model(config, vocabulary.size, load_pretrained=False)
        model.load_weights(weights_path)
        return cls(config, model, vocabulary)

    def _generate_eager(self, images):
        features = self.model.encoder(images, training=False)  # (batch, regions, channels)
        return generate_token_ids(self.model.decoder, features, self.config.decoder.max_length, self.sampler)

    def _teacher_forced_attention_eager(self, images, token_ids):
        """images: (1, y_size, x_size, 3); token_ids: (1, max_length - 1) -> attention weights
        (1, max_length - 1, regions), row k the step that predicts token k + 1."""
        features = self.model.encoder(images, training=False)  # (1, regions, channels)
        _, attention = self.model.decoder((features, token_ids), training=False, return_attention=True)
        return attention

    def _top_beams_function(self, top: int):
        """Beam search compiled once per ``top`` (eager, each call took seconds: a served
        model answers many calls)."""
        if top not in self._top_beams_functions:
            sampler = build_top_beams_sampler(self.config.generation, top)

            def generate_top_beams(images):
                features = self.model.encoder(images, training=False)  # (batch, regions, channels)
                return generate_token_ids(self.model.decoder, features, self.config.decoder.max_length, sampler)

            self._top_beams_functions[top] = tf.function(generate_top_beams, reduce_retracing=True)
        return self._top_beams_functions[top]

    def caption_images(self, images) -> list[str]:
        """images: (batch, y_size, x_size, 3) float32, normalized for this encoder."""
        token_ids = self._generate(tf.convert_to_tensor(images, tf.float32))  # (batch, max_length)
        return [self.vocabulary.decode(row[1:]) for row in np.asarray(token_ids)]

    def top_captions(self, path: str, top: int) -> list[tuple[str, float]]:
        """The ``top`` beams for one image, best first, each with its score: the summed
        log-probability, divided by the length penalty when generation.length_penalty > 0."""
        generate_top_beams = self._top_beams_function(top)
        with self.reader.reporting_errors():
            images = next(iter(image_dataset([str(path)], self.reader, 1)))  # (1, y_size, x_size, 3)
        token_ids, scores = generate_top_beams(images)  # (1, beams, max_length), (1, beams)
        token_ids, scores = np.asarray(token_ids)[0, :top], np.asarray(scores)[0, :top]  # (top, max_length), (top,)
        return [(self.vocabulary.decode(row[1:]), float(score)) for row, score in zip(token_ids, scores)]

    def attention_maps(self, path: str) -> AttentionMaps:
        """Captions one image with the run's sampler, then reruns the decoder on that caption
        (teacher forcing gives the same steps) to read each word's attention weights."""
        if not self.model.decoder.has_attention:
            raise ConfigError(f"decoder.name is '{self.config.decoder.name}': no attention to show "
                              "(train with decoder.name=attention)")
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
