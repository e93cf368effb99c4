"""What every measurement here shares: the best of several timings, a step-end timer for
``model.fit``, and memory-mapped random features shaped like a feature cache's. Used by
``make bench`` (bench.py, decoder_bench.py) and ``make rehearsal`` (coco_rehearsal.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def random_features(path: Path, count: int, feature_shape, seed: int = 0) -> np.ndarray:
    """A memory-mapped (count, regions, channels) float16 file of non-negative features, as
    a feature cache holds them (ReLU outputs), written in chunks so it never sits in memory."""
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(count, *feature_shape))
    rng = np.random.default_rng(seed)
    for start in range(0, count, 256):
        chunk = features[start:start + 256]
        chunk[:] = np.abs(rng.standard_normal(chunk.shape, dtype=np.float32))
    features.flush()
    del features
    return np.load(path, mmap_mode="r", allow_pickle=False)


def best_seconds(function, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``function()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def step_end_timer():
    """A Keras callback whose ``step_ends`` lists the time.perf_counter() at the end of every training step."""
    import keras

    class StepEndTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step_ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.step_ends.append(time.perf_counter())

    return StepEndTimer()
