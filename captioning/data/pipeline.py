"""tf.data input pipelines: captioned images -> batches for training and generation."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from captioning.config import ImagesConfig
from captioning.data.datasets import CaptionedImage
from captioning.data.image_cache import ImageCache
from captioning.data.images import ImageLoadError, load_image
from captioning.data.vocabulary import PAD_ID, Vocabulary
from captioning.files import CacheWriteError


class ImageReader:
    """path -> normalized float32 (y_size, x_size, 3), through the on-disk cache if enabled."""

    def __init__(self, config: ImagesConfig, normalization: str):
        self.config = config
        self.normalization = normalization
        self.cache = ImageCache(config.cache_dir) if config.cache else None
        self.errors: list[ImageLoadError | CacheWriteError] = []  # what failed inside tf.data, to re-raise outside it

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.config.y_size, self.config.x_size, 3)

    def __call__(self, path: str) -> np.ndarray:
        try:
            if self.cache is not None:
                return self.cache.load(path, self.config.x_size, self.config.y_size, self.normalization)
            return load_image(path, self.config.x_size, self.config.y_size, self.normalization)
        except (ImageLoadError, CacheWriteError) as error:
            self.errors.append(error)
            raise

    @contextlib.contextmanager
    def reporting_errors(self):
        """Inside tf.data an ImageLoadError or CacheWriteError becomes a TensorFlow error;
        give the user ours back."""
        try:
            yield
        except tf.errors.OpError:
            if self.errors:
                raise self.errors[0] from None
            raise


def caption_array(examples: list[CaptionedImage], vocabulary: Vocabulary, captions_per_image: int, length: int) -> np.ndarray:
    """(images, captions_per_image, length) int32; missing captions are all padding (ignored)."""
    tokens = np.zeros((len(examples), captions_per_image, length), dtype=np.int32)
    flat_captions, positions = [], []
    for image_index, example in enumerate(examples):
        for caption_index, caption in enumerate(example.captions[:captions_per_image]):
            flat_captions.append(caption)
            positions.append((image_index, caption_index))
    packed = vocabulary.encode_batch(flat_captions, length)  # (all captions, length)
    for (image_index, caption_index), row in zip(positions, packed):
        tokens[image_index, caption_index] = row
    return tokens


def read_image_op(reader: ImageReader, path: tf.Tensor) -> tf.Tensor:
    """A string tensor path -> (y_size, x_size, 3) float32 tensor, inside a tf.data map."""
    image = tf.numpy_function(lambda value: reader(value.decode()), [path], tf.float32)
    return tf.ensure_shape(image, reader.shape)


def image_dataset(paths: list[str], reader: ImageReader, batch_size: int) -> tf.data.Dataset:
    """Batches of decoded, resized, normalized images in order, read in parallel."""
    dataset = tf.data.Dataset.from_tensor_slices(paths)
    dataset = dataset.map(lambda path: read_image_op(reader, path), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch (0-based) of a run seeded ``seed``: an epoch's order
    depends on nothing else, so a run resumed at any epoch sees the batches an uninterrupted
    run would (tf.data's reshuffle_each_iteration would restart at the first epoch's order)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def training_dataset(examples: list[CaptionedImage], vocabulary: Vocabulary, reader: ImageReader, captions_per_image: int,
                     length: int, batch_size: int, shuffle: bool, seed: int,
                     augmentation: Callable | None = None, epoch: int = 0, skip_batches: int = 0) -> tf.data.Dataset:
    """Yields ({"images": (batch, y, x, 3), "captions": (batch, C, length - 1)}, targets (batch, C, length - 1)).

    shuffle: in the order of ``epoch_seed(seed, epoch)``, the same at every iteration.
    skip_batches: the first batches of that order left out, unread (a resumed epoch).
    augmentation: ``(images, tokens) -> (images, tokens)`` on whole batches, before the
    tokens become inputs and targets (augment.CaptionAugmentation); the training set only.
    """
    tokens = caption_array(examples, vocabulary, captions_per_image, length)  # (images, C, length)
    paths = [example.image_path for example in examples]
    dataset = tf.data.Dataset.from_tensor_slices((paths, tokens))
    if shuffle:
        dataset = dataset.shuffle(len(examples), seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    dataset = dataset.skip(skip_batches * batch_size)  # the skipped batches are whole ones

    def read(path, caption_tokens):
        return read_image_op(reader, path), caption_tokens  # (y_size, x_size, 3), (C, length)

    def inputs_and_targets(images, caption_tokens):
        return {"images": images, "captions": caption_tokens[:, :, :-1]}, caption_tokens[:, :, 1:]

    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augmentation is not None:
        # One batch at a time (no num_parallel_calls): the augmentation layers' random
        # generators are stateful, and parallel calls would take their states in a varying
        # order, so the run would not repeat. It costs little next to reading the images.
        dataset = dataset.map(augmentation)
    return shard_by_data(dataset.map(inputs_and_targets, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


# Length bucketing: training images are shuffled, then sorted by their longest caption
# within pools of this many batches, and the pool's batches are shuffled again, so a batch
# holds images of similar caption lengths and is trimmed to its longest (Flickr8k: about
# 16 steps a batch instead of 23). A pool this size keeps each epoch's order random.
BUCKET_POOL_BATCHES = 32


def caption_lengths(tokens: np.ndarray) -> np.ndarray:
    """tokens: (images, C, length) -> (images,) int32, the tokens of each image's longest caption."""
    return (tokens != PAD_ID).sum(axis=-1).max(axis=-1).astype(np.int32)


def trimmed_to_longest(tokens: np.ndarray) -> np.ndarray:
    """tokens (..., length), 0 is padding -> cut after the longest caption's last token (at
    least 2 tokens, so inputs and targets each keep one)."""
    return tokens[..., :max(int((tokens != PAD_ID).sum(axis=-1).max()), 2)]


# Which random stream of an epoch's seed draws the images that epoch mirrors (mirrored_images).
MIRROR_STREAM = 1


def mirrored_images(images: int, seed: int) -> np.ndarray:
    """(images,) bool: which images an epoch whose seed is ``seed`` mirrors, each with
    probability 1/2; the same seed draws the same images (a resumed epoch)."""
    return np.random.default_rng([seed, MIRROR_STREAM]).random(images) < 0.5


@dataclasses.dataclass(frozen=True)
class Mirror:
    """The mirrored copy of a training set's cached features, for ``feature_dataset``."""

    features: np.ndarray  # (images, regions, channels): the features of each image mirrored left-right
    token_ids: np.ndarray  # (vocabulary size,) int32: the id each token becomes in a mirrored image's captions


def rows_with_mirrors(features: np.ndarray, mirrored_features: np.ndarray, indices: np.ndarray,
                      flipped: np.ndarray) -> np.ndarray:
    """(batch, regions, channels) float32: row ``indices[i]`` of ``mirrored_features`` where
    ``flipped[i]``, else of ``features`` (each array read only where needed: they are
    usually memory-mapped)."""
    rows = np.empty((len(indices), *features.shape[1:]), np.float32)
    rows[~flipped] = features[indices[~flipped]]
    if flipped.any():
        rows[flipped] = mirrored_features[indices[flipped]]
    return rows


def feature_dataset(features: np.ndarray, tokens: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                    bucket: bool = True, epoch: int = 0, skip_batches: int = 0,
                    mirror: Mirror | None = None) -> tf.data.Dataset:
    """Batches of cached features: ({"features": (batch, regions, channels), "captions": (batch, C, length - 1)}, targets).

    features: (images, regions, channels) float16, usually memory-mapped; tokens: (images, C, length).
    Each batch's captions are trimmed to its longest, so ``length`` varies from batch to
    batch; with ``bucket`` (training batches, ``shuffle``) images of similar caption
    lengths are batched together (BUCKET_POOL_BATCHES). The order is that of
    ``epoch_seed(seed, epoch)``, the same at every iteration; skip_batches: its first batches
    left out, unread (a resumed epoch). mirror: each image is mirrored with probability 1/2,
    drawn per epoch from the same seed (so a resumed epoch mirrors the same images): its
    features come from ``mirror.features`` and its captions' tokens map through
    ``mirror.token_ids``.
    """
    lengths = caption_lengths(tokens)
    dataset = tf.data.Dataset.range(len(features))
    seed = epoch_seed(seed, epoch)
    mirrored = mirrored_images(len(features), seed) if mirror is not None else None  # (images,) bool
    if shuffle:
        dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=False)
        if bucket:
            by_length = tf.constant(lengths, tf.int32)
            dataset = dataset.batch(batch_size * BUCKET_POOL_BATCHES).map(
                lambda pool: tf.gather(pool, tf.argsort(tf.gather(by_length, pool), stable=True))).unbatch()
    dataset = dataset.batch(batch_size)
    if shuffle and bucket:
        dataset = dataset.shuffle(BUCKET_POOL_BATCHES, seed=seed + 1, reshuffle_each_iteration=False)
    dataset = dataset.skip(skip_batches)
    # unbatch() forgets the count; known, the progress bar shows each epoch's end
    batches = max(-(-len(features) // batch_size) - skip_batches, 0)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))

    def gather(indices):
        indices = np.sort(indices)  # memory-mapped rows read in order
        if mirror is None:
            return np.asarray(features[indices], dtype=np.float32), trimmed_to_longest(tokens[indices])
        flipped = mirrored[indices]  # (batch,) bool
        batch_features = rows_with_mirrors(features, mirror.features, indices, flipped)  # (batch, regions, channels)
        batch_tokens = tokens[indices]  # (batch, C, length)
        batch_tokens = np.where(flipped[:, None, None], mirror.token_ids[batch_tokens], batch_tokens)
        return batch_features, trimmed_to_longest(batch_tokens.astype(np.int32))

    def read(indices):
        batch_features, batch_tokens = tf.numpy_function(gather, [indices], (tf.float32, tf.int32))
        batch_features = tf.ensure_shape(batch_features, (None, *features.shape[1:]))
        batch_tokens = tf.ensure_shape(batch_tokens, (None, tokens.shape[1], None))
        return {"features": batch_features, "captions": batch_tokens[:, :, :-1]}, batch_tokens[:, :, 1:]

    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return shard_by_data(dataset)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Under "multi_worker", every worker runs the same pipeline and keeps its share of each
    global batch (tf.data's DATA auto-shard policy). The default policy would first look for
    input files to split by worker, find none (our sources are in-memory lists) and log a
    warning. Other strategies ignore the option."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
