"""Tests for captioning.data.vocabulary: tokenization, word list order, packing, decoding, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioning.data.vocabulary import (
    END_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    START_ID,
    UNKNOWN,
    UNKNOWN_ID,
    Vocabulary,
    words,
)

# b x3, c x2, z x2, a x1, d x1 (once "B," with capital and comma: tokenized to "b").
CAPTIONS = ["b a z", "z B, c", "b c d"]


@pytest.fixture
def vocabulary() -> Vocabulary:
    return Vocabulary.build(["a dog runs on the grass", "a dog sits", "the cat sits on a mat"])


# ---- words ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A dog, running!", ["a", "dog", "running"]),
        ("THE Cat.", ["the", "cat"]),
        ("3 dogs and 2nd place", ["3", "dogs", "and", "2nd", "place"]),  # digits kept
        ("  spaced\tout\nover lines  ", ["spaced", "out", "over", "lines"]),
        ("", []),
        ("?!.,", []),
    ],
)
def test_words_lower_cases_strips_punctuation_and_keeps_digits(text, expected):
    assert words(text) == expected


def test_words_splits_at_apostrophes_so_dogs_becomes_dog_and_s():
    assert words("the dog's ball") == ["the", "dog", "s", "ball"]
    assert words("don't") == ["don", "t"]


def test_words_splits_at_hyphens_and_underscores():
    assert words("an x-ray of a well_known dog") == ["an", "x", "ray", "of", "a", "well", "known", "dog"]


def test_words_drops_non_ascii_letters_so_cafe_with_accent_becomes_caf():
    # Only a-z and 0-9 survive; an accented letter is a separator like punctuation.
    assert words("Café naïve") == ["caf", "na", "ve"]


# ---- building -------------------------------------------------------------------------


def test_build_puts_special_tokens_first_then_falling_count_then_alphabetical():
    vocabulary = Vocabulary.build(CAPTIONS)
    # b (3); c and z (2 each, alphabetical although z comes first); a and d (1 each).
    assert vocabulary.tokens == list(SPECIAL_TOKENS) + ["b", "c", "z", "a", "d"]
    assert vocabulary.size == 9
    assert vocabulary.ids["b"] == 4 and vocabulary.ids["d"] == 8


def test_special_token_ids_are_fixed():
    assert (PAD_ID, START_ID, END_ID, UNKNOWN_ID) == (0, 1, 2, 3)
    assert SPECIAL_TOKENS == ("<pad>", "<start>", "<end>", "<unk>")


def test_build_with_min_count_drops_rare_words_which_encode_as_unknown():
    vocabulary = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocabulary.tokens == list(SPECIAL_TOKENS) + ["b", "c", "z"]
    # a (count 1), d (count 1) and q (never seen) are all <unk> = 3.
    assert vocabulary.encode("a B d q z") == [3, 4, 3, 3, 6]


def test_build_of_no_captions_has_only_the_special_tokens():
    assert Vocabulary.build([]).tokens == list(SPECIAL_TOKENS)


def test_encode_gives_word_ids_without_start_or_end(vocabulary):
    ids = vocabulary.encode("A dog sits.")
    assert ids == [vocabulary.ids["a"], vocabulary.ids["dog"], vocabulary.ids["sits"]]
    assert START_ID not in ids and END_ID not in ids


# ---- packing a batch (keras-hub StartEndPacker) ---------------------------------------


def test_encode_batch_adds_start_and_end_then_pads_with_zero(vocabulary):
    a, dog, sits, cat = (vocabulary.ids[word] for word in ("a", "dog", "sits", "cat"))
    packed = vocabulary.encode_batch(["a dog sits", "cat", ""], sequence_length=6)
    assert packed.dtype == np.int32
    np.testing.assert_array_equal(
        packed,
        [
            [1, a, dog, sits, 2, 0],
            [1, cat, 2, 0, 0, 0],
            [1, 2, 0, 0, 0, 0],  # an empty caption is still <start> <end>
        ],
    )


def test_encode_batch_fits_a_caption_of_exactly_sequence_length_minus_two(vocabulary):
    a, dog, sits = (vocabulary.ids[word] for word in ("a", "dog", "sits"))
    packed = vocabulary.encode_batch(["a dog sits"], sequence_length=5)
    np.testing.assert_array_equal(packed, [[1, a, dog, sits, 2]])


def test_encode_batch_truncates_long_captions_keeping_the_first_words_and_end_last(vocabulary):
    # StartEndPacker cuts the words to sequence_length - 2 and then appends <end>, so a
    # truncated caption still ends with <end> (the decoder learns to stop).
    first_three = [vocabulary.ids[word] for word in ("a", "dog", "runs")]
    packed = vocabulary.encode_batch(["a dog runs on the grass", "a dog"], sequence_length=5)
    assert packed.shape == (2, 5)
    np.testing.assert_array_equal(packed[0], [1, *first_three, 2])
    np.testing.assert_array_equal(packed[1], [1, vocabulary.ids["a"], vocabulary.ids["dog"], 2, 0])


def test_encode_batch_writes_unknown_words_as_unknown_id(vocabulary):
    packed = vocabulary.encode_batch(["a zebra"], sequence_length=5)
    np.testing.assert_array_equal(packed, [[1, vocabulary.ids["a"], UNKNOWN_ID, 2, 0]])


# ---- decoding -------------------------------------------------------------------------


def test_decode_stops_at_the_first_end_token(vocabulary):
    a, dog, sits = (vocabulary.ids[word] for word in ("a", "dog", "sits"))
    assert vocabulary.decode([1, a, dog, 2, sits, sits]) == "a dog"


def test_decode_drops_pad_and_start_but_keeps_unknown_as_text(vocabulary):
    a, dog = vocabulary.ids["a"], vocabulary.ids["dog"]
    assert vocabulary.decode([1, a, 0, UNKNOWN_ID, 1, dog, 0, 0]) == f"a {UNKNOWN} dog"


def test_decode_drops_ids_outside_the_vocabulary(vocabulary):
    dog = vocabulary.ids["dog"]
    assert vocabulary.decode([dog, vocabulary.size, -1, 10_000, dog]) == "dog dog"


def test_decode_of_encode_batch_gives_the_caption_words_back(vocabulary):
    caption = "The cat, sits on a mat!"
    packed = vocabulary.encode_batch([caption], sequence_length=12)
    assert vocabulary.decode(packed[0]) == " ".join(words(caption))


def test_decode_of_nothing_is_empty(vocabulary):
    assert vocabulary.decode([]) == ""
    assert vocabulary.decode(np.array([2, 4, 5])) == ""


# ---- files ----------------------------------------------------------------------------


def test_save_then_load_gives_the_same_vocabulary(vocabulary, tmp_path):
    path = tmp_path / "vocabulary.json"
    vocabulary.save(path)
    assert json.loads(path.read_text()) == {"tokens": vocabulary.tokens}
    loaded = Vocabulary.load(path)
    assert loaded.tokens == vocabulary.tokens
    assert loaded.ids == vocabulary.ids
    assert loaded.encode("a cat runs on grass") == vocabulary.encode("a cat runs on grass")


@pytest.mark.parametrize(
    "content",
    [
        "",  # empty file
        "{not json",
        '{"words": ["<pad>"]}',  # no tokens key
        '["<pad>", "<start>", "<end>", "<unk>"]',  # JSON, but not an object
        '{"tokens": 5}',
        '{"tokens": "<pad><start><end><unk>"}',
        '{"tokens": ["<pad>", "<start>", "<end>", "<unk>", 7]}',  # a token that is not a string
        '{"tokens": ["a", "b"]}',  # special tokens missing
    ],
)
def test_corrupt_vocabulary_file_raises_value_error_naming_the_file(content, tmp_path):
    path = tmp_path / "vocabulary.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        Vocabulary.load(path)
    assert str(path) in str(error.value)


def test_missing_vocabulary_file_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(ValueError) as error:
        Vocabulary.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        ["a", "b", "c", "d"],
        ["<start>", "<pad>", "<end>", "<unk>", "a"],  # right tokens, wrong order
        ["<pad>", "<start>", "<end>"],  # <unk> missing
    ],
)
def test_token_list_not_starting_with_the_special_tokens_raises(tokens):
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(tokens)
