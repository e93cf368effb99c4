"""The embedded "shapes" data set: coloured shapes on a plain background, five captions each.

It needs no download, so a fresh machine can train and test in minutes, yet the caption
depends on the image (see ``shapes-dataset.md`` in the specs). Layout under ``root``:

    root/train/images/train_00000.png ...   RGB PNGs, image_size x image_size
    root/train/captions.csv                 header image,caption; five rows per image
    root/train/objects.json                 what each image shows (shape, colour, size,
                                            centroid, box), for spatial-word metrics
    root/train/manifest.json                generator parameters, written last: a split
                                            without it (or with other parameters) is
                                            regenerated
    (the same for val and test)

Everything is drawn from ``numpy.random.default_rng([split_seed, image_index])``, so the
same seed gives byte-identical files, and the first images of a split do not change when
the split grows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy
from PIL import Image, ImageDraw

from captioning.data.datasets import SPLITS, CaptionedImage, DatasetError
from captioning.data.datasets.csv_source import read_caption_csv
from captioning.files import is_temporary, write_text

# Bump when the drawing or the captions change, so that old folders are regenerated.
GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle")
# Saturated base colours: each is at least ~170 away from any light background
# (channels 190..255) in some channel, so a small CNN separates object from background.
COLOURS = {
    "red": (210, 35, 35),
    "green": (35, 150, 45),
    "blue": (35, 65, 210),
    "yellow": (225, 185, 10),
}
# Each channel of an object's colour moves by up to this much, so colour words name a
# range of colours rather than one exact value.
COLOUR_JITTER = 20
# Size word -> range of the object's side as a fraction of the image side.
SIZES = {"small": (0.15, 0.22), "large": (0.30, 0.40)}
# Background channels are drawn from this inclusive range: always light.
BACKGROUND_RANGE = (190, 255)
# Uniform noise added to every pixel (+/- this much), so no two images are identical.
NOISE_AMPLITUDE = 6
# Pixels kept free along the image border (the corner pixels always show background).
BORDER_PIXELS = 2
# Background pixels at least between the bounding boxes of two objects.
OBJECT_GAP_PIXELS = 4
# Layouts whose spatial word would be a near tie are redrawn: for two objects the
# horizontal and vertical centroid gaps must differ by at least this fraction of the side,
# for three objects their centroid x values must differ by that much, so that "left of"
# versus "above" and the left-to-right order are visible in the image.
AMBIGUITY_MARGIN = 0.05
# Random positions tried per object before the sizes of the whole image are redrawn,
# and how many times they are redrawn before giving up.
PLACEMENT_ATTEMPTS = 100
LAYOUT_ATTEMPTS = 100
# Below this side the small objects would be only a few pixels wide.
MINIMUM_IMAGE_SIZE = 32
# Fixed PNG parameters (and no metadata) keep the files byte-identical for one seed.
# Level 1 encodes about twice as fast as the default 6; the pixel noise leaves level 6
# only ~13 % smaller files.
PNG_COMPRESS_LEVEL = 1

# Spatial relation of an object relative to another, by centroids (y grows downwards).
RELATIONS = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE_RELATIONS = {"left": "right", "right": "left", "above": "below", "below": "above"}

# Five fixed templates per object count, all used for every image in this order: the
# five references differ in wording as Flickr8k's do, yet the language stays learnable.
ONE_OBJECT_TEMPLATES = (
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a plain background",
    "there is one {colour} {shape}",
    "a {colour} {shape}",
    "one {size} {colour} {shape}",
)
# a = the first object placed, b = the second; {relation} says where a is relative to b.
TWO_OBJECT_TEMPLATES = (
    "a {colour_a} {shape_a} {relation} a {colour_b} {shape_b}",
    "a {size_a} {colour_a} {shape_a} {relation} a {size_b} {colour_b} {shape_b}",
    "a {colour_b} {shape_b} {inverse_relation} a {colour_a} {shape_a}",
    "two shapes a {colour_a} {shape_a} and a {colour_b} {shape_b}",
    "there are two shapes a {colour_a} {shape_a} {relation} a {colour_b} {shape_b}",
)
# 1, 2, 3 = the objects from left to right by centroid x.
THREE_OBJECT_TEMPLATES = (
    "three shapes a {colour_1} {shape_1} a {colour_2} {shape_2} and a {colour_3} {shape_3}",
    "a {colour_1} {shape_1} a {colour_2} {shape_2} and a {colour_3} {shape_3}",
    "there are three shapes a {colour_1} {shape_1} a {colour_2} {shape_2} and a {colour_3} {shape_3}",
    "from left to right a {colour_1} {shape_1} a {colour_2} {shape_2} and a {colour_3} {shape_3}",
    "three shapes on a plain background a {size_1} {colour_1} {shape_1} "
    "a {size_2} {colour_2} {shape_2} and a {size_3} {colour_3} {shape_3}",
)
CAPTIONS_PER_IMAGE = 5

MANIFEST_NAME = "manifest.json"
CAPTIONS_NAME = "captions.csv"
OBJECTS_NAME = "objects.json"
IMAGES_DIR_NAME = "images"


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One drawn object. Pixel coordinates, x to the right, y downwards."""

    shape: str  # one of SHAPES
    colour: str  # a key of COLOURS
    size: str  # a key of SIZES
    box: tuple[int, int, int, int]  # (left, top, right, bottom), right and bottom inclusive
    centroid: tuple[float, float]  # (x, y) centre of mass of the drawn shape

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "centroid": [round(value, 2) for value in self.centroid],
            "box": list(self.box),
        }

    @classmethod
    def from_dict(cls, values: dict) -> ShapeObject:
        return cls(
            shape=values["shape"],
            colour=values["colour"],
            size=values["size"],
            box=tuple(values["box"]),
            centroid=tuple(values["centroid"]),
        )


def spatial_relation(first_centroid, second_centroid) -> str:
    """Where the first centroid lies relative to the second: a key of RELATIONS.

    "left"/"right" when the horizontal gap is larger than the vertical one, otherwise
    "above"/"below" (y grows downwards, so a smaller y is above).
    """
    horizontal_gap = first_centroid[0] - second_centroid[0]
    vertical_gap = first_centroid[1] - second_centroid[1]
    if abs(horizontal_gap) > abs(vertical_gap):
        return "left" if horizontal_gap < 0 else "right"
    return "above" if vertical_gap < 0 else "below"


def make_captions(objects: list[ShapeObject]) -> list[str]:
    """The five reference captions of an image showing ``objects`` (in placement order)."""
    if len(objects) == 1:
        (only,) = objects
        fields = {"size": only.size, "colour": only.colour, "shape": only.shape}
        templates = ONE_OBJECT_TEMPLATES
    elif len(objects) == 2:
        first, second = objects
        relation = spatial_relation(first.centroid, second.centroid)
        fields = {
            "size_a": first.size, "colour_a": first.colour, "shape_a": first.shape,
            "size_b": second.size, "colour_b": second.colour, "shape_b": second.shape,
            "relation": RELATIONS[relation],
            "inverse_relation": RELATIONS[INVERSE_RELATIONS[relation]],
        }
        templates = TWO_OBJECT_TEMPLATES
    elif len(objects) == 3:
        left_to_right = sorted(objects, key=lambda shape_object: shape_object.centroid[0])
        fields = {}
        for position, shape_object in enumerate(left_to_right, start=1):
            fields[f"size_{position}"] = shape_object.size
            fields[f"colour_{position}"] = shape_object.colour
            fields[f"shape_{position}"] = shape_object.shape
        templates = THREE_OBJECT_TEMPLATES
    else:
        raise ValueError(f"shapes captions describe 1 to 3 objects, got {len(objects)}")
    return [template.format(**fields) for template in templates]


def split_seed(base_seed: int, split: str) -> int:
    """The seed of one split, derived from the data set's base seed (``shapes_seed``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if base_seed < 0:
        raise ValueError(f"shapes_seed must be >= 0, got {base_seed}")
    return int(numpy.random.SeedSequence([base_seed, SPLITS.index(split)]).generate_state(1)[0])


def image_name(split: str, index: int) -> str:
    """File name of image ``index`` of ``split`` inside ``root/split/images``."""
    return f"{split}_{index:05d}.png"


def _make_object(shape: str, colour: str, size: str, left: int, top: int, side: int) -> ShapeObject:
    right, bottom = left + side - 1, top + side - 1
    centre_x = (left + right) / 2
    if shape == "triangle":  # apex up: the centre of mass is two thirds of the way down
        centroid = (centre_x, top + 2 * (bottom - top) / 3)
    else:
        centroid = (centre_x, (top + bottom) / 2)
    return ShapeObject(shape, colour, size, (left, top, right, bottom), centroid)


def _boxes_apart(first_box, second_box, gap: int) -> bool:
    """True when at least ``gap`` pixels separate the boxes horizontally or vertically."""
    first_left, first_top, first_right, first_bottom = first_box
    second_left, second_top, second_right, second_bottom = second_box
    return (
        first_right + gap < second_left
        or second_right + gap < first_left
        or first_bottom + gap < second_top
        or second_bottom + gap < first_top
    )


def _fits(candidate: ShapeObject, placed: list[ShapeObject], object_count: int, image_size: int) -> bool:
    """True when ``candidate`` keeps OBJECT_GAP_PIXELS from every placed object and its
    spatial word (or left-to-right rank) is not a near tie (AMBIGUITY_MARGIN)."""
    margin = AMBIGUITY_MARGIN * image_size
    for other in placed:
        if not _boxes_apart(candidate.box, other.box, OBJECT_GAP_PIXELS):
            return False
        horizontal_gap = abs(candidate.centroid[0] - other.centroid[0])
        vertical_gap = abs(candidate.centroid[1] - other.centroid[1])
        if object_count == 2 and abs(horizontal_gap - vertical_gap) < margin:
            return False
        if object_count == 3 and horizontal_gap < margin:
            return False
    return True


def _place_objects(rng, kinds: list[tuple[str, str]], size_words: list[str], image_size: int):
    """Objects at random non-overlapping positions, or None when one does not fit."""
    placed: list[ShapeObject] = []
    for (shape, colour), size in zip(kinds, size_words):
        low, high = SIZES[size]
        side = int(round(rng.uniform(low, high) * image_size))
        highest_corner = image_size - BORDER_PIXELS - side
        for _ in range(PLACEMENT_ATTEMPTS):
            left, top = (int(value) for value in rng.integers(BORDER_PIXELS, highest_corner + 1, size=2))
            candidate = _make_object(shape, colour, size, left, top, side)
            if _fits(candidate, placed, len(kinds), image_size):
                placed.append(candidate)
                break
        else:
            return None
    return placed


def sample_objects(rng: numpy.random.Generator, image_size: int) -> list[ShapeObject]:
    """1 to 3 objects with distinct (colour, shape) pairs, placed without overlap.

    When an object finds no free place in PLACEMENT_ATTEMPTS tries (three large objects
    on a small image), the sizes are drawn again, up to LAYOUT_ATTEMPTS times.
    """
    object_count = int(rng.integers(1, 4))
    all_kinds = [(shape, colour) for shape in SHAPES for colour in COLOURS]
    kinds = [all_kinds[index] for index in rng.choice(len(all_kinds), size=object_count, replace=False)]
    size_names = list(SIZES)
    for _ in range(LAYOUT_ATTEMPTS):
        size_words = [size_names[index] for index in rng.integers(0, len(size_names), size=object_count)]
        objects = _place_objects(rng, kinds, size_words, image_size)
        if objects is not None:
            return objects
    raise ValueError(f"could not place {object_count} shapes on a {image_size} px image; use a larger image size")


def draw_image(rng: numpy.random.Generator, objects: list[ShapeObject], image_size: int) -> Image.Image:
    """An RGB image: light random background, the objects in jittered colours, pixel noise."""
    background = tuple(int(value) for value in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for shape_object in objects:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        fill = tuple(int(value) for value in numpy.clip(numpy.array(COLOURS[shape_object.colour]) + jitter, 0, 255))
        left, top, right, bottom = shape_object.box
        if shape_object.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape_object.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=fill)
    noise = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(image_size, image_size, 3))
    pixels = numpy.clip(numpy.asarray(image, dtype=numpy.int16) + noise, 0, 255).astype(numpy.uint8)
    return Image.fromarray(pixels)  # (image_size, image_size, 3) uint8 -> RGB


def _manifest(split: str, count: int, image_size: int, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "count": count,
        "image_size": image_size,
        "seed": seed,
    }


def generate_split(root: str | Path, split: str, count: int, image_size: int, seed: int) -> Path:
    """Draws ``count`` images of one split under ``root/split`` and returns that folder.

    Writes the PNGs, ``captions.csv`` (image names relative to ``images/``), ``objects.json``
    and, last, ``manifest.json``, which marks the split complete. Existing files with the
    same names are overwritten; ``ensure_generated`` clears a stale split first.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if count < 0:
        raise ValueError(f"image count must be >= 0, got {count}")
    if image_size < MINIMUM_IMAGE_SIZE:
        raise ValueError(f"shapes image size must be at least {MINIMUM_IMAGE_SIZE} px, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    split_dir = Path(root) / split
    images_dir = split_dir / IMAGES_DIR_NAME
    images_dir.mkdir(parents=True, exist_ok=True)

    start_time = time.perf_counter()
    show_counter = sys.stderr.isatty()
    counter_step = max(1, count // 20)
    captions_text = io.StringIO()
    captions_writer = csv.writer(captions_text, lineterminator="\n")
    captions_writer.writerow(["image", "caption"])
    object_records = []
    for index in range(count):
        rng = numpy.random.default_rng([seed, index])
        objects = sample_objects(rng, image_size)
        image = draw_image(rng, objects, image_size)
        name = image_name(split, index)
        image.save(images_dir / name, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        captions_writer.writerows([name, caption] for caption in make_captions(objects))
        object_records.append({"image": name, "objects": [shape_object.to_dict() for shape_object in objects]})
        if show_counter and ((index + 1) % counter_step == 0 or index + 1 == count):
            print(f"\rshapes: {split} {index + 1}/{count}", end="", file=sys.stderr, flush=True)

    write_text(split_dir / CAPTIONS_NAME, captions_text.getvalue())
    write_text(split_dir / OBJECTS_NAME, json.dumps(object_records, indent=1) + "\n")
    write_text(
        split_dir / MANIFEST_NAME, json.dumps(_manifest(split, count, image_size, seed), indent=2) + "\n"
    )
    seconds = time.perf_counter() - start_time
    line_start = "\r" if show_counter else ""  # overwrite the counter
    print(f"{line_start}shapes: wrote {count} {split} images to {split_dir} in {seconds:.1f} s", file=sys.stderr)
    return split_dir


def _split_is_complete(split_dir: Path, expected_manifest: dict) -> bool:
    try:
        manifest = json.loads((split_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest != expected_manifest:
        return False
    if not (split_dir / CAPTIONS_NAME).is_file() or not (split_dir / OBJECTS_NAME).is_file():
        return False
    images_dir = split_dir / IMAGES_DIR_NAME
    split = expected_manifest["split"]
    return all((images_dir / image_name(split, index)).is_file() for index in range(expected_manifest["count"]))


def _remove_generated_split(split_dir: Path, split: str):
    """Deletes a stale split folder, refusing when it holds files the generator did not write."""
    generated_files = {CAPTIONS_NAME, OBJECTS_NAME, MANIFEST_NAME}
    generated_image = re.compile(rf"{re.escape(split)}_\d+\.png")
    foreign_entries = []
    for entry in split_dir.iterdir():
        if entry.name == IMAGES_DIR_NAME and entry.is_dir():
            foreign_entries += [image for image in entry.iterdir() if not generated_image.fullmatch(image.name)]
        elif not (entry.is_file() and (entry.name in generated_files or is_temporary(entry.name))):
            foreign_entries.append(entry)
    if foreign_entries:
        raise DatasetError(
            f"{split_dir}: refusing to delete this stale shapes split because it holds {foreign_entries[0]}, "
            "which the shapes generator did not write; move it away or choose another data.root"
        )
    shutil.rmtree(split_dir)


def ensure_generated(data_config) -> Path:
    """Generates every split under ``data_config.root`` that is missing, incomplete or stale.

    data_config: ``captioning.config.DataConfig`` (shapes_image_size, shapes_*_size,
    shapes_seed). A split is complete when its manifest matches these parameters and all
    its files exist; otherwise its folder is deleted and drawn again. Returns the root.
    """
    root = Path(data_config.root)
    counts = {
        "train": data_config.shapes_train_size,
        "val": data_config.shapes_val_size,
        "test": data_config.shapes_test_size,
    }
    for split in SPLITS:
        seed = split_seed(data_config.shapes_seed, split)
        expected_manifest = _manifest(split, counts[split], data_config.shapes_image_size, seed)
        split_dir = root / split
        if _split_is_complete(split_dir, expected_manifest):
            continue
        if split_dir.exists():
            _remove_generated_split(split_dir, split)
        generate_split(root, split, counts[split], data_config.shapes_image_size, seed)
    return root


def read_objects(root: str | Path, split: str) -> dict[str, list[ShapeObject]]:
    """Image file name -> the objects it shows (placement order), from ``objects.json``."""
    objects_path = Path(root) / split / OBJECTS_NAME
    if not objects_path.is_file():
        raise DatasetError(f"{objects_path}: shapes object list not found; generate the split first")
    try:
        records = json.loads(objects_path.read_text(encoding="utf-8"))
        return {
            record["image"]: [ShapeObject.from_dict(values) for values in record["objects"]] for record in records
        }
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{objects_path}: malformed object list: {error!r}") from None


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """Generates the data set if needed, then reads one split's captions (registered as "shapes")."""
    split_dir = ensure_generated(data_config) / split
    return read_caption_csv(split_dir / CAPTIONS_NAME, split_dir / IMAGES_DIR_NAME)
