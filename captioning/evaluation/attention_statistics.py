"""How peaked an attention decoder's attention is: metrics.json's attention entropy and largest weight.

A decoder whose attention stays uniform over the region grid (entropy log(regions), 3.89
nats for 7 x 7) has learned nothing about where to look; issue 21 asks every attention run
to record how far from uniform it is. The statistics are read from the words the run's own
sampler generates (``Captioner.attention_maps``), on the first ``ATTENTION_IMAGES`` images
of the evaluated split.
"""

from __future__ import annotations

import numpy as np

ATTENTION_IMAGES = 100  # enough for a stable mean (about 1,000 words), a few seconds of decoding


def attention_entropy_and_peak(attention: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """attention: (words, regions), each row summing to 1 -> (entropy in nats (words,), largest weight (words,))."""
    attention = np.asarray(attention, dtype=np.float64).reshape(len(attention), -1)
    logs = np.log(np.where(attention > 0, attention, 1.0))  # 0 log 0 = 0
    return -(attention * logs).sum(axis=-1), attention.max(axis=-1)


def attention_statistics(captioner, paths: list[str], images: int = ATTENTION_IMAGES) -> dict:
    """Mean attention entropy (nats) and mean largest weight over every generated word of the
    first ``images`` paths, beside the uniform attention's entropy; {} without attention."""
    if not captioner.model.decoder.has_attention:
        return {}
    entropies, peaks, regions = [], [], 0
    for path in paths[:images]:
        maps = captioner.attention_maps(path)  # attention: (words, grid_height, grid_width)
        entropy, peak = attention_entropy_and_peak(maps.attention)
        entropies.append(entropy)
        peaks.append(peak)
        regions = int(np.prod(maps.attention.shape[1:]))
    entropies, peaks = np.concatenate(entropies), np.concatenate(peaks)
    return {"attention_entropy": float(entropies.mean()), "attention_max_weight": float(peaks.mean()),
            "attention_uniform_entropy": float(np.log(regions)), "attention_words": int(len(entropies))}
