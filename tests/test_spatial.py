"""Word accuracies on shapes captions, against objects whose answer is known."""

from __future__ import annotations

import pytest

from captioning.data.datasets.shapes import ShapeObject
from captioning.data.datasets.shapes_words import relation_is_right, word_accuracies


def shape(colour, shape_name, x, y):
    return ShapeObject(shape=shape_name, colour=colour, size="small", box=(0, 0, 1, 1), centroid=(x, y))


RED_LEFT_OF_BLUE = [shape("red", "circle", 10, 50), shape("blue", "square", 90, 55)]
RED_ABOVE_BLUE = [shape("red", "circle", 50, 10), shape("blue", "square", 55, 90)]


@pytest.mark.parametrize("caption, objects, right", [
    ("a red circle to the left of a blue square", RED_LEFT_OF_BLUE, True),
    ("a blue square to the right of a red circle", RED_LEFT_OF_BLUE, True),
    ("a red circle to the right of a large blue square", RED_LEFT_OF_BLUE, False),
    ("a red circle above a blue square", RED_LEFT_OF_BLUE, False),
    ("a red circle above a small blue square", RED_ABOVE_BLUE, True),
    ("a blue square below a red circle", RED_ABOVE_BLUE, True),
    ("a green circle above a blue square", RED_ABOVE_BLUE, False),  # a colour the image lacks
    ("two shapes a red circle and a blue square", RED_ABOVE_BLUE, False),  # no relation phrase
])
def test_relation_word_is_checked_against_the_centroids(caption, objects, right):
    assert relation_is_right(caption, objects) is right


def test_word_accuracies_count_each_kind_of_image():
    objects = {
        "a.png": [shape("red", "circle", 1, 1)],
        "b.png": [shape("green", "triangle", 1, 1)],
        "c.png": RED_LEFT_OF_BLUE,
        "d.png": RED_ABOVE_BLUE,
        "e.png": [shape("red", "circle", 1, 1), shape("red", "square", 9, 9)],  # same colours: not scored
    }
    captions = {
        "a.png": "a small red circle",
        "b.png": "a green square",
        "c.png": "a red circle to the left of a blue square",
        "d.png": "a red circle below a blue square",
        "e.png": "anything",
    }
    accuracies = word_accuracies(captions, objects)
    assert accuracies["colour_accuracy"] == 1.0
    assert accuracies["shape_accuracy"] == 0.5
    assert accuracies["relation_accuracy"] == 0.5
    assert accuracies["one_object_images"] == 2 and accuracies["two_colour_pair_images"] == 2
