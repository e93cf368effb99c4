"""Trains the project's AttentionDecoder on frozen MobileNet grids with several settings and
prints dev BLEU-4 (greedy and beam 3) and CIDEr-D for each: a quick way to compare settings
on a GPU machine without TensorFlow (Keras on JAX).

    KERAS_BACKEND=jax python sweep.py --data sweep_data --images IMAGE_DIR [IMAGE_DIR ...] \
        --weights mobilenet_v1_0.75_imagenet_notop.weights.h5 --variants lambda_1,lambda_0.1

Each variant is the experiment file (--experiment, the Flickr8k attention experiment by
default) with a few `section.field=value` overrides: a name from VARIANTS, or the overrides
themselves joined by "+" (e.g. `decoder.dropout=0.3+training.seed=1`). One sweep-only
override, `sweep.label_smoothing=0.1`, trains on label-smoothed cross-entropy (the project's
training has no such option). It mirrors `make train` for that config (its decoder, batch
size, learning rate and its decay on plateaus, epochs and patience; Adam with clipnorm 5,
masked cross-entropy plus the decoder's penalty, best epoch by the early-stopping loss), but the
training loop and the width-3 beam search (no length penalty) are this script's own, so
its numbers are a guide for choosing settings, not the project's results.
Needs: keras, jax, numpy, pillow, nltk, and pycocoevalcap's Python files on the path (not its jars).
"""
import argparse
import glob
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402
from PIL import Image  # noqa: E402

from captioning.coco_metrics import cider_d_score  # noqa: E402
from captioning.config import ConfigError, load_config  # noqa: E402
from captioning.decoders import build_decoder  # noqa: E402
from captioning.metrics import bleu_scores  # noqa: E402
from captioning.vocabulary import END_ID, PAD_ID, START_ID, UNKNOWN_ID, Vocabulary  # noqa: E402

VARIANTS = {  # overrides of the experiment file
    "lambda_1": [],  # the shipped config
    "lambda_0.02": ["decoder.attention_regularization=0.02"],
    "lambda_0.1": ["decoder.attention_regularization=0.1"],
    "lambda_3": ["decoder.attention_regularization=3.0"],
    "lambda_10": ["decoder.attention_regularization=10.0"],
    "lambda_1_lr_5e-4": ["training.learning_rate=5e-4"],
}


def region_grids(backbone, paths: list[str], batch_size: int = 250) -> np.ndarray:
    """(images, 49, 768) float16: MobileNet's last feature map of each 224 x 224 image, as regions."""
    grids = []
    for start in range(0, len(paths), batch_size):
        images = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
                           for path in paths[start:start + batch_size]])  # (batch, 224, 224, 3)
        feature_maps = np.asarray(backbone(images / 127.5 - 1.0, training=False))  # (batch, 7, 7, 768)
        grids.append(feature_maps.reshape(len(feature_maps), -1, feature_maps.shape[-1]).astype(np.float16))
    return np.concatenate(grids)


class SweepModel(keras.Model):
    """features (images, regions, channels) + captions (images, captions, length) -> logits."""

    def __init__(self, decoder, **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder

    def call(self, inputs, training=None):
        captions = inputs["captions"]
        captions_per_image, length = captions.shape[1], captions.shape[2]
        features = ops.repeat(inputs["features"], captions_per_image, axis=0)  # (images * captions, regions, channels)
        logits = self.decoder((features, ops.reshape(captions, (-1, length))), training=training)
        return ops.reshape(logits, (-1, captions_per_image, length, self.decoder.vocab_size))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def beam_search(decoder, features: np.ndarray, beams: int, max_steps: int) -> np.ndarray:
    """(images, steps) token ids of each image's best beam; beams=1 is greedy. A finished beam
    only extends with padding at no cost; pad, start and unknown are never generated."""
    images, vocab_size = len(features), decoder.vocab_size
    state = decoder.initial_state(ops.convert_to_tensor(np.repeat(features, beams, axis=0).astype("float32")))
    last = np.full(images * beams, START_ID, "int32")
    scores = np.tile([0.0] + [-1e9] * (beams - 1), images)  # (images * beams,): one live beam to start
    sequences, finished = np.zeros((images * beams, 0), "int32"), np.zeros(images * beams, bool)
    for _ in range(max_steps):
        logits, state = decoder.step(ops.convert_to_tensor(last), state)
        log_probs = log_softmax(np.asarray(logits, "float64"))  # (images * beams, vocab)
        log_probs[:, [PAD_ID, START_ID, UNKNOWN_ID]] = -1e9
        log_probs[finished] = -np.inf
        log_probs[finished, PAD_ID] = 0.0
        totals = (scores[:, None] + log_probs).reshape(images, beams * vocab_size)
        best = np.argsort(-totals, axis=1)[:, :beams]  # (images, beams)
        source = (best // vocab_size + np.arange(images)[:, None] * beams).ravel()  # (images * beams,)
        last = (best % vocab_size).ravel().astype("int32")
        scores = np.take_along_axis(totals, best, axis=1).ravel()
        sequences = np.concatenate([sequences[source], last[:, None]], axis=1)
        finished = finished[source] | (last == END_ID) | (last == PAD_ID)
        state = keras.tree.map_structure(lambda value: ops.take(value, ops.convert_to_tensor(source), axis=0), state)
        if finished.all():
            break
    winners = scores.reshape(images, beams).argmax(axis=1)
    return sequences.reshape(images, beams, -1)[np.arange(images), winners]


def dev_scores(decoder, features, references, vocabulary, beams, max_steps):
    captions = []
    for start in range(0, len(features), 500):
        captions += [vocabulary.decode(row) for row in beam_search(decoder, features[start:start + 500], beams, max_steps)]
    return bleu_scores(references, captions)["bleu_4"], cider_d_score(references, captions)


def smoothed_masked_loss(vocab_size: int, smoothing: float):
    """Label-smoothed cross-entropy over the non-padding tokens (a sweep-only variant)."""
    def loss(targets, logits):  # targets (batch, captions, length), logits (..., vocab)
        targets = ops.cast(targets, "int32")
        mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
        per_token = keras.losses.categorical_crossentropy(ops.one_hot(targets, vocab_size), logits, from_logits=True,
                                                          label_smoothing=smoothing)
        return ops.sum(per_token * mask) / ops.maximum(ops.sum(mask), 1.0)
    return loss


def variant_overrides(name: str) -> tuple[list[str], float]:
    """A variant's config overrides and its label smoothing (0: none)."""
    overrides = VARIANTS[name] if name in VARIANTS else name.split("+")
    bad = [override for override in overrides if "=" not in override]
    if bad:
        raise ConfigError(f"variant {name!r}: not a name in VARIANTS ({', '.join(VARIANTS)}) nor "
                          f"'+'-joined section.field=value overrides (bad part(s): {', '.join(bad)})")
    smoothing = [float(override.split("=", 1)[1]) for override in overrides if override.startswith("sweep.label_smoothing=")]
    return [override for override in overrides if not override.startswith("sweep.")], (smoothing or [0.0])[-1]


def train_variant(name, config, features, token_arrays, meta, smoothing=0.0):
    training = config.training
    keras.utils.set_random_seed(training.seed)
    decoder = build_decoder(config.decoder, len(meta["tokens"]))
    model = SweepModel(decoder)
    model({"features": ops.zeros((1, *features["train"].shape[1:])), "captions": ops.zeros((1, 1, 2), dtype="int32")})
    loss = (smoothed_masked_loss(len(meta["tokens"]), smoothing) if smoothing else
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID))
    model.compile(optimizer=keras.optimizers.Adam(training.learning_rate, clipnorm=5.0), loss=loss)
    learning_rate = training.learning_rate
    train_tokens, stop_tokens = token_arrays["train_tokens"].astype("int32"), token_arrays["stop_tokens"].astype("int32")
    train_inputs = {"features": features["train"], "captions": train_tokens[:, :, :-1]}
    stop_inputs = {"features": features["stop"], "captions": stop_tokens[:, :, :-1]}
    best_loss, best_weights, best_epoch, waited, started = np.inf, None, 0, 0, time.time()
    for epoch in range(1, training.epochs + 1):
        history = model.fit(train_inputs, train_tokens[:, :, 1:], batch_size=training.batch_size, epochs=1, verbose=0, shuffle=True)
        stop_loss = model.evaluate(stop_inputs, stop_tokens[:, :, 1:], batch_size=100, verbose=0)
        print(f"{name} epoch {epoch:2d} lr {learning_rate:.3g} loss {history.history['loss'][0]:.3f} "
              f"early-stopping loss {stop_loss:.4f} {time.time() - started:.0f} s", flush=True)
        if stop_loss < best_loss:
            best_loss, best_epoch, waited = stop_loss, epoch, 0
            best_weights = model.get_weights()
            best_slots = [ops.convert_to_numpy(variable) for variable in model.optimizer.variables]
        else:
            waited += 1
            if waited >= training.patience:
                break
            if training.learning_rate_decay < 1:  # as checkpoints.TrainingCheckpoint: back to the best, smaller steps
                model.set_weights(best_weights)
                for variable, value in zip(model.optimizer.variables, best_slots):
                    variable.assign(value)
                learning_rate *= training.learning_rate_decay
                model.optimizer.learning_rate = learning_rate
    model.set_weights(best_weights)
    max_steps = config.decoder.max_length - 1
    vocabulary = Vocabulary(meta["tokens"])
    greedy = dev_scores(decoder, features["dev"], meta["dev_references"], vocabulary, 1, max_steps)
    beam = dev_scores(decoder, features["dev"], meta["dev_references"], vocabulary, 3, max_steps)
    # The early-stopping images' own captions (rare words as <unk>): a score to choose settings by
    # that does not look at the dev split.
    stop_references = [[vocabulary.decode(caption[1:]) for caption in captions] for captions in stop_tokens]
    stop_beam = dev_scores(decoder, features["stop"], stop_references, vocabulary, 3, max_steps)
    print(f"RESULT {name}: best epoch {best_epoch} (loss {best_loss:.4f}); held-out train BLEU-4 beam-3 "
          f"{stop_beam[0]:.4f}; dev BLEU-4 greedy {greedy[0]:.4f} beam-3 {beam[0]:.4f}; "
          f"CIDEr-D greedy {greedy[1]:.3f} beam-3 {beam[1]:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder export.py wrote")
    parser.add_argument("--images", nargs="+", required=True, help="folders holding the (224 x 224) image files")
    parser.add_argument("--weights", required=True, help="MobileNet v1 alpha 0.75 no-top weights file")
    parser.add_argument("--experiment", default="experiments/flickr8k_mobilenet_attention.toml",
                        help="the experiment file each variant overrides")
    parser.add_argument("--variants", default="lambda_1",
                        help=f"comma-separated names from {', '.join(VARIANTS)}, or '+'-joined overrides")
    parser.add_argument("--grid-cache", help="a .npz of the region grids: read if it exists, else written")
    parser.add_argument("--grids-only", action="store_true", help="write --grid-cache and stop")
    arguments = parser.parse_args()
    meta = json.load(open(os.path.join(arguments.data, "meta.json")))
    token_arrays = np.load(os.path.join(arguments.data, "tokens.npz"), allow_pickle=False)
    names = arguments.variants.split(",")
    variants = {name: variant_overrides(name) for name in names}  # refuse a bad name before the slow part
    if arguments.grid_cache and os.path.exists(arguments.grid_cache):
        with np.load(arguments.grid_cache, allow_pickle=False) as cached:
            features = {label: cached[label] for label in cached.files}
    else:
        paths = {os.path.basename(path): path for folder in arguments.images for path in glob.glob(os.path.join(folder, "*"))}
        backbone = keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.75, include_top=False,
                                                weights=arguments.weights)
        features = {label: region_grids(backbone, [paths[image] for image in images])
                    for label, images in meta["names"].items()}
        if arguments.grid_cache:
            np.savez(arguments.grid_cache, **features)
    if arguments.grids_only:
        return
    for name, (overrides, smoothing) in variants.items():
        train_variant(name, load_config(arguments.experiment, overrides), features, token_arrays, meta, smoothing)


if __name__ == "__main__":
    main()
