"""Self-critical training: CIDEr-D per caption, the REINFORCE pieces with known answers, a
learning check (the sampled reward rises), and the phase inside a tiny run (resumable)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import tiny_config
from pycocoevalcap.cider.cider import Cider

from captioning.captioner import Captioner
from captioning.config import ConfigError
from captioning.data.vocabulary import END_ID, PAD_ID, START_ID, Vocabulary
from captioning.evaluation.cider import CiderD, ngram_counts
from captioning.models.caption_model import build_feature_model, compile_model
from captioning.models.search import forbid_special_tokens
from captioning.training.self_critical import (
    HISTORY_FILE,
    SelfCriticalTrainer,
    advantages,
    epoch_batches,
    padded_after_end,
    policy_gradient_loss,
    reference_text,
    sampling_logits,
)
from captioning.training.augment import mirrored_words
from captioning.training.validation import ValidationBleu
from captioning.validate import check_self_critical

REFERENCES = [
    ["a dog runs on the grass", "a brown dog is running", "the dog runs across a field"],
    ["two children play in the water", "kids splash in a pool", "two kids are swimming"],
    ["a man rides a bike down the street", "a cyclist on a road", "a man on a bicycle"],
    ["a dog jumps into the water", "a black dog swims", "a dog is in the lake"],
]
HYPOTHESES = ["a dog runs on a field", "two kids in the water", "a man rides a bicycle on the road", "a dog"]


def test_ngram_counts_are_every_one_to_four_gram():
    counts = ngram_counts("a dog a dog")
    assert counts[("a",)] == 2 and counts[("a", "dog")] == 2 and counts[("dog", "a")] == 1
    assert counts[("a", "dog", "a", "dog")] == 1 and sum(counts.values()) == 4 + 3 + 2 + 1


def test_cider_d_equals_pycocoevalcap_when_the_corpus_is_the_scored_set():
    """The same arithmetic as coco-caption's CIDEr-D: with its document frequencies taken from
    the scored images' references, every per-image score matches."""
    _, expected = Cider().compute_score({i: refs for i, refs in enumerate(REFERENCES)},
                                        {i: [hypothesis] for i, hypothesis in enumerate(HYPOTHESES)})
    scores = CiderD(REFERENCES).scores(HYPOTHESES, REFERENCES)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12)
    assert scores[0] > scores[3] > 0  # a closer caption scores higher


def test_cider_d_document_frequencies_come_from_the_corpus_not_the_batch():
    scorer = CiderD(REFERENCES)
    alone = scorer.scores(HYPOTHESES[:1], REFERENCES[:1])
    together = scorer.scores(HYPOTHESES, REFERENCES)
    assert alone[0] == pytest.approx(together[0])
    with pytest.raises(ValueError, match="2 captions for 1 reference sets"):
        scorer.scores(HYPOTHESES[:2], REFERENCES[:1])


def test_padded_after_end_keeps_the_end_token_and_pads_what_follows():
    token_ids = np.array([[START_ID, 7, END_ID, 9, 9], [START_ID, 5, 6, 8, 4], [START_ID, END_ID, 5, END_ID, 6]])
    np.testing.assert_array_equal(padded_after_end(token_ids), [[START_ID, 7, END_ID, PAD_ID, PAD_ID],
                                                                [START_ID, 5, 6, 8, 4],
                                                                [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID]])


def test_samples_and_references_are_rewarded_with_their_end_token(tmp_path):
    """reward_end: a reference ends in <end>, an ended sample too; a sample the sampler cut
    at max_length does not. A caption stopped mid-phrase then loses the n-grams that end
    the reference, so its reward falls further behind the finished caption's."""
    assert reference_text("A dog runs on the grass.", True) == "a dog runs on the grass <end>"
    assert reference_text("A dog runs on the grass.", False) == "a dog runs on the grass"
    vocabulary = Vocabulary.build(["a dog runs on the grass"])
    config = tiny_config(tmp_path, "decoder.max_length=6")
    model = build_feature_model(config, vocabulary.size, (4, 8))
    trainer = SelfCriticalTrainer(model, vocabulary, CiderD([["a dog"]]), samples=2, max_length=6)
    ended = np.array([START_ID, *vocabulary.encode("a dog"), END_ID, PAD_ID])
    cut = np.array([START_ID, *vocabulary.encode("a dog runs on")])
    assert (trainer.sample_text(ended), trainer.sample_text(cut)) == ("a dog <end>", "a dog runs on")
    trainer.reward_end = False
    assert trainer.sample_text(ended) == "a dog"

    def margin(reward_end):
        references = [reference_text(caption, reward_end) for caption in REFERENCES[0]]
        scorer = CiderD([[reference_text(caption, reward_end) for caption in image] for image in REFERENCES])
        end = " <end>" if reward_end else ""
        finished, stopped = scorer.scores([f"a dog runs on the grass{end}", f"a dog runs on the{end}"], [references] * 2)
        return finished - stopped

    assert margin(True) > margin(False)


def test_each_advantage_is_the_reward_minus_the_mean_of_the_siblings():
    rewards = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(advantages(rewards, 3), [1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0])
    with pytest.raises(ValueError, match="groups of 4"):
        advantages(rewards, 4)


def test_policy_gradient_loss_weights_log_probabilities_by_advantage_over_real_tokens():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]],
                              [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]], dtype=np.float32))  # (2 rows, 2 steps, 3 tokens)
    targets = np.array([[1, 1], [2, PAD_ID]], dtype=np.int32)  # row 1's second step is padding
    advantage = np.array([2.0, -1.0], dtype=np.float32)
    expected = -(2.0 * (np.log(0.25) + np.log(0.8)) - 1.0 * np.log(0.6)) / 3
    assert float(policy_gradient_loss(logits, targets, advantage)) == pytest.approx(expected, rel=1e-5)


def test_self_critical_settings_that_cannot_run_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="frozen encoder"):
        check_self_critical(tiny_config(tmp_path, "self_critical.epochs=1"))  # conv_stack trains
    frozen = ["encoder.name=mobilenet", "encoder.alpha=0.25", "encoder.weights=none", "self_critical.epochs=1"]
    with pytest.raises(ConfigError, match="at least 2"):
        check_self_critical(tiny_config(tmp_path, *frozen, "self_critical.samples=1"))
    with pytest.raises(ConfigError, match="must be positive"):
        check_self_critical(tiny_config(tmp_path, *frozen, "self_critical.learning_rate=0"))
    check_self_critical(tiny_config(tmp_path, *frozen))


@pytest.mark.slow
@pytest.mark.parametrize("decoder", [["decoder.name=attention"],
                                     ["decoder.name=transformer", "decoder.transformer_heads=2"]],
                         ids=["attention", "transformer"])
def test_self_critical_steps_raise_the_reward_of_sampled_captions(tmp_path, decoder):
    """Learning: every image's references are "red circle"; a random decoder samples random
    words. After REINFORCE steps its samples score clearly higher CIDEr-D than before."""
    keras.utils.set_random_seed(0)
    vocabulary = Vocabulary.build(["red circle", "blue square", "green triangle small big"])
    references = [["red circle"] * 3, ["blue square"] * 3]  # the corpus: two kinds of image
    config = tiny_config(tmp_path, *decoder, "decoder.max_length=6", "decoder.dropout=0")
    model = build_feature_model(config, vocabulary.size, (4, 8))
    compile_model(model, config.runtime, learning_rate=0.01)
    model.optimizer.build(model.trainable_variables)
    trainer = SelfCriticalTrainer(model, vocabulary, CiderD(references), samples=8, max_length=6, seed=3)
    features = np.random.default_rng(0).normal(size=(8, 4, 8)).astype(np.float32)
    targets = [references[0]] * 8

    def mean_reward():
        captions = [vocabulary.decode(row[1:]) for row in trainer.sample(features)]
        return float(trainer.scorer.scores(captions, [refs for refs in targets for _ in range(8)]).mean())

    before = mean_reward()
    for _ in range(60):
        trainer.train_batch(features, targets)
    after = mean_reward()
    assert after > before + 2.0, (before, after)


@pytest.mark.slow
def test_the_gradient_uses_the_policy_that_sampled_the_captions(tmp_path):
    """On-policy: with dropout 0.5 in the decoder, the log-probabilities the loss weights
    are the sampler's own (a step at a time, dropout off, special tokens masked). With
    training=True or without the mask they differ (the fix of issue 21)."""
    keras.utils.set_random_seed(0)
    vocabulary = Vocabulary.build(["red circle", "blue square", "green triangle small big"])
    config = tiny_config(tmp_path, "decoder.name=attention", "decoder.max_length=6", "decoder.dropout=0.5")
    model = build_feature_model(config, vocabulary.size, (4, 8))
    trainer = SelfCriticalTrainer(model, vocabulary, CiderD([["red circle"]]), samples=3, max_length=6, seed=1)
    features = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    token_ids = trainer.sample(features)  # (6, 6)
    policy = keras.ops.log_softmax(trainer.policy_logits(features, token_ids), axis=-1)  # (6, 5, vocab)
    cache = model.decoder.initial_cache(np.repeat(features, 3, axis=0))
    for position in range(5):
        logits, cache = model.decoder.step_cache(token_ids[:, position], cache)
        sampler = keras.ops.log_softmax(forbid_special_tokens(logits), axis=-1)
        np.testing.assert_allclose(policy[:, position], sampler, rtol=1e-4, atol=1e-4)
    dropout_on = model.decoder((np.repeat(features, 3, axis=0), token_ids[:, :-1]), training=True)
    assert np.abs(np.asarray(sampling_logits(dropout_on)) - np.asarray(trainer.policy_logits(features, token_ids))).max() > 1e-3


@pytest.mark.slow
def test_the_real_token_loss_equals_the_policy_gradient_loss_over_every_position(tmp_path):
    """Known answer: the loss the step minimizes (output layer on generated tokens only)
    is policy_gradient_loss over the full policy_logits."""
    keras.utils.set_random_seed(0)
    vocabulary = Vocabulary.build(["red circle", "blue square", "green triangle small big"])
    config = tiny_config(tmp_path, "decoder.name=attention", "decoder.max_length=6")
    model = build_feature_model(config, vocabulary.size, (4, 8))
    trainer = SelfCriticalTrainer(model, vocabulary, CiderD([["red circle"]]), samples=3, max_length=6, seed=2)
    features = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    token_ids = trainer.sample(features)  # (6, 6), <pad> after <end>
    advantage = np.linspace(-1.0, 1.5, 6).astype(np.float32)
    expected = policy_gradient_loss(trainer.policy_logits(features, token_ids), token_ids[:, 1:], advantage)
    assert float(trainer.loss(features, token_ids, advantage)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_a_run_with_a_self_critical_phase_records_it_and_resumes(tmp_path, monkeypatch):
    """A tiny run: phase 1, then two self-critical epochs, interrupted after the first; the
    second train() call resumes with epoch 2 only and the run records both."""
    import captioning.training.self_critical as self_critical_module
    from captioning.training.loop import train
    from captioning.training.training_data import frozen_feature_shape

    config = tiny_config(tmp_path, "encoder.name=mobilenet", "encoder.alpha=0.25", "encoder.weights=none",
                         "decoder.name=attention", "training.epochs=1", "self_critical.epochs=2",
                         "self_critical.samples=2", f"images.feature_cache_dir={tmp_path / 'features'}",
                         "training.validation_bleu_images=8")
    run_dir = tmp_path / "runs" / "scst"
    real_save = self_critical_module.SelfCriticalCheckpoint.save

    def save_then_stop(checkpoint, *args):
        real_save(checkpoint, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(self_critical_module.SelfCriticalCheckpoint, "save", save_then_stop)
    # validation CIDEr-D: phase 1's one epoch, its decoder at the start of the phase, then epochs 1 and 2
    scores = iter([0.5, 1.0, 2.0, 1.5])
    monkeypatch.setattr(ValidationBleu, "cider", lambda callback, captions: next(scores))
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, verbose=0)
    state = json.loads((run_dir / "checkpoint" / "self_critical" / "state.json").read_text())
    assert state["epochs_done"] == 1 and (run_dir / "checkpoint" / "self_critical" / state["weights_file"]).is_file()
    first_epoch_weights = (run_dir / "checkpoint" / "self_critical" / state["weights_file"]).read_bytes()

    monkeypatch.setattr(self_critical_module.SelfCriticalCheckpoint, "save", real_save)
    metrics = train(config, run_dir, verbose=0)
    history = (run_dir / HISTORY_FILE).read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "reward", "val_bleu_4"] and len(history) == 3
    assert metrics["self_critical"]["epochs"] == 2 and len(metrics["self_critical"]["history"]) == 2
    assert (run_dir / "model.weights.h5").is_file()
    state = json.loads((run_dir / "checkpoint" / "self_critical" / "state.json").read_text())
    assert state["weights_file"] == "epoch-002.weights.h5"
    assert first_epoch_weights != (run_dir / "checkpoint" / "self_critical" / state["weights_file"]).read_bytes()
    # the run keeps epoch 1, the best validation CIDEr-D, not the last
    assert (state["best_epoch"], state["best_val_cider"], metrics["self_critical"]["best_epoch"]) == (1, 2.0, 1)

    def checkpoint_decoder(weights_file):  # as train_self_critical restores one
        model = build_feature_model(config, Vocabulary.load(run_dir / "vocabulary.json").size,
                                    frozen_feature_shape(config))
        compile_model(model, config.runtime, config.training.learning_rate)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(run_dir / "checkpoint" / "self_critical" / weights_file)
        return model.decoder.get_weights()

    kept = Captioner.from_run(run_dir).model.decoder.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, checkpoint_decoder("best.weights.h5")))
    assert not all(np.array_equal(a, b) for a, b in zip(kept, checkpoint_decoder(state["weights_file"])))


def test_a_bfloat16_run_trains_its_self_critical_phase(tmp_path):
    """experiments/flickr8k_attention_scst_bfloat16.toml's [runtime] on a tiny run: phase 1
    and a self-critical epoch in bfloat16 (the sampled captions, their CIDEr-D and the
    policy gradient) finish with finite scores, and the run records its precision. The
    attention here has no image_norm: the cached float32 features must meet the gate and the
    cell in bfloat16 (AttentionDecoder.image_memory casts them; before, generation failed)."""
    from captioning.training.loop import train

    config = tiny_config(tmp_path, "encoder.name=mobilenet", "encoder.alpha=0.25", "encoder.weights=none",
                         "decoder.name=attention", "decoder.attention_placement=output", "training.epochs=1",
                         "self_critical.epochs=1", "self_critical.samples=2",
                         f"images.feature_cache_dir={tmp_path / 'features'}", "training.validation_bleu_images=8",
                         "runtime.mixed_precision=true", "runtime.mixed_precision_dtype=bfloat16")
    metrics = train(config, tmp_path / "run", verbose=0)
    history = (tmp_path / "run" / HISTORY_FILE).read_text().splitlines()
    assert metrics["self_critical"]["epochs"] == 1 and len(history) == 2  # the header and epoch 1
    reward, bleu, cider = (float(value) for value in history[1].split(",")[1:4])
    assert all(np.isfinite([reward, bleu, cider])) and reward >= 0
    assert 'mixed_precision_dtype = "bfloat16"' in (tmp_path / "run" / "config.toml").read_text()


def test_epoch_batches_mirror_about_half_the_images_with_their_references_and_repeat_per_epoch():
    images = 40
    features = (np.arange(images, dtype=np.float16) + 1)[:, None, None] * np.ones((images, 2, 3), np.float16)
    references = [[f"a dog {index} left of a cat"] for index in range(images)]
    mirrored_references = [[mirrored_words(reference) for reference in image] for image in references]
    assert mirrored_references[3] == ["a dog 3 right of a cat"]

    def epoch(number, mirror):
        return [(indices, batch, refs) for indices, batch, refs in
                epoch_batches(features, references, seed=5, epoch=number, batch_size=8, mirror=mirror)]

    plain = epoch(0, None)
    order = np.random.default_rng(5).permutation(images)  # the order before mirroring existed
    for (indices, batch, refs), start in zip(plain, range(0, images, 8)):
        np.testing.assert_array_equal(indices, np.sort(order[start:start + 8]))
        np.testing.assert_array_equal(batch, features[indices].astype(np.float32))
        assert refs == [references[index] for index in indices]
    mirror = (-features, mirrored_references)
    flipped = {}
    for indices, batch, refs in epoch(0, mirror):
        for index, row, image_references in zip(indices, batch, refs):
            flipped[int(index)] = bool(row[0, 0] < 0)
            np.testing.assert_array_equal(np.abs(row), features[index])
            assert image_references == (mirrored_references if row[0, 0] < 0 else references)[index]
    assert sorted(flipped) == list(range(images)) and 8 < sum(flipped.values()) < 32
    again = {int(index): bool(row[0, 0] < 0) for indices, batch, _ in epoch(0, mirror) for index, row in zip(indices, batch)}
    later = {int(index): bool(row[0, 0] < 0) for indices, batch, _ in epoch(1, mirror) for index, row in zip(indices, batch)}
    assert again == flipped and later != flipped  # a resumed epoch mirrors the same images; the next, others


@pytest.mark.slow
def test_a_self_critical_phase_on_mirrored_images_reads_their_cached_features(tmp_path):
    from captioning.training.loop import train

    features = tmp_path / "features"
    config = tiny_config(tmp_path, "encoder.name=mobilenet", "encoder.alpha=0.25", "encoder.weights=none",
                         "decoder.name=attention", "training.epochs=1", "self_critical.epochs=1",
                         "self_critical.samples=2", "self_critical.mirror=true", f"images.feature_cache_dir={features}",
                         "training.validation_bleu_images=8")
    metrics = train(config, tmp_path / "run", verbose=0)
    manifests = [json.loads(path.read_text()) for path in features.glob("*/manifest.json")]
    assert sum(bool(manifest.get("mirrored")) for manifest in manifests) == 1  # phase 1 did not mirror; this did
    assert metrics["self_critical"]["epochs"] == 1
