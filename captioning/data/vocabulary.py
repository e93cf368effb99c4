"""Caption text <-> token ids.

Captions are lower-cased, stripped of punctuation and split on whitespace (``words``);
the same tokenization feeds BLEU (see ``evaluation/bleu.py``), so what the model learns and what
it is scored on are the same words.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np

from captioning.files import write_json

PAD, START, END, UNKNOWN = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNKNOWN)  # ids 0, 1, 2, 3; 0 is padding everywhere
PAD_ID, START_ID, END_ID, UNKNOWN_ID = range(4)

_NOT_WORD = re.compile(r"[^a-z0-9\s]")


def words(text: str) -> list[str]:
    """``"A dog, running!"`` -> ``["a", "dog", "running"]``: lower case, punctuation removed."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def spaced_words(text: str) -> str:
    """``"A dog, running!"`` -> ``"a dog running"``: the caption text the COCO metrics and CIDEr-D score."""
    return " ".join(words(text))


class Vocabulary:
    """A fixed word list; ids follow SPECIAL_TOKENS then words by falling count."""

    def __init__(self, tokens: list[str]):
        if list(tokens[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {tokens[:4]}")
        self.tokens = list(tokens)
        self.ids = {token: index for index, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, captions: list[str], min_count: int = 1) -> "Vocabulary":
        counts = collections.Counter(word for caption in captions for word in words(caption))
        kept = sorted((word for word, count in counts.items() if count >= min_count), key=lambda word: (-counts[word], word))
        return cls(list(SPECIAL_TOKENS) + kept)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def encode(self, caption: str) -> list[int]:
        """Word ids of one caption, without start/end tokens."""
        return [self.ids.get(word, UNKNOWN_ID) for word in words(caption)]

    def encode_batch(self, captions: list[str], sequence_length: int) -> np.ndarray:
        """(len(captions), sequence_length) int32: <start> words <end> then 0 padding.

        Packing (truncation keeping the end token, padding) is keras-hub's StartEndPacker.
        """
        import tensorflow as tf
        from keras_hub.layers import StartEndPacker

        packer = StartEndPacker(
            sequence_length=sequence_length, start_value=START_ID, end_value=END_ID, pad_value=PAD_ID, dtype="int32"
        )
        ragged = tf.ragged.constant([self.encode(caption) for caption in captions], dtype=tf.int32, ragged_rank=1)
        return np.asarray(packer(ragged), dtype=np.int32)

    def decode(self, token_ids) -> str:
        """Words up to the first <end>; <pad>, <start> and out-of-range ids dropped, <unk> kept."""
        output = []
        for token_id in np.asarray(token_ids).tolist():
            if token_id == END_ID:
                break
            if token_id >= len(SPECIAL_TOKENS) and token_id < self.size:
                output.append(self.tokens[token_id])
            elif token_id == UNKNOWN_ID:
                output.append(UNKNOWN)
        return " ".join(output)

    def save(self, path: str | Path) -> None:
        write_json(path, {"tokens": self.tokens})

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            tokens = json.loads(path.read_text())["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
                raise ValueError("'tokens' must be a list of strings")
            return cls(tokens)
        except (OSError, ValueError, KeyError, TypeError) as error:  # TypeError: JSON that is not an object
            raise ValueError(f"{path}: not a readable vocabulary file ({error})") from None
