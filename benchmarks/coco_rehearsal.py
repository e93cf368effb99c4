"""make rehearsal: the shipped attention decoder trained on a synthetic data set the size of
COCO's Karpathy split, from a feature cache written and read in shards.

    python -m benchmarks rehearsal [--images 113287] [--steps 30] [--work DIR] [--out rehearsal.json]

What it builds (nothing downloaded, no images decoded):
- features: ``images`` x 7 x 7 x 768 float16 (frozen MobileNet 0.75 at 224 px, as the
  shipped Flickr8k recipe caches them), random non-negative values, written chunk by chunk
  as shards of at most 1.5 GB (feature_shards.py): 8.5 GB in 6 shards at COCO's size;
- captions: 5 per image with Flickr8k's word-count histogram (decoder_bench.py; COCO's
  captions are of similar length, mean 10.5 words against 10.9) over a vocabulary of
  COCO's size (COCO_VOCABULARY_WORDS).

It trains ``flickr8k_attention_scst.toml``'s decoder (its sizes and batch) through the
training code itself (``model.fit`` over ``pipeline.feature_dataset``, which reads the shards
memory-mapped, one batch's rows at a time) for ``warmup_steps`` + ``steps`` steps and
reports:

- ``epoch_feature_read_seconds``: every batch of one shuffled epoch read from the shards
  (no training), so that all the features pass through the process once;
- ``peak_rss_gb``: the process's peak resident memory (``getrusage``'s ru_maxrss, 10^9
  bytes) after writing, training and that read, against the 3 GB budget. Reading maps
  each batch's shards anew (feature_shards.py): with the shards' maps kept open all epoch,
  the same read measured 8.57 GB resident at COCO's size (the pages read stay mapped).
- ``seconds_per_step``: the steps after the warm-up (tracing), timed at their ends;
- ``projected_coco_epoch_seconds``: seconds_per_step x the batches of one epoch of
  COCO_TRAIN_IMAGES. A step's cost does not depend on how many images the data set holds
  (a batch reads only its own rows), so a small rehearsal projects the same epoch; the
  batches' lengths come from the epoch's own shuffled, length-bucketed order.

Writing needs the features' size free on disk (checked first). With ``work_dir`` the shards
are kept there and reused by the next run of the same size; without, they go to a
temporary folder removed at the end.
"""

from __future__ import annotations

import math
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.decoder_bench import DECODER_EXPERIMENTS, FEATURE_SHAPE, flickr8k_like_tokens
from benchmarks.feature_shards import MAX_SHARD_BYTES, ShardedFeatures, is_complete, rows_per_shard, write_shards
from captioning.files import write_json

# COCO 2014 in Karpathy's split: train (82,783) + restval (30,504) images train the model.
COCO_TRAIN_IMAGES = 113_287
# Words seen at least 5 times in those training captions (Karpathy's and ruotianluo's
# preprocessing), the usual COCO vocabulary; 4 special tokens come on top.
COCO_VOCABULARY_WORDS = 9_487
PEAK_RSS_BUDGET_GB = 3.0
FEATURE_CHUNK_ROWS = 512  # rows generated and written at a time: 38 MB of float16, 77 MB as float32
EXPERIMENT = DECODER_EXPERIMENTS["attention"]


class RehearsalError(ValueError):
    """The rehearsal cannot run as asked (too little disk space, sizes below one)."""


def batches_per_epoch(images: int, batch_size: int) -> int:
    """Batches of one epoch over ``images``, the last one partial."""
    return -(-images // batch_size)


def projected_epoch_seconds(seconds_per_step: float, images: int, batch_size: int) -> float:
    return seconds_per_step * batches_per_epoch(images, batch_size)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_feature_chunks(images: int, seed: int = 0):
    """(rows, 49, 768) float16 chunks of non-negative features (ReLU outputs), ``images`` rows in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, images, FEATURE_CHUNK_ROWS):
        rows = min(FEATURE_CHUNK_ROWS, images - start)
        yield rng.random((rows, *FEATURE_SHAPE), dtype=np.float32).astype(np.float16)


def sharded_features(folder: Path, images: int, max_shard_bytes: int) -> tuple[ShardedFeatures, float | None]:
    """(the features, seconds spent writing them or None if reused): reuses a complete
    folder of the same shape and shard size, else checks the free space and writes it."""
    shape = (images, *FEATURE_SHAPE)
    if is_complete(folder):
        features = ShardedFeatures(folder)
        largest_allowed = rows_per_shard(FEATURE_SHAPE, np.float16, max_shard_bytes)
        if features.shape == shape and max(features.shard_rows, default=0) <= largest_allowed:
            return features, None
    needed = images * math.prod(FEATURE_SHAPE) * 2
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05:
        raise RehearsalError(f"{folder}: {needed / 1e9:.1f} GB of features need writing but only "
                             f"{free / 1e9:.1f} GB is free there; pass --work on a larger disk or fewer --images")
    started = time.perf_counter()
    features = write_shards(folder, shape, random_feature_chunks(images), np.float16, max_shard_bytes)
    return features, time.perf_counter() - started


def read_one_epoch(features: ShardedFeatures, batch_size: int, seed: int) -> float:
    """Seconds to read every batch of one shuffled epoch from the shards, as feature_dataset
    reads them (each batch's rows sorted), without training: the whole feature set passes
    through the process, so the peak resident memory afterwards covers a full epoch's reads."""
    order = np.random.default_rng(seed).permutation(len(features))
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        features[np.sort(order[start:start + batch_size])]  # (batch, 49, 768) float16, dropped
    return time.perf_counter() - started


def run_rehearsal(images: int = COCO_TRAIN_IMAGES, steps: int = 30, warmup_steps: int = 3, work_dir=None,
                  out=None, max_shard_bytes: int = MAX_SHARD_BYTES, vocabulary_words: int = COCO_VOCABULARY_WORDS,
                  overrides=()) -> dict:
    """Builds the synthetic data set, trains ``steps`` timed steps and returns the figures
    (module docstring); prints them and writes them as JSON to ``out`` if given."""
    if images < 1 or steps < 1 or warmup_steps < 1:
        raise RehearsalError(f"the rehearsal needs at least one image, one warm-up step and one timed step "
                             f"(got images={images}, warmup_steps={warmup_steps}, steps={steps})")
    temporary = None if work_dir is not None else tempfile.mkdtemp(prefix="coco_rehearsal_")
    work = Path(work_dir if work_dir is not None else temporary)
    try:
        result = _rehearse(images, steps, warmup_steps, work, max_shard_bytes, vocabulary_words, list(overrides))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print(format_result(result))
    if out is not None:
        write_json(out, result)
    return result


def _rehearse(images: int, steps: int, warmup_steps: int, work: Path, max_shard_bytes: int, vocabulary_words: int,
              overrides: list[str]) -> dict:
    import keras

    from benchmarks.measuring import step_end_timer
    from captioning.config import load_config
    from captioning.data.pipeline import feature_dataset
    from captioning.models.caption_model import build_feature_model, compile_model
    from captioning.models.precision import precision_policy

    config = load_config(EXPERIMENT, ["encoder.weights=none", *overrides])
    batch = config.training.batch_size
    vocab_size = vocabulary_words + 4
    features, write_seconds = sharded_features(work / f"features-{images}", images, max_shard_bytes)
    rss_after_writing = peak_rss_bytes()
    tokens = flickr8k_like_tokens(images, config.decoder.max_length, vocab_size)  # (images, 5, length)

    keras.utils.set_random_seed(config.training.seed)
    with precision_policy(config.runtime):
        model = build_feature_model(config, vocab_size, FEATURE_SHAPE)
    compile_model(model, config.runtime, config.training.learning_rate)
    dataset = feature_dataset(features, tokens, batch, shuffle=True, seed=config.training.seed).repeat()
    timer = step_end_timer()
    model.fit(dataset.take(warmup_steps + steps), steps_per_epoch=warmup_steps + steps, epochs=1, verbose=0,
              shuffle=False, callbacks=[timer])
    seconds_per_step = (timer.step_ends[-1] - timer.step_ends[warmup_steps - 1]) / steps

    epoch_read_seconds = read_one_epoch(features, batch, config.training.seed)
    feature_bytes = features.nbytes
    return {
        "experiment": EXPERIMENT.name,
        "images": images,
        "captions_per_image": int(tokens.shape[1]),
        "feature_shape": list(FEATURE_SHAPE),
        "feature_gb": feature_bytes / 1e9,
        "shards": len(features.paths),
        "largest_shard_gb": max(features.shard_rows) * feature_bytes / images / 1e9,
        "feature_write_seconds": write_seconds,  # None: the shards of an earlier run were reused
        "feature_write_gb_per_second": None if not write_seconds else feature_bytes / 1e9 / write_seconds,
        "vocabulary": vocab_size,
        "batch": batch,
        "warmup_steps": warmup_steps,
        "timed_steps": steps,
        "seconds_per_step": seconds_per_step,
        "batches_per_epoch": batches_per_epoch(images, batch),
        "projected_epoch_seconds": projected_epoch_seconds(seconds_per_step, images, batch),
        "coco_images": COCO_TRAIN_IMAGES,
        "batches_per_coco_epoch": batches_per_epoch(COCO_TRAIN_IMAGES, batch),
        "projected_coco_epoch_seconds": projected_epoch_seconds(seconds_per_step, COCO_TRAIN_IMAGES, batch),
        "epoch_feature_read_seconds": epoch_read_seconds,
        "peak_rss_after_writing_gb": rss_after_writing / 1e9,
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "peak_rss_budget_gb": PEAK_RSS_BUDGET_GB,
    }


def format_result(result: dict) -> str:
    hours = result["projected_coco_epoch_seconds"] / 3600
    written = ("reused from an earlier run" if result["feature_write_seconds"] is None else
               f"written in {result['feature_write_seconds']:.0f} s ({result['feature_write_gb_per_second']:.2f} GB/s)")
    within = "within" if result["peak_rss_gb"] < result["peak_rss_budget_gb"] else "OVER"
    return "\n".join([
        f"COCO rehearsal: {result['images']:,} images x {result['captions_per_image']} captions, "
        f"{result['experiment']}'s decoder, batch {result['batch']}, {result['vocabulary']:,} tokens",
        f"  features      {result['feature_gb']:.2f} GB float16 in {result['shards']} shards "
        f"(largest {result['largest_shard_gb']:.2f} GB), {written}",
        f"  training      {result['seconds_per_step']:.3f} s a step over {result['timed_steps']} steps "
        f"(after {result['warmup_steps']} warm-up)",
        f"  reading       {result['epoch_feature_read_seconds']:.1f} s for every batch of one epoch from the shards "
        "(no training)",
        f"  peak memory   {result['peak_rss_gb']:.2f} GB resident ({within} the {result['peak_rss_budget_gb']:.0f} GB "
        f"budget; {result['peak_rss_after_writing_gb']:.2f} GB after writing the features)",
        f"  projected COCO epoch on this machine: {result['projected_coco_epoch_seconds']:,.0f} s ({hours:.2f} h), "
        f"{result['batches_per_coco_epoch']:,} batches of {result['batch']}",
    ])

