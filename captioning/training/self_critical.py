"""Self-critical sequence training (Rennie et al. 2017): the decoder learns from its own captions.

Cross-entropy training (phase 1) teaches the decoder the next word of a reference caption;
the captions it is judged on are its own, decoded word by word. With
``self_critical.epochs`` > 0, a last phase fine-tunes the decoder with REINFORCE
on captions it samples itself, each rewarded by its CIDEr-D against the image's references
(cider.py, document frequencies from the training references):

    for each batch of images:
        sample K captions per image           (keras-hub RandomSampler, the decoder's step)
        reward r_k = CIDEr-D(caption_k, references)
        advantage a_k = r_k - mean of the image's other K - 1 rewards
        loss = -sum_k a_k * log p(caption_k) / number of generated tokens

The baseline is the mean of the other samples (Luo 2020, "a better variant of
self-critical sequence training") rather than the original paper's greedy caption: one
sampling pass per batch instead of a sampling and a greedy pass, and a caption only gains
probability if it beats its siblings. K = ``self_critical.samples``.

With ``self_critical.reward_end`` (default) a sample is scored with its end token
and every reference ends in one, as in the reference implementations: a caption that stops
mid-phrase misses the n-grams that end the references.

With ``self_critical.mirror`` each epoch samples about half the images mirrored left-right:
their features from the feature cache's mirrored entry, their references with "left" and
"right" swapped (epoch_batches), as images.augment does for phase 1.

The phase runs on the frozen encoder's cached features only (no fine-tuning phase before
it), for a fixed number of epochs at ``self_critical.learning_rate``. The
cross-entropy loss that early stopping watches is not what this phase lowers, so the phase
watches the CIDEr-D of greedy captions of the early-stopping images (validation.py's
``val_cider``) instead: phase 1's decoder is epoch 0, and the run's model is the epoch with
the best score (the last epoch when validation_bleu_images is 0). Each epoch's mean reward
and validation scores go to ``self_critical_history.csv``. After every epoch the decoder and
Adam's slots are saved in ``checkpoint/self_critical/`` (atomically), and the best epoch's
decoder as ``best.weights.h5``, so an interrupted phase resumes at its last finished epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from captioning.data.pipeline import mirrored_images, rows_with_mirrors, trimmed_to_longest
from captioning.data.vocabulary import END_ID, PAD_ID, Vocabulary, spaced_words
from captioning.evaluation.cider import CiderD
from captioning.files import atomic_path, write_csv_rows, write_json
from captioning.models.caption_model import build_feature_model, compile_model
from captioning.models.search import forbid_special_tokens, generate_token_ids
from captioning.runs import CHECKPOINT_DIR, RunError
from captioning.training.augment import mirrored_words
from captioning.training.validation import CIDER_LOG_NAME

SELF_CRITICAL_DIR = "self_critical"  # inside checkpoint/
STATE_FILE = "state.json"
BEST_WEIGHTS_FILE = "best.weights.h5"  # in checkpoint/self_critical/: the epoch with the best validation CIDEr-D
HISTORY_FILE = "self_critical_history.csv"  # in the run directory


END_WORD = "<end>"  # what a reference and an ended sample end with when rewarded with their end token


def reference_text(caption: str, reward_end: bool) -> str:
    """A reference caption as the reward reads it: spaced words, then END_WORD with reward_end."""
    words = spaced_words(caption)
    return f"{words} {END_WORD}" if reward_end else words


def epoch_batches(features: np.ndarray, references: list[list[str]], seed: int, epoch: int, batch_size: int,
                  mirror: tuple[np.ndarray, list[list[str]]] | None = None):
    """One self-critical epoch's batches: yields (image indices, features (batch, regions,
    channels) float32, each image's references), the images in the epoch's random order.

    mirror: (mirrored features, mirrored references) of the same images; each image is then
    mirrored with probability 1/2, drawn from the epoch's seed (a resumed epoch mirrors the
    same images), and takes both from there."""
    order = np.random.default_rng(seed + epoch).permutation(len(features))
    mirrored = mirrored_images(len(features), seed + epoch) if mirror is not None else np.zeros(len(features), bool)
    mirrored_features, mirrored_references = mirror or (features, references)
    for start in range(0, len(order), batch_size):
        indices = np.sort(order[start:start + batch_size])  # sorted: memory-mapped rows read in order
        flipped = mirrored[indices]  # (batch,) bool
        batch = rows_with_mirrors(features, mirrored_features, indices, flipped)  # (batch, regions, channels)
        yield indices, batch, [(mirrored_references if flip else references)[index]
                               for index, flip in zip(indices, flipped)]


def padded_after_end(token_ids: np.ndarray) -> np.ndarray:
    """(rows, length) sampled ids -> the same with every id after the first <end> set to <pad>.

    The sampler keeps writing until every row has ended; those tokens are not part of the
    caption and must not be rewarded or penalized."""
    ended = np.cumsum(token_ids == END_ID, axis=1) > 0  # (rows, length): at or after the first <end>
    after_end = np.concatenate([np.zeros_like(ended[:, :1]), ended[:, :-1]], axis=1)
    return np.where(after_end, PAD_ID, token_ids).astype(np.int32)


def advantages(rewards: np.ndarray, samples: int) -> np.ndarray:
    """(images * samples,) rewards, an image's samples adjacent -> each minus the mean of its siblings."""
    if samples < 2 or len(rewards) % samples:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {samples} samples (at least 2)")
    grouped = rewards.reshape(-1, samples)  # (images, samples)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (samples - 1)
    return (grouped - baseline).reshape(-1).astype(np.float32)


def policy_gradient_loss(logits, targets, advantage):
    """-sum(advantage * log p(token)) over the generated tokens, divided by their number.

    logits: (rows, length, vocab); targets: (rows, length) int, <pad> after the caption;
    advantage: (rows,)."""
    log_probs = -keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (rows, length)
    mask = ops.cast(ops.not_equal(targets, PAD_ID), log_probs.dtype)  # (rows, length)
    weighted = ops.cast(advantage, log_probs.dtype)[:, None] * log_probs * mask
    return -ops.sum(weighted) / ops.maximum(ops.sum(mask), 1.0)


def sampling_logits(logits):
    """(..., vocab) logits -> the logits the sampler draws from (search.forbid_special_tokens)."""
    flat = forbid_special_tokens(ops.reshape(logits, (-1, ops.shape(logits)[-1])))
    return ops.reshape(flat, ops.shape(logits))


class SelfCriticalTrainer:
    """One REINFORCE step per batch of images for the decoder of ``model`` (a compiled
    feature model: encoder None, its optimizer at the phase's learning rate)."""

    def __init__(self, model, vocabulary: Vocabulary, scorer: CiderD, samples: int, max_length: int, seed: int = 0,
                 reward_end: bool = True):
        self.model = model
        self.vocabulary = vocabulary
        self.scorer = scorer
        self.reward_end = reward_end  # score "... <end>" against references ending in <end> (reference_text)
        self.samples = samples
        self.max_length = max_length
        self.sampler = keras_hub.samplers.RandomSampler(seed=seed)
        self._sample = tf.function(self._sample_eager, reduce_retracing=True)
        self._step = tf.function(self._step_eager, reduce_retracing=True)

    def _sample_eager(self, features):
        repeated = ops.repeat(features, self.samples, axis=0)  # (batch * samples, regions, channels)
        return generate_token_ids(self.model.decoder, repeated, self.max_length, self.sampler)  # (batch * samples, max_length)

    def _step_eager(self, features, token_ids, advantage):
        variables = self.model.decoder.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.loss(features, token_ids, advantage)
        self.model.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def loss(self, features, token_ids, advantage):
        """policy_gradient_loss of the policy_logits, with the output layer on the generated
        tokens alone (the rest is padding after <end>): the same number for less work.

        features (batch, regions, channels); token_ids (batch * samples, length), <pad> after
        <end>; advantage (batch * samples,)."""
        decoder = self.model.decoder
        outputs, _ = decoder((features, token_ids[:, :-1]), training=False, captions_per_image=self.samples,
                             output_layer=False)  # (rows, length - 1, width)
        targets = token_ids[:, 1:]  # (rows, length - 1)
        real = ops.not_equal(targets, PAD_ID)
        logits = sampling_logits(decoder.output_logits(tf.boolean_mask(outputs, real)))  # (tokens, vocab)
        token_advantage = tf.boolean_mask(ops.broadcast_to(advantage[:, None], ops.shape(targets)), real)  # (tokens,)
        # each generated token as a one-token row: the same sum over the same count
        return policy_gradient_loss(logits[:, None, :], tf.boolean_mask(targets, real)[:, None], token_advantage)

    def policy_logits(self, features, token_ids):
        """features (batch, regions, channels), token_ids (batch * samples, max_length) ->
        (batch * samples, max_length - 1, vocab): the logits of the policy that sampled the
        captions, with dropout off (training=False) and the special tokens the sampler never
        emits masked out. With dropout on, the gradient would belong to another policy."""
        logits = self.model.decoder((features, token_ids[:, :-1]), training=False, captions_per_image=self.samples)
        return sampling_logits(logits)

    def sample(self, features) -> np.ndarray:
        """features (batch, regions, channels) -> (batch * samples, max_length) ids, <pad> after <end>."""
        return padded_after_end(np.asarray(self._sample(tf.convert_to_tensor(features, tf.float32))))

    def sample_text(self, token_ids: np.ndarray) -> str:
        """A sampled row (<start> first, <pad> after <end>) as the scorer reads it: its words,
        then, with reward_end, END_WORD when the sampler ended it."""
        text = self.vocabulary.decode(token_ids[1:])
        return f"{text} {END_WORD}".strip() if self.reward_end and END_ID in token_ids else text

    def train_batch(self, features, references: list[list[str]]) -> float:
        """One step on a batch of images and their (tokenized) references; returns the samples' mean reward."""
        token_ids = self.sample(features)
        token_ids = trimmed_to_longest(token_ids)
        hypotheses = [self.sample_text(row) for row in token_ids]
        rewards = self.scorer.scores(hypotheses, [image for image in references for _ in range(self.samples)])
        self._step(tf.convert_to_tensor(features, tf.float32), tf.convert_to_tensor(token_ids),
                   tf.convert_to_tensor(advantages(rewards, self.samples)))
        return float(rewards.mean())


class SelfCriticalCheckpoint:
    """checkpoint/self_critical/: the last finished epoch's weights (optimizer slots
    included) and state.json naming them, written last."""

    def __init__(self, folder: Path, history_path: Path):
        self.folder = Path(folder)
        self.history_path = Path(history_path)
        self.state = {"epochs_done": 0, "weights_file": None, "history": [], "training_seconds": 0.0,
                      "best_epoch": None, "best_val_cider": None}
        state_path = self.folder / STATE_FILE
        if state_path.is_file():
            self.state = {**self.state, **json.loads(state_path.read_text())}  # older states: no best epoch

    def save_best(self, model, epoch: int, val_cider: float) -> bool:
        """Keeps ``model`` as the best epoch if ``val_cider`` beats the best so far (state
        written by the next save, or now for epoch 0); returns whether it did."""
        if self.state["best_val_cider"] is not None and val_cider <= self.state["best_val_cider"]:
            return False
        with atomic_path(self.folder / BEST_WEIGHTS_FILE) as temporary:
            model.save_weights(temporary)
        self.state.update(best_epoch=epoch, best_val_cider=val_cider)
        if epoch == 0:
            write_json(self.folder / STATE_FILE, self.state)
        return True

    def restore_best(self, model) -> None:
        """Loads the best epoch's weights into ``model`` when an epoch was chosen."""
        if self.state["best_epoch"] is None:
            return
        path = self.folder / BEST_WEIGHTS_FILE
        if not path.is_file():
            raise RunError(f"{path}: the best self-critical epoch named by {self.folder / STATE_FILE} is missing; "
                           f"delete {self.folder} to restart the self-critical phase")
        model.load_weights(path)

    def restore(self, model) -> int:
        """Loads the last finished epoch into ``model`` if there is one; returns the epochs done."""
        if self.state["weights_file"] is None:
            return 0
        path = self.folder / self.state["weights_file"]
        if not path.is_file():
            raise RunError(f"{path}: named by {self.folder / STATE_FILE} but missing; delete {self.folder} to "
                           "restart the self-critical phase")
        model.load_weights(path)
        return self.state["epochs_done"]

    def save(self, model, logs: dict, seconds: float) -> None:
        previous = self.state["weights_file"]
        epoch = self.state["epochs_done"] + 1
        weights_file = f"epoch-{epoch:03d}.weights.h5"
        with atomic_path(self.folder / weights_file) as temporary:
            model.save_weights(temporary)
        self.state["history"].append({"epoch": epoch, **logs})
        self.state.update(epochs_done=epoch, weights_file=weights_file,
                          training_seconds=self.state["training_seconds"] + seconds)
        write_json(self.folder / STATE_FILE, self.state)
        if previous and previous != weights_file:
            (self.folder / previous).unlink(missing_ok=True)
        write_csv_rows(self.history_path, self.state["history"])


def train_self_critical(data, phase_model, feature_shape: tuple, run_dir: Path, features_for, validation_callback,
                        verbose="auto"):
    """The self-critical phase after phase 1; returns (a feature model holding the best (or last) epoch's
    decoder, the phase's checkpoint).

    data: train.TrainingData; phase_model: phase 1's best model; feature_shape: (regions,
    channels) of the cached features; features_for(examples, label, mirrored=False): those
    features (images, regions, channels), of the mirrored images with mirrored (for
    self_critical.mirror); validation_callback(): the greedy validation BLEU-4 callback, or
    None.
    """
    config = data.config
    training = config.training
    self_critical = config.self_critical
    runtime = config.runtime
    checkpoint = SelfCriticalCheckpoint(Path(run_dir) / CHECKPOINT_DIR / SELF_CRITICAL_DIR, Path(run_dir) / HISTORY_FILE)
    model = build_feature_model(config, data.vocabulary.size, feature_shape)
    compile_model(model, runtime, learning_rate=self_critical.learning_rate)
    model.optimizer.build(model.trainable_variables)
    epochs_done = checkpoint.restore(model)
    if epochs_done == 0:
        model.decoder.set_weights(phase_model.decoder.get_weights())
    if epochs_done >= self_critical.epochs:
        checkpoint.restore_best(model)
        return model, checkpoint
    print(f"self-critical phase: {self_critical.epochs - epochs_done} epoch(s) of "
          f"{self_critical.samples} sampled captions per image, CIDEr-D reward, learning rate "
          f"{self_critical.learning_rate}" + (f"; resuming after epoch {epochs_done}" if epochs_done else ""))
    reward_end = self_critical.reward_end
    references = [[reference_text(caption, reward_end) for caption in example.captions]
                  for example in data.train_examples]
    trainer = SelfCriticalTrainer(model, data.vocabulary, CiderD(references), self_critical.samples,
                                  config.decoder.max_length, seed=training.seed + epochs_done, reward_end=reward_end)
    train_features = features_for(data.train_examples, "train")  # (images, regions, channels)
    mirror = None
    if self_critical.mirror:
        mirror = (features_for(data.train_examples, "train, mirrored", mirrored=True),
                  [[mirrored_words(reference) for reference in image] for image in references])
    callback = validation_callback()
    if callback is not None:
        callback.set_model(model)
        if checkpoint.state["best_val_cider"] is None:  # phase 1's decoder is epoch 0
            start = {}
            callback.on_epoch_end(-1, start)
            checkpoint.save_best(model, 0, start[CIDER_LOG_NAME])
            print(f"self-critical phase starts from validation CIDEr-D {start[CIDER_LOG_NAME]:.4f}")
    batch_size = training.batch_size
    for epoch in range(epochs_done, self_critical.epochs):
        started = time.time()
        progress = keras.utils.Progbar(len(train_features), unit_name="image",
                                       verbose=1 if verbose == "auto" else verbose)
        rewards = []
        for indices, features, image_references in epoch_batches(train_features, references, training.seed, epoch,
                                                                  batch_size, mirror):
            reward = trainer.train_batch(features, image_references)
            rewards.append(reward * len(indices))
            progress.add(len(indices), values=[("reward", reward)])
        logs = {"reward": float(sum(rewards) / len(train_features))}
        if callback is not None:
            callback.on_epoch_end(epoch, logs)
        print(f"self-critical epoch {epoch + 1}: mean sampled CIDEr-D {logs['reward']:.4f}"
              + (f", validation BLEU-4 {logs['val_bleu_4']:.4f}, CIDEr-D {logs[CIDER_LOG_NAME]:.4f}"
                 if CIDER_LOG_NAME in logs else ""))
        if CIDER_LOG_NAME in logs:
            checkpoint.save_best(model, epoch + 1, logs[CIDER_LOG_NAME])
        checkpoint.save(model, logs, time.time() - started)
    if checkpoint.state["best_epoch"] is not None:
        print(f"self-critical phase keeps epoch {checkpoint.state['best_epoch']} "
              f"(validation CIDEr-D {checkpoint.state['best_val_cider']:.4f}; 0 is phase 1's decoder)")
    checkpoint.restore_best(model)
    return model, checkpoint
