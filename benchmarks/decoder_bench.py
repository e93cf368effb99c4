"""make bench, decoder training: epoch seconds of the shipped Flickr8k decoders, no data set needed.

The data are synthetic but shaped like Flickr8k: 6,000 images x 5 captions whose word
counts follow Flickr8k's own histogram (CAPTION_WORD_COUNTS: mean 10.9 words, a tail to
37), 7 x 7 x 768 float16 features (frozen MobileNet 0.75 at 224 px) in a memory-mapped
file as the feature cache serves them, and a 2,500-word vocabulary. Each decoder trains
with its shipped experiment's sizes and batch through the training code itself
(``model.fit`` over ``pipeline.feature_dataset``: length buckets, trimmed batches).

An epoch is timed over its first ``timed_steps`` batches after ``warmup_steps`` (tracing),
the fastest of ``repeats`` such windows, and scaled to the epoch's batch count; the
batches come in the epoch's shuffled, bucketed order, so their lengths are a fair sample.
Machines of one kind differ in speed, so the same run measures this machine's float32
matmul rate (MATMUL_SHAPE) and the attention step's FLOP rate as a fraction of it:

    attention FLOPs = 3 x (forward multiply-adds x 2): every matmul of the step counted
    from the layer sizes and the batch's own lengths (per image: the region projection
    and the initial state; per caption row and time step: W_h h, the scores, the
    context, the gate, the cell's context and recurrent matmuls and the hoisted word
    matmul; per real target token: the output layer). With decoder.attention_placement
    "output" there is no context matmul in the cell, the mean image's gates run once per
    caption, and W_h h, the scores and the gate run at the real target tokens alone
    (OutputAttentionDecoder.recur_real). The backward pass counted as twice the forward,
    as is usual. Element-wise work (softmax, tanh, LayerNorm) is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
DECODER_EXPERIMENTS = {"rnn": EXPERIMENTS / "flickr8k_mobilenet_lstm.toml",
                       "attention": EXPERIMENTS / "flickr8k_attention_scst.toml"}
FEATURE_SHAPE = (49, 768)  # MobileNet v1 0.75 at 224 px: a 7 x 7 grid of 768 channels
# Flickr8k.token.txt: how many of its 40,460 captions have each word count (2 to 37 words).
CAPTION_WORD_COUNTS = {2: 16, 3: 144, 4: 399, 5: 1000, 6: 2242, 7: 2942, 8: 3337, 9: 3804, 10: 3858, 11: 3545,
                       12: 3226, 13: 2706, 14: 2154, 15: 1609, 16: 1169, 17: 837, 18: 643, 19: 447, 20: 291,
                       21: 165, 22: 161, 23: 100, 24: 66, 25: 52, 26: 27, 27: 21, 28: 9, 29: 9, 30: 8, 31: 6,
                       32: 2, 33: 3, 34: 1, 37: 1}
MATMUL_SHAPE = (1024, 1536, 2048)  # (rows, inputs, outputs): the cell's matmul over a batch's tokens


def flickr8k_like_tokens(images: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """(images, 5, length) int32: <start>, words drawn with Flickr8k's word counts, <end>,
    padding; captions longer than ``length`` - 2 words are cut as StartEndPacker cuts them."""
    from captioning.data.vocabulary import END_ID, SPECIAL_TOKENS, START_ID

    rng = np.random.default_rng(seed)
    counts = np.array(list(CAPTION_WORD_COUNTS))
    probabilities = np.array(list(CAPTION_WORD_COUNTS.values()), dtype=np.float64)
    word_counts = np.minimum(rng.choice(counts, size=(images, 5), p=probabilities / probabilities.sum()), length - 2)
    tokens = np.zeros((images, 5, length), dtype=np.int32)
    tokens[:, :, 0] = START_ID
    for image in range(images):
        for caption in range(5):
            words = word_counts[image, caption]
            tokens[image, caption, 1:words + 1] = rng.integers(len(SPECIAL_TOKENS), vocab_size, words)
            tokens[image, caption, words + 1] = END_ID
    return tokens


def matmul_flops_per_second(repeats: int = 20) -> float:
    """This machine's float32 matmul rate on MATMUL_SHAPE, compiled, best of ``repeats``."""
    import tensorflow as tf

    from benchmarks.measuring import best_seconds

    rows, inputs, outputs = MATMUL_SHAPE
    left = tf.random.normal((rows, inputs), seed=0)
    right = tf.random.normal((inputs, outputs), seed=1)
    multiply = tf.function(lambda a, b: tf.matmul(a, b))
    multiply(left, right).numpy()
    return 2 * rows * inputs * outputs / best_seconds(lambda: multiply(left, right).numpy(), repeats)


def attention_step_flops(decoder, images: int, captions: np.ndarray, targets: np.ndarray) -> float:
    """FLOPs of one attention training step (module docstring): captions (images, 5, steps)
    inputs, targets (images, 5, steps) with 0 for padding."""
    regions, channels = FEATURE_SHAPE
    units, attention_units, embedding = decoder.units, decoder.attention_units, decoder.embedding_dim
    gate_width = units * (4 if decoder.cell_name == "lstm" else 3)  # LSTM: i, f, c, o; GRU: z, r, h
    rows, steps = captions.shape[0] * captions.shape[1], captions.shape[2]
    per_image = regions * channels * attention_units + channels * units * decoder.state_count
    per_row = 0
    # W_h h, the scores and the gate: at every step in the loop ("input"), at the real tokens alone after it ("output")
    attended = units * attention_units + regions * attention_units + units * (1 if decoder.attention_gate else 0)
    per_row_step = regions * channels + (embedding + units) * gate_width  # the context, the cell
    per_token = 0
    if decoder.attention_placement == "input":  # the context into the cell
        per_row_step += channels * gate_width + attended
    else:  # "output": the mean image at a word's width, its gate rows once per caption
        per_image += channels * embedding
        per_row += embedding * gate_width
        per_token += attended
    real_tokens = int((targets != 0).sum())
    if decoder.output_layer == "deep":
        per_token += (units + channels) * embedding + embedding * decoder.vocab_size
    else:
        per_token += (units + channels + embedding) * decoder.vocab_size
    multiply_adds = images * per_image + rows * per_row + rows * steps * per_row_step + real_tokens * per_token
    return 3 * 2 * multiply_adds


def measure_decoder_epoch(name: str, work: Path, images: int, timed_steps: int, warmup_steps: int,
                          vocabulary_words: int, overrides=(), repeats: int = 1) -> dict:
    """Seconds of one training epoch of decoder ``name`` over ``images`` synthetic images
    (module docstring), and for attention the step's FLOP rate; the timed window is the
    fastest of ``repeats``."""
    import keras

    from benchmarks.measuring import random_features, step_end_timer
    from captioning.config import load_config
    from captioning.data.pipeline import feature_dataset
    from captioning.models.caption_model import build_feature_model, compile_model
    from captioning.models.precision import precision_policy

    config = load_config(DECODER_EXPERIMENTS[name], ["encoder.weights=none", *overrides])
    vocab_size = vocabulary_words + 4
    features = random_features(work / f"{name}_features.npy", images, FEATURE_SHAPE)
    tokens = flickr8k_like_tokens(images, config.decoder.max_length, vocab_size)
    batch = config.training.batch_size
    batches = -(-images // batch)
    keras.utils.set_random_seed(0)
    with precision_policy(config.runtime):
        model = build_feature_model(config, vocab_size, FEATURE_SHAPE)
    compile_model(model, config.runtime, config.training.learning_rate)

    def first_batches():  # a new dataset's first iteration: the same seeded order every time
        return feature_dataset(features, tokens, batch, shuffle=True, seed=0).take(warmup_steps + timed_steps)

    timed = list(first_batches())[warmup_steps:]  # for their lengths (FLOPs, the mean trimmed length)

    # One fit straight from the pipeline, as training runs: the first steps trace the step
    # (lengths vary, so Keras relaxes them to unknown). Batches replayed from a Python
    # generator (tf.data.Dataset.from_generator) measured 1.7x slower a step.
    # Best of ``repeats`` fits over the same batches, as every timing of make bench: the
    # machine's speed drifts (other tenants), and the matmul rate it is compared with is a best too.
    window_seconds = []
    for _ in range(repeats):
        timer = step_end_timer()
        model.fit(first_batches(), steps_per_epoch=warmup_steps + timed_steps, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer])
        window_seconds.append(timer.step_ends[-1] - timer.step_ends[warmup_steps - 1])
    seconds = min(window_seconds)
    epoch_seconds = seconds / len(timed) * batches
    result = {"experiment": DECODER_EXPERIMENTS[name].name, "images": images, "batch": batch,
              "batches_per_epoch": batches, "timed_steps": len(timed), "seconds_per_step": seconds / len(timed),
              "epoch_seconds": epoch_seconds, "window_seconds": window_seconds,
              "mean_trimmed_length": float(np.mean([int(inputs["captions"].shape[2]) for inputs, _ in timed]))}
    if name == "attention":
        flops = sum(attention_step_flops(model.decoder, int(inputs["captions"].shape[0]), np.asarray(inputs["captions"]),
                                         np.asarray(targets)) for inputs, targets in timed)
        result["step_flops_per_second"] = flops / seconds
    return result
