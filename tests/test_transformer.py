"""The Transformer decoder: its attention weights, cached generation through the shared search
code, a learning check on cached features (real features beat shuffled ones), and a tiny run
that trains, evaluates and draws its attention.

Output shapes, step-by-step = whole sequence, serialization and gradients are covered with
every other decoder in test_models.py (DECODER_VARIANTS); self-critical learning in
test_self_critical.py."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_decoder_inputs, tiny_config
from PIL import Image

from captioning.cli import main
from captioning.config import ConfigError, DecoderConfig, GenerationConfig
from captioning.data.pipeline import feature_dataset
from captioning.data.vocabulary import Vocabulary
from captioning.evaluation.bleu import bleu_scores, derangement
from captioning.models.caption_model import build_feature_model, compile_model
from captioning.models.decoders import build_decoder
from captioning.models.search import build_sampler, forbid_special_tokens, generate_token_ids
from captioning.training.loop import train

VOCAB_SIZE = 11


def make_decoder(dropout=0.0, max_length=7):
    config = DecoderConfig(name="transformer", embedding_dim=8, units=16, transformer_layers=2, transformer_heads=2,
                           dropout=dropout, max_length=max_length)
    return build_decoder(config, VOCAB_SIZE)


@pytest.mark.slow
def test_attention_is_the_last_blocks_cross_attention_and_sums_to_one():
    decoder = make_decoder()
    features, token_ids = random_decoder_inputs(VOCAB_SIZE, batch=3, regions=4, channels=5, length=7)
    logits, attention = decoder((features, token_ids), return_attention=True)
    assert logits.shape == (3, 7, VOCAB_SIZE) and attention.shape == (3, 7, 4)
    np.testing.assert_allclose(np.asarray(attention).sum(axis=-1), 1.0, atol=1e-5)
    cache = decoder.initial_cache(features)
    for position in range(7):
        _, cache = decoder.step_cache(token_ids[:, position], cache)
        np.testing.assert_allclose(cache["attention"], attention[:, position], atol=1e-5)


@pytest.mark.slow
def test_the_regions_are_projected_once_per_caption_not_per_step():
    decoder = make_decoder()
    features, token_ids = random_decoder_inputs(VOCAB_SIZE, batch=2, regions=4, channels=5, length=7)
    decoder((features, token_ids))
    calls = []
    original = decoder.region_projection.call
    decoder.region_projection.call = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        cache = decoder.initial_cache(features)
        for position in range(5):
            _, cache = decoder.step_cache(token_ids[:, position], cache)
    finally:
        decoder.region_projection.call = original
    assert len(calls) == 1 and int(cache["position"][0]) == 5


@pytest.mark.slow
def test_greedy_and_beam_search_run_the_cached_decoder_inside_tf_function():
    decoder = make_decoder()
    features, _ = random_decoder_inputs(VOCAB_SIZE, batch=2, regions=4, channels=5, length=7)
    greedy = tf.function(lambda batch: generate_token_ids(decoder, batch, 7, build_sampler(GenerationConfig())))
    token_ids = np.asarray(greedy(tf.constant(features)))  # (2, 7)
    cache = decoder.initial_cache(features)
    for position in range(6):  # each greedy token is the argmax of its step's allowed logits
        logits, cache = decoder.step_cache(token_ids[:, position], cache)
        np.testing.assert_array_equal(np.argmax(forbid_special_tokens(logits), axis=-1), token_ids[:, position + 1])
    beam = tf.function(lambda batch: generate_token_ids(
        decoder, batch, 7, build_sampler(GenerationConfig(sampler="beam", beam_width=2))))
    assert np.asarray(beam(tf.constant(features))).shape == (2, 7)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="must divide by decoder.transformer_heads=3"):
        build_decoder(DecoderConfig(name="transformer", embedding_dim=8, transformer_heads=3), VOCAB_SIZE)
    with pytest.raises(ConfigError, match="transformer"):
        build_decoder(DecoderConfig(name="transformers"), VOCAB_SIZE)


CLASS_CAPTIONS = ["a red circle on the left", "a blue square above a star", "two green triangles",
                  "a small yellow star below a big circle"]


def class_data(images, regions=4, channels=6, seed=0):
    """Features of 4 kinds of image (a kind's random pattern plus noise) and each kind's caption."""
    patterns = np.random.default_rng(1234).normal(size=(4, regions, channels))  # the same kinds in every call
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 4, images)
    features = (patterns[kinds] + 0.1 * rng.normal(size=(images, regions, channels))).astype(np.float32)
    return features, [CLASS_CAPTIONS[kind] for kind in kinds]


@pytest.mark.slow
def test_the_transformer_learns_captions_from_the_features(tmp_path):
    """Learning: after training on cached features, greedy captions of new images match their
    references (BLEU-4 near 1) and score far lower when the images are shuffled."""
    keras.utils.set_random_seed(0)
    config = tiny_config(tmp_path, "decoder.name=transformer", "decoder.embedding_dim=32", "decoder.units=64",
                         "decoder.transformer_heads=4", "decoder.transformer_layers=2", "decoder.dropout=0.0",
                         "decoder.max_length=10", "training.learning_rate=0.003")
    vocabulary = Vocabulary.build(CLASS_CAPTIONS)
    features, captions = class_data(256)
    tokens = vocabulary.encode_batch(captions, 10)[:, None, :]  # (images, 1, length)
    model = build_feature_model(config, vocabulary.size, features.shape[1:])
    compile_model(model, config.runtime, config.training.learning_rate)
    model.fit(feature_dataset(features, tokens, 32, shuffle=True, seed=0).repeat(), steps_per_epoch=60, epochs=1,
              verbose=0)
    test_features, test_captions = class_data(40, seed=1)
    sampler = build_sampler(GenerationConfig())

    def bleu_4(batch):
        token_ids = np.asarray(generate_token_ids(model.decoder, batch, 10, sampler))
        return bleu_scores([[caption] for caption in test_captions],
                           [vocabulary.decode(row[1:]) for row in token_ids])["bleu_4"]

    real, shuffled = bleu_4(test_features), bleu_4(test_features[derangement(40, seed=0)])
    assert real > 0.9 and shuffled < real - 0.4, (real, shuffled)


@pytest.mark.slow
def test_a_tiny_transformer_run_trains_evaluates_and_draws_its_attention(tiny_data_root, tmp_path, capsys):
    run_dir = tiny_data_root / "runs" / "tiny_transformer"
    train(tiny_config(tiny_data_root, "decoder.name=transformer", "decoder.transformer_heads=2", "training.epochs=1"),
          run_dir, verbose=0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["bleu_4"] <= 1
    assert 0 < metrics["attention_entropy"] <= metrics["attention_uniform_entropy"] + 1e-6
    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image_path)
    out = tmp_path / "attention.png"
    capsys.readouterr()
    assert main(["caption", str(image_path), "--run", str(run_dir), "--attention", str(out), "--beam", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 0
