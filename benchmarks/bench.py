"""make bench: what each speed-up is worth on this machine, as ratios measured in one run.

    python -m benchmarks bench [--quick] [--out bench.json] [--set section.field=value ...]

Every figure divides two timings taken in the same process on the same inputs, so it
says what the technique buys on the machine at hand. Warm-up (tracing, the first batch or
step) is excluded from every timing, and each timing is the best of ``repeats`` runs.

| JSON key | numerator / denominator | target |
|---|---|---|
| feature_extraction_vs_predict | throughput of the whole feature pipeline (read, decode, resize, normalize, encoder, write to the feature cache) / the encoder's ``predict`` on the same images already in memory, same batch | >= 0.85 |
| cached_training_speedup | decoder training captions/s on cached VGG16 features / training that runs the frozen VGG16 every step | >= 20 |
| batched_beam_speedup | beam-3 generation for 64 images one at a time / the same 64 as one batch (time over time) | >= 8 |
| cache_vs_decode_speedup | decoding + resizing + normalizing 500 JPEGs / loading them from the normalized-image cache | >= 3 |
| training_peak_memory_gb | peak resident memory (10^9 bytes) of a child process training the Flickr8k experiment's decoder on a Flickr8k-sized feature cache | < 3 |
| rnn_epoch_seconds | one epoch of the shipped rnn decoder (flickr8k_mobilenet_lstm.toml) on 6,000 synthetic Flickr8k-shaped images x 5 captions (decoder_bench.py) | <= 45 |
| attention_epoch_seconds | the same for the shipped attention recipe (flickr8k_attention_scst.toml) | <= 90 |
| attention_flops_utilization | the attention training step's FLOP rate (FLOPs counted from the layer sizes, decoder_bench.py) / a float32 (1024 x 1536) @ (1536 x 2048) matmul's, both measured in the run | >= 0.4 |
| batch_caption_images_per_second | `make caption IMG=folder OUT=x.csv` inside one process: images captioned per second (beam 3, a one-file model of the experiment, model loading and tracing excluded) | (none) |
| batch_vs_per_call_speedup | that throughput / one `python -m captioning caption IMAGE --model FILE` process per image (the seconds of a few such processes, averaged) | >= 20 |

Speed differs between machines of one kind by up to about 2x: the run prints this
machine's matmul rate beside the figures (``details.attention_flops_utilization``), and the
utilization divides by the matmul rate measured just before and just after the attention
epoch (their mean), since one machine's speed also drifts from minute to minute. Each
decoder's epoch is also timed with bfloat16 mixed precision (``details.<decoder>_epoch_seconds.
bfloat16_epoch_seconds`` and ``bfloat16_speedup``): a detail, since it pays only on CPUs
with AVX512-BF16 or AMX.

The experiment is experiments/flickr8k_mobilenet_lstm.toml with ``encoder.weights=none``:
random weights cost exactly what ImageNet weights cost, so no weights file is needed. The
images are synthetic 500 x 375 JPEGs (the size of Flickr8k's photos), unless ``data.root``
names a folder holding the experiment's data set, whose first train images are then used.
The memory child trains on random features and captions of Flickr8k's shape (6,000
images x 49 regions x 768 channels, float16, a 2,500-word vocabulary).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.measuring import best_seconds, random_features, step_end_timer

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "flickr8k_mobilenet_lstm.toml"
CAPTIONS_PER_IMAGE = 5
# Flickr8k's photos are at most 500 px wide; most are 500 x 375 or 375 x 500.
SYNTHETIC_PHOTO_SIZE = (500, 375)

# key -> (what, comparison, target, unit)
TARGETS = {
    "feature_extraction_vs_predict": ("feature extraction: whole pipeline / encoder predict", ">=", 0.85, "x"),
    "cached_training_speedup": ("decoder training: cached VGG16 features / VGG16 every step", ">=", 20.0, "x"),
    "batched_beam_speedup": ("beam 3 generation: 64 images batched / one at a time", ">=", 8.0, "x"),
    "cache_vs_decode_speedup": ("500 images: normalized cache / JPEG decode + resize", ">=", 3.0, "x"),
    "training_peak_memory_gb": ("peak memory, Flickr8k decoder on cached features", "<", 3.0, " GB"),
    "rnn_epoch_seconds": ("rnn decoder: one Flickr8k-sized epoch (decoder_bench.py)", "<=", 45.0, " s"),
    "attention_epoch_seconds": ("attention decoder: one Flickr8k-sized epoch", "<=", 90.0, " s"),
    "attention_flops_utilization": ("attention step FLOP rate / this machine's matmul rate", ">=", 0.4, "x"),
    "batch_caption_images_per_second": ("batch captioning, beam 3: images per second", None, None, "/s"),
    "batch_vs_per_call_speedup": ("batch captioning / one caption process per image", ">=", 20.0, "x"),
}


@dataclasses.dataclass(frozen=True)
class BenchSizes:
    """How much work each measurement does; FULL takes a few minutes each on 2 CPU cores."""

    image_size: int  # side of the images every encoder sees
    photo_size: tuple[int, int]  # (width, height) of the synthetic JPEGs
    extraction_images: int  # 1: images through the pipeline and through predict (a multiple of the batch)
    extraction_batch: int
    training_batch: int  # 2: the batch of both training loops
    cached_steps: int  # 2: timed steps on cached features (after one warm-up step)
    full_steps: int  # 2: timed steps running VGG16 (after one warm-up step)
    generation_images: int  # 3
    cache_images: int  # 4
    memory_images: int  # 5: images in the synthetic Flickr8k feature cache
    memory_steps: int  # 5: training steps of the memory child
    vocabulary_words: int
    repeats: int  # each timing is the best of this many runs
    decoder_images: int  # 6-8: images of the synthetic Flickr8k (decoder_bench.py)
    decoder_timed_steps: int  # 6-8: steps timed per decoder (after warm-up steps) and scaled to the epoch
    decoder_warmup_steps: int
    decoder_repeats: int  # 6-8: each epoch timing is the fastest of this many windows over the same batches
    batch_caption_images: int  # 9: images captioned in one batch run (after a warm-up batch)
    per_call_processes: int  # 9: `caption` processes timed, one image each
    overrides: tuple[str, ...] = ()  # config overrides on top of the experiment


FULL = BenchSizes(image_size=224, photo_size=SYNTHETIC_PHOTO_SIZE, extraction_images=256, extraction_batch=32,
                  training_batch=16, cached_steps=30, full_steps=3, generation_images=64, cache_images=500,
                  memory_images=6000, memory_steps=200, vocabulary_words=2500, repeats=2, decoder_images=6000,
                  decoder_timed_steps=40, decoder_warmup_steps=4, decoder_repeats=3, batch_caption_images=64,
                  per_call_processes=3)
# For the test suite: every code path in seconds; its numbers mean nothing.
QUICK = BenchSizes(image_size=32, photo_size=(48, 40), extraction_images=8, extraction_batch=4, training_batch=4,
                   cached_steps=2, full_steps=1, generation_images=4, cache_images=10, memory_images=40,
                   memory_steps=3, vocabulary_words=30, repeats=1, decoder_images=48, decoder_timed_steps=2,
                   decoder_warmup_steps=1, decoder_repeats=1, batch_caption_images=4, per_call_processes=1,
                   overrides=("decoder.units=16", "decoder.embedding_dim=8", "decoder.max_length=6"))


def config_overrides(sizes: BenchSizes, overrides=()) -> list[str]:
    """The experiment's overrides for the bench: random weights, the bench's sizes, the user's."""
    return ["encoder.weights=none", f"images.x_size={sizes.image_size}", f"images.y_size={sizes.image_size}",
            *sizes.overrides, *overrides]


def with_values(config, **sections):
    """A copy of ``config`` with ``section={field: value}`` replaced."""
    changes = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def synthetic_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``count`` JPEGs of ``size`` (width, height): smooth colour fields with fine texture,
    which decode at about the cost of photographs (flat images would decode faster)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        medium = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
        medium = np.asarray(medium.resize(size, Image.Resampling.BILINEAR), dtype=np.int16) - 128
        pixels = np.asarray(coarse, dtype=np.int16) + medium // 3 + rng.integers(-10, 11, (height, width, 3))
        path = folder / f"photo_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def bench_images(config, folder: Path, count: int, sizes: BenchSizes) -> tuple[list[str], str]:
    """(image paths, where they come from): the data set's first train images if
    ``data.root`` holds it, else synthetic photos."""
    if Path(config.data.root).is_dir():
        from captioning.data.datasets import load_split

        paths = [example.image_path for example in load_split(config.data, "train")]
        if len(paths) < count:
            raise ValueError(f"{config.data.root}: the bench needs {count} train images, the data set has {len(paths)}")
        return paths[:count], f"{config.data.name} train images from {config.data.root}"
    width, height = sizes.photo_size
    return synthetic_photos(folder, count, sizes.photo_size), f"synthetic {width} x {height} JPEGs"


def synthetic_examples(paths: list[str], vocabulary_words: int, seed: int = 0):
    """Each path with five captions of 8 to 16 words drawn from ``vocabulary_words`` words."""
    from captioning.data.datasets import CaptionedImage

    rng = np.random.default_rng(seed)
    words = [f"word{index}" for index in range(vocabulary_words)]
    return [CaptionedImage(path, tuple(" ".join(rng.choice(words, rng.integers(8, 17)))
                                       for _ in range(CAPTIONS_PER_IMAGE))) for path in paths]


def random_tokens(count: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """(count, 5, length) int32 captions: <start>, 8 to 16 word ids, <end>, padding."""
    from captioning.data.vocabulary import END_ID, SPECIAL_TOKENS, START_ID

    rng = np.random.default_rng(seed)
    tokens = np.zeros((count, CAPTIONS_PER_IMAGE, length), dtype=np.int32)
    for image in range(count):
        for caption in range(CAPTIONS_PER_IMAGE):
            words = min(int(rng.integers(8, 17)), length - 2)
            tokens[image, caption, 0] = START_ID
            tokens[image, caption, 1:words + 1] = rng.integers(len(SPECIAL_TOKENS), vocab_size, words)
            tokens[image, caption, words + 1] = END_ID
    return tokens


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def steady_step_seconds(model, dataset, steps: int) -> float:
    """Seconds per training step of ``model.fit`` over ``steps`` steps after a first
    (tracing) step, input pipeline included."""
    timer = step_end_timer()
    model.fit(dataset.repeat(), steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    return (timer.step_ends[-1] - timer.step_ends[0]) / steps


# ---------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------


def measure_feature_extraction(config, paths: list[str], work: Path, sizes: BenchSizes) -> tuple[float, dict]:
    """1. Images on disk -> feature cache, through train.cached_features (tf.data parallel
    reads a batch ahead of the compiled encoder), against ``predict`` on the same images
    already normalized in memory, with the same encoder object and batch size."""
    import keras

    from captioning.data.images import load_image
    from captioning.models.caption_model import image_shape
    from captioning.models.encoders import build_encoder, normalization_for
    from captioning.training.training_data import cached_features, feature_encoder

    batch = sizes.extraction_batch
    config = with_values(config, training={"batch_size": batch})
    encoder = build_encoder(config.encoder, image_shape(config))
    encode = feature_encoder(config, encoder)
    inputs = keras.Input(image_shape(config))
    predict_model = keras.Model(inputs, encoder(inputs))
    normalization = normalization_for(config.encoder)
    images = np.stack([load_image(path, config.images.x_size, config.images.y_size, normalization) for path in paths])
    runs = iter(range(10 ** 6))

    def run_pipeline(image_paths):
        cache_dir = work / f"features-{next(runs)}"  # an empty cache every time
        return cached_features(with_values(config, images={"feature_cache_dir": str(cache_dir)}), image_paths,
                               "bench extraction", encode)

    run_pipeline(paths[:batch])  # warm-up: traces the encoder for a full batch
    predict_model.predict(images[:batch], batch_size=batch, verbose=0)
    pipeline_seconds = best_seconds(lambda: run_pipeline(paths), sizes.repeats)
    predict_seconds = best_seconds(lambda: predict_model.predict(images, batch_size=batch, verbose=0), sizes.repeats)
    features = run_pipeline(paths[:batch])
    return predict_seconds / pipeline_seconds, {
        "encoder": f"{config.encoder.name} (alpha {config.encoder.alpha}) at {config.images.x_size} px",
        "images": len(paths), "batch": batch,
        "pipeline_images_per_second": len(paths) / pipeline_seconds,
        "predict_images_per_second": len(paths) / predict_seconds,
        "feature_shape": list(features.shape[1:]),
    }


def measure_cached_training(config, paths: list[str], work: Path, sizes: BenchSizes) -> tuple[float, dict]:
    """2. The experiment's decoder on cached VGG16 features (a memory-mapped float16 file,
    as the feature cache serves them) against the same decoder behind a frozen VGG16 that
    runs every step on images from the warm normalized-image cache."""
    from captioning.data.pipeline import ImageReader, caption_array, feature_dataset, training_dataset
    from captioning.data.vocabulary import Vocabulary
    from captioning.models.caption_model import build_feature_model, build_model, compile_model
    from captioning.models.encoders import normalization_for

    batch = sizes.training_batch
    config = with_values(config, encoder={"name": "vgg16"}, training={"batch_size": batch},
                         images={"cache_dir": str(work / "image-cache-training")})
    full_paths = paths[:batch * (sizes.full_steps + 1)]
    examples = synthetic_examples(full_paths, sizes.vocabulary_words)
    vocabulary = Vocabulary.build([caption for example in examples for caption in example.captions])
    length = config.decoder.max_length
    reader = ImageReader(config.images, normalization_for(config.encoder))
    for path in full_paths:
        reader(path)  # fills the image cache: the encoder alone should set the cost
    full_model = build_model(config, vocabulary.size)
    compile_model(full_model, config.runtime, config.training.learning_rate)
    full_dataset = training_dataset(examples, vocabulary, reader, CAPTIONS_PER_IMAGE, length, batch,
                                    shuffle=False, seed=0)
    full_step = steady_step_seconds(full_model, full_dataset, sizes.full_steps)

    feature_shape = tuple(full_model.encoder.compute_output_shape((None, *reader.shape))[1:])
    cached_images = batch * (sizes.cached_steps + 1)
    features = random_features(work / "vgg16_features.npy", cached_images, feature_shape)
    tokens = caption_array(synthetic_examples(["unused"] * cached_images, sizes.vocabulary_words, seed=1),
                           vocabulary, CAPTIONS_PER_IMAGE, length)
    cached_model = build_feature_model(config, vocabulary.size, feature_shape)
    compile_model(cached_model, config.runtime, config.training.learning_rate)
    cached_dataset = feature_dataset(features, tokens, batch, shuffle=True, seed=0)
    cached_step = steady_step_seconds(cached_model, cached_dataset, sizes.cached_steps)
    captions_per_step = batch * CAPTIONS_PER_IMAGE
    return full_step / cached_step, {
        "encoder": f"vgg16 at {config.images.x_size} px, weights=none (the architecture sets the cost)",
        "batch": batch, "feature_shape": list(feature_shape), "vocabulary": vocabulary.size,
        "cached_captions_per_second": captions_per_step / cached_step,
        "vgg16_every_step_captions_per_second": captions_per_step / full_step,
    }


def measure_batched_beam(config, feature_shape, vocab_size: int, sizes: BenchSizes) -> tuple[float, dict]:
    """3. Beam search (width 3) from features, compiled as the Captioner compiles it: one
    batch of ``generation_images`` against the same images one call each."""
    import tensorflow as tf

    from captioning.config import GenerationConfig
    from captioning.models.decoders import build_decoder
    from captioning.models.search import build_sampler, generate_token_ids

    decoder = build_decoder(config.decoder, vocab_size)
    decoder((np.zeros((1, *feature_shape), "float32"), np.zeros((1, 2), "int32")))
    sampler = build_sampler(GenerationConfig(sampler="beam", beam_width=3))
    max_length = config.decoder.max_length
    generate = tf.function(lambda features: generate_token_ids(decoder, features, max_length, sampler),
                           reduce_retracing=True)
    rng = np.random.default_rng(0)
    features = np.abs(rng.standard_normal((sizes.generation_images, *feature_shape))).astype("float32")
    singles = [tf.constant(features[index:index + 1]) for index in range(len(features))]
    batch = tf.constant(features)
    for _ in range(2):  # warm-up: both shapes traced (reduce_retracing may relax them once)
        np.asarray(generate(batch))
        np.asarray(generate(singles[0]))
    batched_seconds = best_seconds(lambda: np.asarray(generate(batch)), sizes.repeats)
    single_seconds = best_seconds(lambda: [np.asarray(generate(single)) for single in singles], 1)
    return single_seconds / batched_seconds, {
        "images": len(features), "beam_width": 3, "max_length": max_length, "vocabulary": vocab_size,
        "batched_images_per_second": len(features) / batched_seconds,
        "one_at_a_time_images_per_second": len(features) / single_seconds,
        "note": "untrained decoder: every caption runs to max_length in both modes",
    }


def measure_batch_captioning(config, paths: list[str], work: Path, sizes: BenchSizes) -> tuple[float, dict]:
    """9. Batch captioning against one process per image, on a one-file model of the
    experiment (random weights, a synthetic vocabulary, beam 3): images per second of
    ``caption_files`` once the model is loaded and traced, and the seconds of a whole
    ``python -m captioning caption IMAGE --model FILE`` process (start, imports, loading,
    one caption), averaged over ``per_call_processes``. Returns (speedup, details)."""
    from captioning.apps.batch_caption import caption_files
    from captioning.captioner import Captioner
    from captioning.config import to_dict
    from captioning.data.vocabulary import SPECIAL_TOKENS
    from captioning.models.model_file import PackagedCaptioner

    tokens = [*SPECIAL_TOKENS, *(f"word{index}" for index in range(sizes.vocabulary_words))]
    model_config = with_values(config, generation={"sampler": "beam", "beam_width": 3}, images={"cache": False})
    model_path = work / "bench_captioner.keras"
    PackagedCaptioner(experiment=to_dict(model_config), vocab_size=len(tokens), tokens=tokens).save(model_path)
    captioner = Captioner.from_model_file(model_path)
    batch_size = 32
    images = paths[:sizes.batch_caption_images]
    caption_files(captioner, images[:batch_size])  # warm-up: traces generation for a full batch
    batch_seconds = best_seconds(lambda: caption_files(captioner, images, batch_size=batch_size), sizes.repeats)
    images_per_second = len(images) / batch_seconds
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    process_seconds = []
    for path in paths[:sizes.per_call_processes]:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captioning", "caption", path, "--model", str(model_path)], check=True,
                       env=environment, stdout=subprocess.DEVNULL)
        process_seconds.append(time.perf_counter() - start)
    per_call_seconds = float(np.mean(process_seconds))
    return per_call_seconds * images_per_second, {
        "images": len(images), "batch_size": batch_size, "beam_width": 3, "max_length": config.decoder.max_length,
        "vocabulary": len(tokens), "images_per_second": images_per_second,
        "per_call_seconds": [round(seconds, 2) for seconds in process_seconds],
        "note": "untrained model: every caption runs to max_length",
    }


def measure_image_cache(config, paths: list[str], work: Path, sizes: BenchSizes) -> tuple[float, dict]:
    """4. ``images.load_image`` (read, decode, resize, normalize) against ``ImageCache.load``
    (read and hash the file, look it up, read the .npy, check its hash), one image at a time."""
    from captioning.data.image_cache import ImageCache
    from captioning.data.images import load_image
    from captioning.models.encoders import normalization_for

    x_size, y_size = config.images.x_size, config.images.y_size
    normalization = normalization_for(config.encoder)
    with ImageCache(work / "image-cache-loading") as cache:
        for path in paths:
            cache.load(path, x_size, y_size, normalization)  # fills the cache
        decode_seconds = best_seconds(lambda: [load_image(path, x_size, y_size, normalization) for path in paths],
                                      sizes.repeats)
        cache_seconds = best_seconds(lambda: [cache.load(path, x_size, y_size, normalization) for path in paths],
                                     sizes.repeats)
    with Image.open(paths[0]) as first:
        source_size = list(first.size)
    return decode_seconds / cache_seconds, {
        "images": len(paths), "source_size_of_first": source_size, "size": [x_size, y_size],
        "normalization": normalization,
        "decode_ms_per_image": 1000 * decode_seconds / len(paths),
        "cache_ms_per_image": 1000 * cache_seconds / len(paths),
    }


def measure_training_memory(config, overrides: list[str], feature_shape, work: Path,
                            sizes: BenchSizes) -> tuple[float, dict]:
    """5. Peak resident memory of a child process that trains the experiment's decoder on a
    memory-mapped feature cache of Flickr8k's size (the child reports its own peak, so no
    other process of the bench is counted)."""
    vocab_size = sizes.vocabulary_words + 4
    features_path, tokens_path = work / "memory_features.npy", work / "memory_tokens.npy"
    random_features(features_path, sizes.memory_images, feature_shape)
    np.save(tokens_path, random_tokens(sizes.memory_images, config.decoder.max_length, vocab_size), allow_pickle=False)
    spec = {"overrides": overrides, "features": str(features_path),
            "tokens": str(tokens_path), "vocab_size": vocab_size, "steps": sizes.memory_steps,
            "result": str(work / "memory_result.json")}
    spec_path = work / "memory_spec.json"
    spec_path.write_text(json.dumps(spec))
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-m", "benchmarks.bench", "memory-child", str(spec_path)],
                           env=environment, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the memory child failed (exit {child.returncode}):\n{child.stderr[-4000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    features_gb = sizes.memory_images * math.prod(feature_shape) * 2 / 1e9
    return result["peak_rss_bytes"] / 1e9, {
        "images": sizes.memory_images, "feature_shape": list(feature_shape), "feature_file_gb": features_gb,
        "vocabulary": vocab_size, "batch": config.training.batch_size, "steps": sizes.memory_steps,
        "seconds_per_step": result["seconds"] / sizes.memory_steps,
    }


def memory_child(spec_path: str) -> None:
    """Runs in the child: trains on the cached features named by the spec, then writes its
    own peak resident set size (Linux reports ru_maxrss in KiB)."""
    from captioning.config import load_config
    from captioning.data.pipeline import feature_dataset
    from captioning.models.caption_model import build_feature_model, compile_model
    from captioning.models.precision import precision_policy

    spec = json.loads(Path(spec_path).read_text())
    config = load_config(EXPERIMENT, spec["overrides"])
    features = np.load(spec["features"], mmap_mode="r", allow_pickle=False)  # (images, regions, channels)
    tokens = np.load(spec["tokens"], allow_pickle=False)  # (images, 5, length)
    dataset = feature_dataset(features, tokens, config.training.batch_size, shuffle=True, seed=0).repeat()
    with precision_policy(config.runtime):
        model = build_feature_model(config, spec["vocab_size"], features.shape[1:])
    compile_model(model, config.runtime, config.training.learning_rate)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=spec["steps"], epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(spec["result"]).write_text(json.dumps({"peak_rss_bytes": peak_bytes, "seconds": seconds}))


# ---------------------------------------------------------------------------------------
# The whole bench
# ---------------------------------------------------------------------------------------


BFLOAT16_OVERRIDES = ("runtime.mixed_precision=true", "runtime.mixed_precision_dtype=bfloat16")


def measure_decoder_epochs(sizes: BenchSizes, work: Path, details: dict) -> None:
    """6-8. Epoch seconds of both shipped Flickr8k decoders on synthetic Flickr8k-shaped data,
    and the attention step's FLOP rate over this machine's matmul rate (decoder_bench.py).
    Fills ``details`` with one entry per key."""
    from benchmarks.decoder_bench import matmul_flops_per_second, measure_decoder_epoch

    def epoch(name: str, overrides=()) -> dict:
        return measure_decoder_epoch(name, work, sizes.decoder_images, sizes.decoder_timed_steps,
                                     sizes.decoder_warmup_steps, sizes.vocabulary_words,
                                     (*sizes.overrides, *overrides), sizes.decoder_repeats)

    matmul_rates = {"at_start": matmul_flops_per_second()}
    print(f"bench: this machine's float32 matmul rate: {matmul_rates['at_start'] / 1e9:.1f} GFLOP/s", flush=True)
    for name in ("rnn", "attention"):
        print(f"bench: {TARGETS[f'{name}_epoch_seconds'][0]} ...", flush=True)
        if name == "attention":
            matmul_rates["before_attention"] = matmul_flops_per_second()
            details["attention_epoch_seconds"] = epoch(name)
            matmul_rates["after_attention"] = matmul_flops_per_second()
        else:
            details[f"{name}_epoch_seconds"] = epoch(name)
        # What runtime.mixed_precision_dtype=bfloat16 would buy here (AVX512-BF16 or AMX CPUs
        # run bfloat16 matmuls faster; others emulate them, slower): a detail, not a target.
        bfloat16 = epoch(name, BFLOAT16_OVERRIDES)
        measured = details[f"{name}_epoch_seconds"]
        measured["bfloat16_epoch_seconds"] = bfloat16["epoch_seconds"]
        measured["bfloat16_speedup"] = measured["epoch_seconds"] / bfloat16["epoch_seconds"]
        print(f"bench: {name}: {measured['epoch_seconds']:.1f} s an epoch in float32, "
              f"{bfloat16['epoch_seconds']:.1f} s with runtime.mixed_precision_dtype=bfloat16", flush=True)
    # The machine's speed drifts over minutes (other tenants, clocks): the step's rate is
    # divided by the matmul rate measured just before and just after it (their mean).
    attention = details["attention_epoch_seconds"]
    adjacent = (matmul_rates["before_attention"] + matmul_rates["after_attention"]) / 2
    details["attention_flops_utilization"] = {
        "step_gflop_per_second": attention["step_flops_per_second"] / 1e9,
        "matmul_gflop_per_second": adjacent / 1e9, "matmul_shape": "(1024 x 1536) @ (1536 x 2048) float32",
        **{f"matmul_gflop_per_second_{when}": rate / 1e9 for when, rate in matmul_rates.items()}}


def meets_target(key: str, value: float) -> bool:
    _, comparison, target, _ = TARGETS[key]
    if comparison is None:  # a figure without a target (batch_caption_images_per_second)
        return True
    if comparison == ">=":
        return value >= target
    return value <= target if comparison == "<=" else value < target


def target_text(key: str) -> str:
    _, comparison, target, _ = TARGETS[key]
    return "none" if target is None else f"{comparison} {target:g}"


def format_table(results: dict) -> str:
    lines = [f"{'what':<58} {'measured':>10} {'target':>10}", "-" * 88]
    for key, (what, comparison, target, unit) in TARGETS.items():
        if key not in results:  # bench --decoders
            continue
        measured, wanted = f"{results[key]:.2f}{unit}", target_text(key) + (unit if target is not None else "")
        verdict = "" if target is None else "met" if meets_target(key, results[key]) else "NOT met"
        lines.append(f"{what:<58} {measured:>10} {wanted:>10}  {verdict}")
    return "\n".join(lines)


def run_bench(quick: bool = False, overrides=(), out: str | Path | None = None, work_dir=None,
              decoders_only: bool = False) -> dict:
    """Runs the ten measurements (``decoders_only``: the three decoder ones); prints the table and
    returns (and writes to ``out``) the JSON."""
    from captioning.config import load_config
    from captioning.files import write_json

    sizes = QUICK if quick else FULL
    overrides = config_overrides(sizes, overrides)
    config = load_config(EXPERIMENT, overrides)
    results, details = {}, {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="captioning-bench-", dir=work_dir) as work:
        work = Path(work)
        if not decoders_only:
            count = max(sizes.extraction_images, sizes.cache_images, sizes.training_batch * (sizes.full_steps + 1))
            paths, source = bench_images(config, work / "images", count, sizes)
            details["images"] = source
        steps = [] if decoders_only else [
            ("feature_extraction_vs_predict", lambda: measure_feature_extraction(config, paths[:sizes.extraction_images], work, sizes)),
            ("cached_training_speedup", lambda: measure_cached_training(config, paths, work, sizes)),
            ("batched_beam_speedup", lambda: measure_batched_beam(
                config, details["feature_extraction_vs_predict"]["feature_shape"], sizes.vocabulary_words + 4, sizes)),
            ("cache_vs_decode_speedup", lambda: measure_image_cache(config, paths[:sizes.cache_images], work, sizes)),
            ("training_peak_memory_gb", lambda: measure_training_memory(
                config, overrides, details["feature_extraction_vs_predict"]["feature_shape"], work, sizes)),
            ("batch_vs_per_call_speedup", lambda: measure_batch_captioning(config, paths, work, sizes)),
        ]
        for key, measure in steps:
            print(f"bench: {TARGETS[key][0]} ...", flush=True)
            step_started = time.perf_counter()
            results[key], details[key] = measure()
            details[key]["seconds"] = round(time.perf_counter() - step_started, 1)
        if not decoders_only:
            results["batch_caption_images_per_second"] = details["batch_vs_per_call_speedup"]["images_per_second"]
        measure_decoder_epochs(sizes, work, details)
        results["rnn_epoch_seconds"] = details["rnn_epoch_seconds"]["epoch_seconds"]
        results["attention_epoch_seconds"] = details["attention_epoch_seconds"]["epoch_seconds"]
        utilization = details["attention_flops_utilization"]
        results["attention_flops_utilization"] = utilization["step_gflop_per_second"] / utilization["matmul_gflop_per_second"]
    report = {**{key: float(value) for key, value in results.items()},
              "targets": {key: target_text(key) for key in TARGETS if key in results},
              "quick": quick, "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - started, 1),
              "details": details}
    print(format_table(results))
    if out is not None:
        write_json(out, report)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench")
    parser.add_argument("command", choices=["memory-child"])
    parser.add_argument("spec")
    arguments = parser.parse_args(argv)
    memory_child(arguments.spec)


if __name__ == "__main__":
    main()
