"""Training-time augmentation: mirrored images get mirrored words, only training batches change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

import captioning.training.loop as train_module
import captioning.training.training_data as training_data_module
from captioning.captioner import Captioner
from captioning.config import ConfigError
from captioning.data.datasets import CaptionedImage, load_split
from captioning.data.pipeline import ImageReader, Mirror, caption_array, feature_dataset
from captioning.data.vocabulary import UNKNOWN_ID, Vocabulary
from captioning.models.encoders import normalization_for
from captioning.training.augment import (
    CaptionAugmentation,
    build_augmentation,
    mirrored_token_ids,
    value_range,
)
from captioning.training.features import cache_key
from captioning.training.training_data import cached_features
from captioning.validate import check_augmentation

CAPTIONS, LENGTH = 5, 22  # tiny config: captions_per_image, decoder.max_length


def mirrored(caption: str) -> str:
    return " ".join({"left": "right", "right": "left"}.get(word, word) for word in caption.split())


@pytest.fixture(scope="module")
def shapes(tiny_data_root):
    """The tiny shapes train split (the real generator), its vocabulary and an image reader."""
    config = tiny_config(tiny_data_root, "images.augment=true")
    examples = load_split(config.data, "train")
    vocabulary = Vocabulary.build([caption for example in examples for caption in example.captions])
    reader = ImageReader(config.images, normalization_for(config.encoder))
    return config, examples, vocabulary, reader


def test_a_flipped_shapes_image_is_mirrored_and_its_left_of_becomes_right_of(shapes):
    config, examples, vocabulary, reader = shapes
    example = next(example for example in examples if any("to the left of" in caption for caption in example.captions))
    image = reader(example.image_path)  # (y, x, 3)
    tokens = caption_array([example], vocabulary, CAPTIONS, LENGTH)  # (1, captions, length)
    mirrored_tokens = caption_array([CaptionedImage(example.image_path, tuple(map(mirrored, example.captions)))],
                                    vocabulary, CAPTIONS, LENGTH)[0]
    copies = 16  # the same image 16 times: each copy is flipped or not on its own
    images, augmented_tokens = build_augmentation(config, vocabulary)(tf.repeat(image[None], copies, axis=0),
                                                                      tf.repeat(tokens, copies, axis=0))
    flipped = 0
    for augmented_image, caption_tokens in zip(images.numpy(), augmented_tokens.numpy()):
        if np.array_equal(augmented_image, np.fliplr(image)):
            flipped += 1
            np.testing.assert_array_equal(caption_tokens, mirrored_tokens)  # every caption of the image
            captions = [vocabulary.decode(row[1:]) for row in caption_tokens]
            assert captions == [mirrored(caption) for caption in example.captions]
            for before, after in zip(example.captions, captions):  # "X to the left of Y" -> "X to the right of Y"
                assert ("to the left of" in before) == ("to the right of" in after), (before, after)
        else:
            np.testing.assert_array_equal(augmented_image, image)
            np.testing.assert_array_equal(caption_tokens, tokens[0])
    assert 0 < flipped < copies


def test_mirrored_ids_swap_left_and_right_and_keep_everything_else():
    vocabulary = Vocabulary.build(["a circle to the left of a square", "a square to the right of a circle"])
    mapping = mirrored_token_ids(vocabulary)
    left, right = vocabulary.ids["left"], vocabulary.ids["right"]
    assert mapping[left] == right and mapping[right] == left
    others = [index for index in range(vocabulary.size) if index not in (left, right)]
    np.testing.assert_array_equal(mapping[others], others)
    without = Vocabulary.build(["a red circle", "a blue square"])
    np.testing.assert_array_equal(mirrored_token_ids(without), np.arange(without.size))  # nothing to swap
    one_sided = Vocabulary.build(["a circle to the left of a square"])
    assert mirrored_token_ids(one_sided)[one_sided.ids["left"]] == UNKNOWN_ID  # "right" would encode as <unk>


def test_every_augmentation_repeats_with_its_seed_and_stays_in_range(shapes):
    config, examples, vocabulary, reader = shapes
    config.images.augment_rotation, config.images.augment_zoom, config.images.augment_contrast = 0.05, 0.2, 0.3
    images = np.stack([reader(example.image_path) for example in examples[:8]])  # (8, y, x, 3) in [0, 1]
    tokens = caption_array(examples[:8], vocabulary, CAPTIONS, LENGTH)

    def augmented(seed):
        return CaptionAugmentation(config.images, vocabulary, "unit", seed)(tf.constant(images), tf.constant(tokens))

    first, again, other = augmented(0), augmented(0), augmented(1)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())
    assert not np.allclose(first[0].numpy(), other[0].numpy())
    assert first[0].shape == images.shape and first[0].dtype == tf.float32
    assert not np.allclose(first[0].numpy(), images) and 0.0 <= first[0].numpy().min() and first[0].numpy().max() <= 1.0
    assert value_range("unit") == (0.0, 1.0)
    assert value_range("vgg16") == pytest.approx((-123.68, 151.061))


def test_a_frozen_cached_encoder_takes_the_mirror_but_refuses_what_changes_pixels(tmp_path):
    frozen = tiny_config(tmp_path, "images.augment=true", "images.augment_zoom=0.2", "encoder.name=vgg16",
                         "encoder.weights=none")
    with pytest.raises(ConfigError, match="augment_zoom=0.2.*frozen.*feature cache.*encoder.trainable=true.*"
                                          "images.augment=false"):
        train_module.train(frozen, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists() and not (tmp_path / "shapes").exists()  # refused before any work
    for trained in ["encoder.trainable=true", "encoder.fine_tune_last_block=true"]:
        check_augmentation(tiny_config(tmp_path, "images.augment=true", "images.augment_zoom=0.2",
                                       "encoder.name=vgg16", trained))
    check_augmentation(tiny_config(tmp_path, "images.augment=true", "encoder.name=vgg16"))  # the mirror alone is cached
    check_augmentation(tiny_config(tmp_path, "encoder.name=vgg16"))  # augment off: nothing to refuse


def test_mirrored_features_have_a_cache_entry_of_their_own_and_are_the_mirrored_images(tiny_data_root, tmp_path, shapes):
    """Known answer: an 'encoder' that returns the image's first row as its regions, so the
    mirrored entry must hold each row reversed; the unmirrored entry keeps its old key."""
    config = tiny_config(tiny_data_root, "images.augment=true", f"images.feature_cache_dir={tmp_path / 'features'}")
    _, examples, _, reader = shapes
    paths = [example.image_path for example in examples[:5]]

    def first_row(images):  # (batch, y, x, 3) -> (batch, x, 3)
        return images[:, 0]

    plain = cached_features(config, paths, "train", first_row)
    mirrored = cached_features(config, paths, "train, mirrored", first_row, mirrored=True)
    np.testing.assert_allclose(plain, np.stack([reader(path)[0] for path in paths]), atol=1e-3)  # float16 cache
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])
    assert len(list((tmp_path / "features").iterdir())) == 2
    normalization = normalization_for(config.encoder)
    assert cache_key(paths, config.encoder, config.images, normalization)[1].keys() == {
        "format_version", "images", "image_listing_sha256", "encoder", "image_size", "normalization"}
    assert cache_key(paths, config.encoder, config.images, normalization, mirrored=True)[1]["mirrored"] is True


def test_feature_batches_mirror_about_half_the_images_with_their_words_the_same_each_time_the_epoch_runs():
    images, captions, length = 64, 2, 6
    features = np.arange(images, dtype=np.float16)[:, None, None] * np.ones((images, 2, 3), np.float16)
    mirror = Mirror(-features, np.array([0, 1, 2, 4, 3, 5], np.int32))  # ids 3 and 4 ("left", "right") swap
    tokens = np.tile(np.array([1, 3, 5, 4, 2, 0], np.int32), (images, captions, 1))  # (images, C, length)

    def epoch(number):
        seen = {}
        for inputs, targets in feature_dataset(features, tokens, 8, shuffle=True, seed=0, epoch=number, mirror=mirror):
            for image, words, next_words in zip(inputs["features"].numpy(), inputs["captions"].numpy(), targets.numpy()):
                flipped = image[0, 0] < 0 or (image[0, 0] == 0 and words[0, 1] == 4)
                number_of_image = int(abs(image[0, 0]))
                expected = mirror.token_ids[tokens[0, 0]] if flipped else tokens[0, 0]
                np.testing.assert_array_equal(words, np.tile(expected[:length - 2], (captions, 1)))
                np.testing.assert_array_equal(next_words, np.tile(expected[1:length - 1], (captions, 1)))
                seen[number_of_image] = flipped
        return seen

    first = epoch(0)
    assert sorted(first) == list(range(images)) and 16 < sum(first.values()) < 48
    assert epoch(0) == first and epoch(1) != first  # a resumed epoch mirrors the same images; the next, others


@pytest.mark.parametrize("overrides, message", [
    (["images.augment=true", "images.augment_flip=false"], "every augmentation is off"),
    (["images.augment_rotation=1.5"], "images.augment_rotation=1.5 must be at least 0"),
    (["images.augment_zoom=-0.1"], "images.augment_zoom=-0.1 must be at least 0"),
])
def test_augmentation_settings_that_do_nothing_or_make_no_sense_are_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_augmentation(tiny_config(tmp_path, *overrides))


@pytest.mark.slow
def test_tiny_run_trains_with_augmentation_on_training_batches_only(tiny_data_root, tmp_path, monkeypatch, shapes):
    _, train_examples, _, reader = shapes
    built = []  # (examples, augmentation, dataset) of each training_dataset call in train()
    original_dataset = training_data_module.training_dataset

    def recording_dataset(examples, augmentation=None, **options):
        dataset = original_dataset(examples, augmentation=augmentation, **options)
        built.append((examples, augmentation, dataset))
        return dataset

    traces = []  # tf.data calls the augmentation's Python code once, when it builds a pipeline with it
    original_call = CaptionAugmentation.__call__

    def counting_call(self, images, tokens):
        traces.append(1)
        return original_call(self, images, tokens)

    monkeypatch.setattr(training_data_module, "training_dataset", recording_dataset)
    monkeypatch.setattr(CaptionAugmentation, "__call__", counting_call)
    run_dir = tmp_path / "run"
    config = tiny_config(tiny_data_root, "images.augment=true", "training.epochs=1")
    train_module.train(config, run_dir, verbose=0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["bleu_4"] <= 1.0

    augmented = [(examples, dataset) for examples, augmentation, dataset in built if augmentation is not None]
    assert len(augmented) == 1 and augmented[0][0] == train_examples  # the training set, and only it
    stopping_examples = load_split(config.data, "val")
    ((_, stopping_dataset),) = [(examples, dataset) for examples, _, dataset in built if examples == stopping_examples]
    stopping_images = np.concatenate([inputs["images"].numpy() for inputs, _ in stopping_dataset])
    np.testing.assert_array_equal(stopping_images, np.stack([reader(example.image_path) for example in stopping_examples]))

    originals = [reader(example.image_path) for example in train_examples]
    seen = [image for inputs, _ in augmented[0][1] for image in inputs["images"].numpy()]
    mirrors = sum(any(np.array_equal(image, np.fliplr(original)) for original in originals) for image in seen)
    assert len(seen) == len(originals) and 0 < mirrors < len(seen)  # the training batches were flipped

    Captioner.from_run(run_dir).caption_paths([stopping_examples[0].image_path])  # what `make caption` runs
    assert len(traces) == 1  # evaluation and captioning never built a pipeline with the augmentation


@pytest.mark.slow
def test_a_frozen_encoder_run_trains_on_its_mirrored_features_too(tiny_data_root, tmp_path):
    features = tmp_path / "features"
    config = tiny_config(tiny_data_root, "images.augment=true", "training.epochs=1", "encoder.name=mobilenet",
                         "encoder.weights=none", "encoder.alpha=0.25", f"images.feature_cache_dir={features}")
    train_module.train(config, tmp_path / "run", verbose=0)
    manifests = [json.loads(path.read_text()) for path in features.glob("*/manifest.json")]
    mirrored = [manifest for manifest in manifests if manifest.get("mirrored")]
    train_images = len(load_split(config.data, "train"))
    assert len(mirrored) == 1 and mirrored[0]["images"] == train_images
    assert 0.0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["bleu_4"] <= 1.0
