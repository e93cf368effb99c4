"""What a caption gets right on the shapes data set: colour, shape and spatial words.

The shapes entry of the data set registry offers these as its extra metrics
(``datasets.extra_metrics``); evaluation adds them to BLEU and CIDEr for shapes runs.

BLEU mixes everything; these accuracies say which part of the picture the model reads.
Each is measured against the objects the generator drew (``objects.json``):

- ``colour_accuracy`` / ``shape_accuracy``: on one-object images, whether the caption
  names the object's colour / shape;
- ``relation_accuracy``: on two-object images whose objects have different colours, the
  first "COLOUR SHAPE RELATION a [SIZE] COLOUR SHAPE" phrase of the caption is found, its
  two objects are identified by colour, and the relation word is checked against their
  centroids (the generator's own rule, ``shapes.spatial_relation``). A caption without
  such a phrase, or naming colours the image lacks, counts as wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

from captioning.data.datasets.shapes import COLOURS, RELATIONS, SHAPES, ShapeObject, read_objects, spatial_relation

_WORD_TO_RELATION = {phrase: key for key, phrase in RELATIONS.items()}
_COLOUR = "|".join(COLOURS)
_RELATION_PHRASE = re.compile(
    rf"\b({_COLOUR}) (?:{'|'.join(SHAPES)}) ({'|'.join(RELATIONS.values())}) a (?:\w+ )?({_COLOUR}) (?:{'|'.join(SHAPES)})\b"
)


def relation_is_right(caption: str, objects: list[ShapeObject]) -> bool:
    match = _RELATION_PHRASE.search(caption)
    if match is None:
        return False
    first_colour, relation_words, second_colour = match.groups()
    by_colour = {shape_object.colour: shape_object for shape_object in objects}
    if first_colour == second_colour or first_colour not in by_colour or second_colour not in by_colour:
        return False
    truth = spatial_relation(by_colour[first_colour].centroid, by_colour[second_colour].centroid)
    return _WORD_TO_RELATION[relation_words] == truth


def word_accuracies(captions: dict[str, str], objects: dict[str, list[ShapeObject]]) -> dict:
    """captions: image file name -> generated caption; objects: image file name -> drawn objects."""
    single = [(caption.split(), objects[name][0]) for name, caption in captions.items() if len(objects[name]) == 1]
    pairs = [(caption, objects[name]) for name, caption in captions.items()
             if len(objects[name]) == 2 and objects[name][0].colour != objects[name][1].colour]
    return {
        "colour_accuracy": _mean([shape_object.colour in words for words, shape_object in single]),
        "shape_accuracy": _mean([shape_object.shape in words for words, shape_object in single]),
        "relation_accuracy": _mean([relation_is_right(caption, pair) for caption, pair in pairs]),
        "one_object_images": len(single),
        "two_colour_pair_images": len(pairs),
    }


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def shapes_word_accuracies(data_config, split: str, image_paths: list[str], captions: list[str]) -> dict:
    """The word accuracies of ``captions`` of ``image_paths`` (images of ``split`` under
    ``data_config.root``), against the objects the generator drew there."""
    objects = read_objects(data_config.root, split)
    return word_accuracies({Path(path).name: caption for path, caption in zip(image_paths, captions)}, objects)
