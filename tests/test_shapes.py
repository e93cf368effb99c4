"""The embedded shapes data set and the caption-source registry (captioning.data.datasets)."""

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy
import pytest
from PIL import Image

from captioning.config import DataConfig
from captioning.data.datasets import DATASETS, CaptionedImage, DatasetError, load_split, shapes
from captioning.data.datasets.csv_source import read_caption_csv

IMAGE_COUNT = 20
IMAGE_SIZE = 128
CAPTION_PATTERN = re.compile(r"[a-z]+( [a-z]+)*")


def small_config(root) -> DataConfig:
    return DataConfig(
        root=str(root),
        shapes_image_size=IMAGE_SIZE,
        shapes_train_size=IMAGE_COUNT,
        shapes_val_size=IMAGE_COUNT,
        shapes_test_size=IMAGE_COUNT,
        shapes_seed=7,
    )


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory) -> Path:
    """One small generated data set shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("shapes")
    shapes.ensure_generated(small_config(root))
    return root


@pytest.fixture(scope="module")
def train_split(generated_root):
    """(captions by image name, objects by image name) of the generated train split."""
    captioned_images = read_caption_csv(generated_root / "train" / "captions.csv", generated_root / "train" / "images")
    captions = {Path(item.image_path).name: item.captions for item in captioned_images}
    return captions, shapes.read_objects(generated_root, "train")


# ---- generator ----------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = shapes.generate_split(tmp_path / "first", "train", count=10, image_size=64, seed=3)
    second = shapes.generate_split(tmp_path / "second", "train", count=10, image_size=64, seed=3)
    other = shapes.generate_split(tmp_path / "other", "train", count=10, image_size=64, seed=4)
    assert file_hashes(first) == file_hashes(second)
    first_hashes, other_hashes = file_hashes(first), file_hashes(other)
    assert first_hashes.keys() == other_hashes.keys()
    assert all(first_hashes[name] != other_hashes[name] for name in first_hashes if name.endswith(".png"))
    assert first_hashes["captions.csv"] != other_hashes["captions.csv"]


def test_a_longer_split_starts_with_the_same_images(tmp_path):
    short = shapes.generate_split(tmp_path / "short", "val", count=3, image_size=64, seed=5)
    long = shapes.generate_split(tmp_path / "long", "val", count=6, image_size=64, seed=5)
    for index in range(3):
        name = f"images/val_{index:05d}.png"
        assert file_hashes(short)[name] == file_hashes(long)[name]


def test_images_are_rgb_squares_on_a_light_background(generated_root, train_split):
    captions, _ = train_split
    assert len(captions) == IMAGE_COUNT
    backgrounds = set()
    for name in captions:
        with Image.open(generated_root / "train" / "images" / name) as image:
            assert image.mode == "RGB"
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            pixels = numpy.asarray(image)  # (128, 128, 3) uint8
        corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]  # objects keep clear of the border
        assert corners.min() >= shapes.BACKGROUND_RANGE[0] - shapes.NOISE_AMPLITUDE
        backgrounds.add(tuple(corners[0] // 8))
    assert len(backgrounds) > 1  # the background colour varies between images


def test_five_lower_case_captions_without_punctuation(train_split):
    captions, _ = train_split
    for image_captions in captions.values():
        assert len(image_captions) == shapes.CAPTIONS_PER_IMAGE
        assert len(set(image_captions)) == shapes.CAPTIONS_PER_IMAGE
        for caption in image_captions:
            assert CAPTION_PATTERN.fullmatch(caption), caption


def test_every_object_count_and_template_is_used(train_split):
    captions, objects = train_split
    assert {len(image_objects) for image_objects in objects.values()} == {1, 2, 3}
    templates = {1: shapes.ONE_OBJECT_TEMPLATES, 2: shapes.TWO_OBJECT_TEMPLATES, 3: shapes.THREE_OBJECT_TEMPLATES}
    for name, image_objects in objects.items():
        first_words = [template.split()[0] for template in templates[len(image_objects)]]
        assert [caption.split()[0] for caption in captions[name]] == first_words


def test_objects_never_overlap_and_stay_inside_the_image(train_split):
    _, objects = train_split
    gap = shapes.OBJECT_GAP_PIXELS
    for name, image_objects in objects.items():
        for shape_object in image_objects:
            left, top, right, bottom = shape_object.box
            assert 0 <= left < right < IMAGE_SIZE and 0 <= top < bottom < IMAGE_SIZE
        for index, first in enumerate(image_objects):
            for second in image_objects[index + 1:]:
                horizontal_space = max(second.box[0] - first.box[2], first.box[0] - second.box[2]) - 1
                vertical_space = max(second.box[1] - first.box[3], first.box[1] - second.box[3]) - 1
                assert max(horizontal_space, vertical_space) >= gap, (name, first, second)


def test_object_sizes_match_their_size_words(train_split):
    _, objects = train_split
    for image_objects in objects.values():
        for shape_object in image_objects:
            side = (shape_object.box[2] - shape_object.box[0] + 1) / IMAGE_SIZE
            low, high = shapes.SIZES[shape_object.size]
            assert low - 0.01 <= side <= high + 0.01


def test_relation_words_agree_with_centroids(train_split):
    captions, objects = train_split
    checked = 0
    for name, image_objects in objects.items():
        if len(image_objects) != 2:
            continue
        first, second = image_objects
        horizontal_gap = first.centroid[0] - second.centroid[0]
        vertical_gap = first.centroid[1] - second.centroid[1]
        if abs(horizontal_gap) > abs(vertical_gap):
            expected, inverse = ("to the left of", "to the right of")
            if horizontal_gap > 0:
                expected, inverse = inverse, expected
        else:
            expected, inverse = ("above", "below")
            if vertical_gap > 0:
                expected, inverse = inverse, expected
        first_words, second_words = f"{first.colour} {first.shape}", f"{second.colour} {second.shape}"
        image_captions = captions[name]
        assert f"{first_words} {expected} a {second_words}" in image_captions[0]
        assert f"{first_words} {expected} a {second.size} {second_words}" in image_captions[1]
        assert f"{second_words} {inverse} a {first_words}" in image_captions[2]
        assert f"{first_words} {expected} a {second_words}" in image_captions[4]
        checked += 1
    assert checked > 0


def test_colour_and_shape_words_match_the_objects(train_split):
    colour_shape = re.compile(rf"({'|'.join(shapes.COLOURS)}) ({'|'.join(shapes.SHAPES)})")
    captions, objects = train_split
    for name, image_objects in objects.items():
        left_to_right = sorted(image_objects, key=lambda shape_object: shape_object.centroid[0])
        for caption in captions[name]:
            mentioned = colour_shape.findall(caption)
            expected = [(shape_object.colour, shape_object.shape) for shape_object in image_objects]
            assert sorted(mentioned) == sorted(expected), caption
            if len(image_objects) == 3:
                assert mentioned == [(item.colour, item.shape) for item in left_to_right], caption
        if len(image_objects) == 1:
            assert image_objects[0].size in captions[name][0]


def test_the_image_shows_each_object_in_its_colour(generated_root, train_split):
    _, objects = train_split
    for name, image_objects in objects.items():
        pixels = numpy.asarray(Image.open(generated_root / "train" / "images" / name), dtype=int)
        for shape_object in image_objects:
            x, y = (int(round(value)) for value in shape_object.centroid)
            distances = {
                colour: numpy.abs(pixels[y, x] - numpy.array(rgb)).sum() for colour, rgb in shapes.COLOURS.items()
            }
            assert min(distances, key=distances.get) == shape_object.colour, (name, shape_object)


def test_splits_differ(generated_root):
    split_images = {
        split: {hashlib.sha256(path.read_bytes()).hexdigest() for path in (generated_root / split / "images").iterdir()}
        for split in ("train", "val", "test")
    }
    assert not split_images["train"] & split_images["val"]
    assert not split_images["train"] & split_images["test"]
    assert not split_images["val"] & split_images["test"]
    assert len({shapes.split_seed(7, split) for split in ("train", "val", "test")}) == 3


def test_make_captions_for_hand_placed_objects():
    red_circle = shapes.ShapeObject("circle", "red", "small", (10, 50, 29, 69), (19.5, 59.5))
    blue_square = shapes.ShapeObject("square", "blue", "large", (70, 40, 109, 79), (89.5, 59.5))
    captions = shapes.make_captions([red_circle, blue_square])
    assert captions[0] == "a red circle to the left of a blue square"
    assert captions[1] == "a small red circle to the left of a large blue square"
    assert captions[2] == "a blue square to the right of a red circle"
    assert shapes.spatial_relation((50, 10), (52, 90)) == "above"
    assert shapes.RELATIONS[shapes.spatial_relation((50, 90), (52, 10))] == "below"
    with pytest.raises(ValueError, match="1 to 3 objects"):
        shapes.make_captions([])


# ---- regeneration -------------------------------------------------------------------


def test_complete_splits_are_not_regenerated(tmp_path):
    config = small_config(tmp_path)
    shapes.ensure_generated(config)
    manifest = tmp_path / "train" / "manifest.json"
    modified = manifest.stat().st_mtime_ns
    shapes.ensure_generated(config)
    assert manifest.stat().st_mtime_ns == modified


@pytest.mark.parametrize("damage", ["delete manifest", "delete image", "delete captions", "add stale image"])
def test_interrupted_generation_is_detected_and_redone(tmp_path, damage):
    config = small_config(tmp_path)
    shapes.ensure_generated(config)
    before = file_hashes(tmp_path)
    split_dir = tmp_path / "val"
    if damage == "delete manifest":
        (split_dir / "manifest.json").unlink()
    elif damage == "delete image":
        (split_dir / "images" / "val_00003.png").unlink()
    elif damage == "delete captions":
        (split_dir / "captions.csv").unlink()
    else:  # a partial run that was later asked for fewer images leaves extra files behind
        (split_dir / "manifest.json").unlink()
        (split_dir / "images" / "val_00099.png").write_bytes(b"half written")
    shapes.ensure_generated(config)
    assert file_hashes(tmp_path) == before


def test_changed_parameters_regenerate_the_split(tmp_path):
    config = small_config(tmp_path)
    shapes.ensure_generated(config)
    config = dataclasses.replace(config, shapes_image_size=64, shapes_train_size=5)
    shapes.ensure_generated(config)
    images = sorted((tmp_path / "train" / "images").iterdir())
    assert len(images) == 5
    assert Image.open(images[0]).size == (64, 64)


def test_a_folder_with_foreign_files_is_not_deleted(tmp_path):
    notes = tmp_path / "train" / "my_notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me")
    with pytest.raises(DatasetError, match="my_notes.txt"):
        shapes.ensure_generated(small_config(tmp_path))
    assert notes.read_text() == "keep me"


# ---- registry and CSV reader --------------------------------------------------------


def test_load_split_through_the_registry(generated_root):
    assert "shapes" in DATASETS
    for split in ("train", "val", "test"):
        captioned_images = load_split(small_config(generated_root), split)
        assert len(captioned_images) == IMAGE_COUNT
        for item in captioned_images:
            assert isinstance(item, CaptionedImage)
            assert Path(item.image_path).is_file()
            assert isinstance(item.captions, tuple) and len(item.captions) == 5
    assert Path(captioned_images[0].image_path).name == "test_00000.png"


def test_unknown_data_set_lists_the_valid_names(generated_root):
    with pytest.raises(DatasetError, match="unknown data set 'shapez'.*shapes"):
        load_split(dataclasses.replace(small_config(generated_root), name="shapez"), "train")


def test_unknown_split_lists_the_valid_splits(generated_root):
    with pytest.raises(DatasetError, match="unknown split 'dev'.*train, val, test"):
        load_split(small_config(generated_root), "dev")


def test_an_empty_split_is_an_error(tmp_path):
    config = dataclasses.replace(small_config(tmp_path), shapes_test_size=0)
    with pytest.raises(DatasetError, match="'test'.*no images"):
        load_split(config, "test")


def write_csv(folder: Path, text: str, image_names=()) -> Path:
    (folder / "images").mkdir(exist_ok=True)
    for name in image_names:
        (folder / "images" / name).write_bytes(b"")
    csv_path = folder / "captions.csv"
    csv_path.write_text(text)
    return csv_path


def test_read_caption_csv_groups_rows_in_first_seen_order(tmp_path):
    csv_path = write_csv(
        tmp_path,
        'image,caption\nb.jpg,a dog\na.jpg,"a cat, sleeping"\nb.jpg,a brown dog\n\n',
        image_names=["a.jpg", "b.jpg"],
    )
    captioned_images = read_caption_csv(csv_path, tmp_path / "images")
    assert [Path(item.image_path).name for item in captioned_images] == ["b.jpg", "a.jpg"]
    assert captioned_images[0].captions == ("a dog", "a brown dog")
    assert captioned_images[1].captions == ("a cat, sleeping",)
    assert captioned_images[0].image_path == str(tmp_path / "images" / "b.jpg")


def test_read_caption_csv_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nothing\.csv: caption file not found"):
        read_caption_csv(tmp_path / "nothing.csv", tmp_path)


def test_read_caption_csv_bad_header(tmp_path):
    csv_path = write_csv(tmp_path, "image,text\na.jpg,a cat\n", image_names=["a.jpg"])
    with pytest.raises(DatasetError, match=r"captions\.csv: line 1: .*lacks column\(s\) caption"):
        read_caption_csv(csv_path, tmp_path / "images")
    empty_path = write_csv(tmp_path, "")
    with pytest.raises(DatasetError, match="file is empty"):
        read_caption_csv(empty_path, tmp_path / "images")


def test_read_caption_csv_empty_caption_names_the_line(tmp_path):
    csv_path = write_csv(tmp_path, "image,caption\na.jpg,a cat\na.jpg,  \n", image_names=["a.jpg"])
    with pytest.raises(DatasetError, match=r"captions\.csv: line 3: empty caption for image 'a\.jpg'"):
        read_caption_csv(csv_path, tmp_path / "images")


def test_read_caption_csv_counts_missing_images(tmp_path):
    rows = "".join(f"image_{index}.jpg,a cat\n" for index in range(8))
    csv_path = write_csv(tmp_path, "image,caption\n" + rows, image_names=["image_0.jpg"])
    with pytest.raises(DatasetError, match=r"7 of 8 images .* missing .*: image_1\.jpg, image_2\.jpg") as error:
        read_caption_csv(csv_path, tmp_path / "images")
    assert "image_7.jpg" not in str(error.value)  # only the first few names are listed
