"""runtime.mixed_precision and runtime.jit_compile: the loss after a few steps matches the
default float32, non-XLA training; a mixed-precision run still generates, resumes and captions."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import interrupt_after, tiny_config

from captioning.captioner import Captioner
from captioning.config import GenerationConfig
from captioning.data.datasets import load_split
from captioning.data.pipeline import ImageReader, training_dataset
from captioning.data.vocabulary import Vocabulary
from captioning.models.caption_model import build_model, compile_model
from captioning.models.encoders import normalization_for
from captioning.models.precision import precision_policy
from captioning.models.search import build_sampler, generate_token_ids
from captioning.training.checkpoints import TrainingCheckpoint
from captioning.training.loop import train

# XLA runs the same float32 arithmetic, fused: measured 6e-7 (rnn) and 2e-7 (attention)
# relative difference over five steps.
XLA_RELATIVE_TOLERANCE = 1e-5
# float16 compute rounds every activation to 11 significant bits: measured 9e-6 (rnn) and
# 1.3e-6 (attention) relative difference over five steps on CPU; a GPU's float16 kernels
# round differently, and longer training drifts further, so the bound leaves room (1e-3).
MIXED_PRECISION_RELATIVE_TOLERANCE = 1e-3
# bfloat16 keeps 8 significant bits (float16: 11): measured 4e-5 (rnn) and 1.2e-5 (attention)
# relative difference over five steps on an AVX512-BF16 CPU; the bound leaves room for 8x float16's.
BFLOAT16_RELATIVE_TOLERANCE = 1e-2
STEPS = 5
pytestmark = pytest.mark.slow  # every test here trains (make test-fast leaves them out)


def one_batch(config):
    examples = load_split(config.data, "train")[:8]
    vocabulary = Vocabulary.build([caption for example in examples for caption in example.captions])
    reader = ImageReader(config.images, normalization_for(config.encoder))
    dataset = training_dataset(examples, vocabulary, reader, config.data.captions_per_image, config.decoder.max_length,
                               batch_size=8, shuffle=False, seed=0)
    inputs, targets = next(iter(dataset))
    return inputs, targets, vocabulary


def losses_after_steps(data_root, *overrides):
    """(the loss of each of STEPS training steps on one fixed batch, the model, the batch's inputs)."""
    config = tiny_config(data_root, "decoder.dropout=0.0", *overrides)
    inputs, targets, vocabulary = one_batch(config)
    keras.utils.set_random_seed(0)
    with precision_policy(config.runtime):
        model = build_model(config, vocabulary.size)
    compile_model(model, config.runtime, config.training.learning_rate)
    losses = np.array([float(model.train_on_batch(inputs, targets)) for _ in range(STEPS)])
    return losses, model, inputs


DECODERS = {
    "rnn": ["decoder.name=rnn"],
    # A short caption keeps XLA's compilation of the unrolled attention steps shorter.
    "attention": ["decoder.name=attention", "decoder.max_length=8"],
}


@pytest.fixture(scope="module")
def trained(tiny_data_root):
    """trained(decoder_name, switch=None) -> losses_after_steps(...), each computed once per module."""
    runs = {}

    def run(decoder_name, switch=None):
        if (decoder_name, switch) not in runs:
            runs[decoder_name, switch] = losses_after_steps(tiny_data_root, *DECODERS[decoder_name],
                                                            *(switch.split() if switch else []))
        return runs[decoder_name, switch]

    return run


# The attention case compiles the unrolled steps of an 8-word caption: 19 s on the shared 2-core machine.
@pytest.mark.parametrize("decoder_name", list(DECODERS))
def test_xla_training_matches_the_default(trained, decoder_name):
    default, _, _ = trained(decoder_name)
    compiled, model, _ = trained(decoder_name, "runtime.jit_compile=true")
    assert model.jit_compile is True
    assert default[-1] < default[0]  # it really trained
    np.testing.assert_allclose(compiled, default, rtol=XLA_RELATIVE_TOLERANCE)


@pytest.mark.parametrize("decoder_name", list(DECODERS))
def test_mixed_precision_training_matches_float32(trained, decoder_name):
    default, _, _ = trained(decoder_name)
    mixed, model, inputs = trained(decoder_name, "runtime.mixed_precision=true")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.decoder.compute_dtype == "float16"
    assert {weight.dtype for weight in model.weights} == {"float32"}  # weights stay float32
    assert not np.array_equal(mixed, default)  # float16 really ran
    np.testing.assert_allclose(mixed, default, rtol=MIXED_PRECISION_RELATIVE_TOLERANCE)
    logits = model(inputs, training=False)
    assert logits.dtype == "float32" and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("decoder_name", list(DECODERS))
def test_bfloat16_mixed_precision_training_matches_float32(trained, decoder_name):
    """runtime.mixed_precision_dtype=bfloat16: bfloat16 compute, float32 weights and logits,
    no loss scaling (bfloat16 has float32's exponent range)."""
    default, _, _ = trained(decoder_name)
    mixed, model, inputs = trained(decoder_name, "runtime.mixed_precision=true runtime.mixed_precision_dtype=bfloat16")
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.decoder.compute_dtype == "bfloat16"
    assert {weight.dtype for weight in model.weights} == {"float32"}
    assert not np.array_equal(mixed, default)  # bfloat16 really ran
    assert mixed[-1] < mixed[0]  # and trained
    np.testing.assert_allclose(mixed, default, rtol=BFLOAT16_RELATIVE_TOLERANCE)
    logits = model(inputs, training=False)
    assert logits.dtype == "float32" and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("decoder_name", list(DECODERS))
@pytest.mark.parametrize("sampler", ["greedy", "beam"])
def test_mixed_precision_generation_matches_float32_weights(trained, tiny_data_root, decoder_name, sampler):
    """The same weights in a float16 model generate valid captions, and the first generated
    word (where float16 rounding has had one step to matter) mostly agrees."""
    _, mixed, inputs = trained(decoder_name, "runtime.mixed_precision=true")
    config = tiny_config(tiny_data_root, *DECODERS[decoder_name])
    full_precision = build_model(config, mixed.decoder.vocab_size)
    full_precision.set_weights(mixed.get_weights())
    generation = build_sampler(GenerationConfig(sampler=sampler, beam_width=3))
    generated = {}
    for name, model in [("mixed", mixed), ("float32", full_precision)]:
        features = model.encoder(inputs["images"], training=False)
        generated[name] = np.asarray(generate_token_ids(model.decoder, features, config.decoder.max_length, generation))
    assert generated["mixed"].shape == (8, config.decoder.max_length)
    assert (generated["mixed"][:, 0] == 1).all()  # <start>
    assert ((generated["mixed"] >= 0) & (generated["mixed"] < mixed.decoder.vocab_size)).all()
    assert np.mean(generated["mixed"][:, 1] == generated["float32"][:, 1]) >= 0.75


def test_a_mixed_precision_run_resumes_and_captions(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "runtime.mixed_precision=true", "data.shapes_train_size=16")
    run_dir = tmp_path / "run"
    original_on_epoch_end = TrainingCheckpoint.on_epoch_end
    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", interrupt_after(1))
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, verbose=0)
    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", original_on_epoch_end)
    metrics = train(config, run_dir, verbose=0)  # restores weights and the loss-scaling optimizer
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["epochs_done"] == 2
    assert 0.0 <= metrics["bleu_4"] <= 1.0
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy was restored

    captioner = Captioner.from_run(run_dir, ["generation.sampler=beam"])
    assert captioner.model.decoder.compute_dtype == "float16"
    captions = captioner.caption_paths([example.image_path for example in load_split(config.data, "test")[:3]])
    assert len(captions) == 3
    known_words = set(captioner.vocabulary.tokens)
    assert all(set(caption.split()) <= known_words for caption in captions)
