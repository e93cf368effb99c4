"""Caption-source adapters (flickr8k, flickr30k, coco, karpathy, csv) on tiny files written here.

Every layout is built in tmp_path with 8x8 JPEGs and five captions an image; nothing reads
the real data sets.
"""

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from captioning.config import DataConfig
from captioning.data.datasets import DATASETS, CaptionedImage, Dataset, DatasetError, csv_source, extra_metrics, load_split


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _tiny_jpeg()
CAPTIONS_PER_IMAGE = 5


def write_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(JPEG)


def captions_for(name: str) -> list[str]:
    return [f"caption {number} of {name}" for number in range(CAPTIONS_PER_IMAGE)]


def token_lines(names, shuffled=False) -> str:
    lines = [f"{name}#{number}\t{caption}" for name in names for number, caption in enumerate(captions_for(name))]
    if shuffled:  # reversed: the loader must order captions by #N, not by line
        lines.reverse()
    return "\n".join(lines) + "\n"


def config(root, name, **fields) -> DataConfig:
    return DataConfig(name=name, root=str(root), **fields)


def names_of(images, root) -> list[str]:
    return [Path(image.image_path).relative_to(root).as_posix() for image in images]


def test_registry_names_every_source():
    assert {"shapes", "flickr8k", "flickr30k", "coco", "karpathy", "csv"} <= set(DATASETS)
    assert all(isinstance(entry, Dataset) and callable(entry.load_split) for entry in DATASETS.values())


def test_only_shapes_offers_extra_metrics_and_the_others_give_none():
    assert {name for name, entry in DATASETS.items() if entry.extra_metrics is not None} == {"shapes"}
    assert extra_metrics(DataConfig(name="flickr8k", root="no/such/folder"), "test", ["a.jpg"], ["a dog"]) == {}


def test_shapes_word_accuracies_come_through_the_registry(tmp_path):
    data = DataConfig(name="shapes", root=str(tmp_path / "shapes"), shapes_image_size=48, shapes_train_size=8,
                      shapes_val_size=24, shapes_test_size=8)
    images = load_split(data, "val")
    paths = [image.image_path for image in images]
    right = extra_metrics(data, "val", paths, [image.captions[0] for image in images])  # a reference names it all
    assert right["one_object_images"] > 0 and right["colour_accuracy"] == right["shape_accuracy"] == 1.0
    wrong = extra_metrics(data, "val", paths, ["a purple hexagon"] * len(paths))
    assert wrong["colour_accuracy"] == wrong["shape_accuracy"] == 0.0


def test_evaluation_adds_the_metrics_the_registry_offers_whatever_the_name(monkeypatch):
    from types import SimpleNamespace

    from captioning.evaluation import coco_metrics
    from captioning.evaluation.evaluate import evaluate_examples

    monkeypatch.setattr(coco_metrics, "meteor_score", lambda references, hypotheses: 0.25)  # no Java start-up
    asked = []

    def counted_words(data_config, split, image_paths, captions):
        asked.append((data_config.root, split, list(image_paths)))
        return {"words": sum(len(caption.split()) for caption in captions)}

    monkeypatch.setitem(DATASETS, "drawn", Dataset(load_split=lambda data_config, split: [], extra_metrics=counted_words))
    captioner = SimpleNamespace(config=SimpleNamespace(data=DataConfig(name="drawn", root="drawn_root")),
                                caption_paths=lambda paths, progress: ["a red circle"] * len(paths),
                                model=SimpleNamespace(decoder=SimpleNamespace(has_attention=False)))
    examples = [CaptionedImage("one.png", ("a red circle",)), CaptionedImage("two.png", ("a blue square",))]
    metrics, _ = evaluate_examples(captioner, examples, "train_tail", progress=False)
    assert metrics["words"] == 6 and asked == [("drawn_root", "train", ["one.png", "two.png"])]  # train_tail: train images
    captioner.config.data = DataConfig(name="flickr8k", root="drawn_root")
    metrics, _ = evaluate_examples(captioner, examples, "test", progress=False)
    assert "words" not in metrics and len(asked) == 1


# --- the deterministic split rule -------------------------------------------------------


@pytest.mark.parametrize(
    "count, expected_sizes",
    [(1, (0, 0, 1)), (8, (6, 1, 1)), (40, (30, 5, 5)), (8091, (6091, 1000, 1000)), (31783, (29783, 1000, 1000))],
)
def test_deterministic_split_sizes(count, expected_sizes):
    names = [f"{index:06d}.jpg" for index in range(count)]
    splits = [csv_source.deterministic_split(reversed(names), split) for split in ("train", "val", "test")]
    assert tuple(map(len, splits)) == expected_sizes
    assert sum(splits, []) == names  # sorted, disjoint, covering: train first, test last


# --- Flickr8k, original release -----------------------------------------------------------

FLICKR8K_TRAIN = ["1005_b.jpg", "1001_a.jpg", "1003_c.jpg", "1004_d.jpg"]  # split-file order, not sorted
FLICKR8K_DEV = ["2001_e.jpg"]
FLICKR8K_TEST = ["3001_f.jpg"]


def write_flickr8k_original(root: Path, with_test=True) -> None:
    names = FLICKR8K_TRAIN + FLICKR8K_DEV + FLICKR8K_TEST
    write_images(root / "Flicker8k_Dataset", names)
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    (text / "Flickr8k.token.txt").write_text(token_lines(names, shuffled=True))
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(FLICKR8K_TRAIN) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text("\r\n".join(FLICKR8K_DEV) + "\r\n")
    if with_test:
        (text / "Flickr_8k.testImages.txt").write_text("\n".join(FLICKR8K_TEST) + "\n")


def test_flickr8k_original_layout(tmp_path):
    write_flickr8k_original(tmp_path)
    data = config(tmp_path, "flickr8k")
    train = load_split(data, "train")
    assert names_of(train, tmp_path) == [f"Flicker8k_Dataset/{name}" for name in FLICKR8K_TRAIN]
    assert train[0].captions == tuple(captions_for("1005_b.jpg"))  # "#N" stripped, ordered by N
    assert names_of(load_split(data, "val"), tmp_path) == ["Flicker8k_Dataset/2001_e.jpg"]  # val is "dev"
    assert names_of(load_split(data, "test"), tmp_path) == ["Flicker8k_Dataset/3001_f.jpg"]


def test_flickr8k_missing_test_split_file_is_named(tmp_path):
    write_flickr8k_original(tmp_path, with_test=False)
    data = config(tmp_path, "flickr8k")
    assert len(load_split(data, "val")) == 1
    with pytest.raises(DatasetError, match=r"Flickr_8k\.testImages\.txt: split file for 'test' not found"):
        load_split(data, "test")


def test_flickr8k_original_layout_with_karpathy_splits(tmp_path):
    write_flickr8k_original(tmp_path)
    entries = [("1001_a.jpg", "test"), ("1003_c.jpg", "restval"), ("2001_e.jpg", "train")]
    write_karpathy(tmp_path / "dataset_flickr8k.json", [{"filename": name, "split": split} for name, split in entries])
    data = config(tmp_path, "flickr8k", karpathy_file="dataset_flickr8k.json")
    assert names_of(load_split(data, "train"), tmp_path) == ["Flicker8k_Dataset/1003_c.jpg", "Flicker8k_Dataset/2001_e.jpg"]
    test = load_split(data, "test")
    assert names_of(test, tmp_path) == ["Flicker8k_Dataset/1001_a.jpg"]
    assert test[0].captions == tuple(captions_for("1001_a.jpg"))  # captions from the token file


def test_flickr8k_malformed_token_line_names_file_and_line(tmp_path):
    write_flickr8k_original(tmp_path)
    token_file = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    token_file.write_text("1001_a.jpg#0\tfine caption\n1001_a.jpg a caption without tab or number\n")
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt: line 2: expected 'IMAGE#N<TAB>caption'"):
        load_split(config(tmp_path, "flickr8k"), "train")


def write_many_flickr8k(root: Path, count: int, missing_files=(), uncaptioned=()) -> list[str]:
    """An original-layout Flickr8k with ``count`` train images, some of them broken."""
    names = [f"{index:04d}_x.jpg" for index in range(count)]
    write_images(root / "Flicker8k_Dataset", [name for name in names if name not in missing_files])
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    # The real token file's quirk: captions under "NAME.jpg.1" while the split file says "NAME.jpg".
    captioned = [f"{name}.1" if name in uncaptioned else name for name in names]
    (text / "Flickr8k.token.txt").write_text(token_lines(captioned))
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    return names


def test_one_percent_of_missing_images_is_skipped_with_a_warning(tmp_path, caplog):
    names = write_many_flickr8k(tmp_path, 100, missing_files=["0007_x.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioning.data.datasets.csv_source"):
        train = load_split(config(tmp_path, "flickr8k"), "train")
    assert len(train) == 99 and "0007_x.jpg" not in {Path(image.image_path).name for image in train}
    assert names_of(train, tmp_path) == [f"Flicker8k_Dataset/{name}" for name in names if name != "0007_x.jpg"]
    (record,) = caplog.records
    assert "Flickr8k.token.txt: 1 of 100 train images it captions are missing" in record.getMessage()
    assert "0007_x.jpg" in record.getMessage()


def test_uncaptioned_image_of_the_split_file_is_skipped_with_a_warning(tmp_path, caplog):
    write_many_flickr8k(tmp_path, 100, uncaptioned=["0042_x.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioning.data.datasets.csv_source"):
        train = load_split(config(tmp_path, "flickr8k"), "train")
    assert len(train) == 99
    (record,) = caplog.records
    assert "Flickr_8k.trainImages.txt: 1 of 100 train images have no captions" in record.getMessage()
    assert "0042_x.jpg" in record.getMessage()


def test_more_than_one_percent_of_missing_images_fails(tmp_path):
    write_many_flickr8k(tmp_path, 100, missing_files=["0003_x.jpg", "0050_x.jpg"])
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt: 2 of 100 train images .* 0003_x\.jpg, 0050_x\.jpg"):
        load_split(config(tmp_path, "flickr8k"), "train")


def test_empty_split_file_names_the_file(tmp_path):
    write_flickr8k_original(tmp_path)
    (tmp_path / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"Flickr_8k\.devImages\.txt: no val images"):
        load_split(config(tmp_path, "flickr8k"), "val")


# --- Flickr8k, Kaggle CSV release --------------------------------------------------------

EIGHT_NAMES = [f"{index}_{letter}.jpg" for index, letter in zip(range(108, 100, -1), "abcdefgh")]  # unsorted


def test_flickr8k_csv_layout_deterministic_split(tmp_path):
    write_images(tmp_path / "Images", EIGHT_NAMES)
    lines = ["image,caption"]
    for name in EIGHT_NAMES:
        lines += [f"{name},{caption}" for caption in captions_for(name)]
    lines[1] = f'{EIGHT_NAMES[0]},"a dog, quoted"'
    lines[2] = f"{EIGHT_NAMES[0]},a dog, unquoted"  # the comma stays in the caption
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    data = config(tmp_path, "flickr8k")
    ordered = sorted(EIGHT_NAMES)  # 101_h.jpg ... 108_a.jpg: the last is test, the one before val
    train = load_split(data, "train")
    assert names_of(train, tmp_path) == [f"Images/{name}" for name in ordered[:6]]
    assert names_of(load_split(data, "val"), tmp_path) == [f"Images/{ordered[6]}"]
    test = load_split(data, "test")
    assert names_of(test, tmp_path) == [f"Images/{ordered[7]}"]
    assert test[0].captions[:2] == ("a dog, quoted", "a dog, unquoted")
    assert len(test[0].captions) == CAPTIONS_PER_IMAGE


def test_flickr8k_csv_layout_with_karpathy_splits(tmp_path):
    write_images(tmp_path / "Images", EIGHT_NAMES)
    rows = ["image,caption"] + [f"{name},{caption}" for name in EIGHT_NAMES for caption in captions_for(name)]
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n")
    write_karpathy(tmp_path / "splits.json", [{"filename": name, "split": "test"} for name in EIGHT_NAMES[:3]])
    data = config(tmp_path, "flickr8k", karpathy_file="splits.json")
    assert names_of(load_split(data, "test"), tmp_path) == [f"Images/{name}" for name in EIGHT_NAMES[:3]]
    with pytest.raises(DatasetError, match=r"splits\.json: no val images"):
        load_split(data, "val")


def test_flickr8k_without_caption_file_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError, match=r"Flickr8k_text/Flickr8k\.token\.txt.*captions\.txt"):
        load_split(config(tmp_path, "flickr8k"), "train")


# --- Flickr30k -------------------------------------------------------------------------------


def test_flickr30k_token_file(tmp_path):
    write_images(tmp_path / "flickr30k_images", EIGHT_NAMES)
    (tmp_path / "results_20130124.token").write_text(token_lines(EIGHT_NAMES, shuffled=True))
    data = config(tmp_path, "flickr30k")
    ordered = sorted(EIGHT_NAMES)
    train = load_split(data, "train")
    assert names_of(train, tmp_path) == [f"flickr30k_images/{name}" for name in ordered[:6]]
    assert train[0].captions == tuple(captions_for(ordered[0]))
    assert names_of(load_split(data, "test"), tmp_path) == [f"flickr30k_images/{ordered[7]}"]


def test_flickr30k_kaggle_results_csv(tmp_path):
    kaggle = tmp_path / "flickr30k_images"  # Kaggle nests the images folder in a folder of the same name
    write_images(kaggle / "flickr30k_images", EIGHT_NAMES)
    lines = ["image_name| comment_number| comment"]
    for name in EIGHT_NAMES:
        lines += [f"{name}| {number}| {caption}" for number, caption in enumerate(captions_for(name))]
    lines[1] = f'{EIGHT_NAMES[0]}| 0| A "quoted" word | and a bar'
    lines[5] = f"{EIGHT_NAMES[0]}| 4 A dog runs across the grass ."  # the Kaggle file's missing separator
    (kaggle / "results.csv").write_text("\n".join(lines) + "\n")
    data = config(tmp_path, "flickr30k")
    (first,) = load_split(data, "test")  # sorted last: 108_a.jpg, the image with the odd rows
    assert names_of([first], tmp_path) == [f"flickr30k_images/flickr30k_images/{EIGHT_NAMES[0]}"]
    assert len(load_split(data, "train")) == 6
    assert first.captions[0] == 'A "quoted" word | and a bar'
    assert first.captions[4] == "A dog runs across the grass ."
    assert first.captions[1:4] == tuple(captions_for(EIGHT_NAMES[0])[1:4])


def test_flickr30k_malformed_results_csv_line(tmp_path):
    write_images(tmp_path / "flickr30k_images", EIGHT_NAMES)
    (tmp_path / "results.csv").write_text(f"image_name| comment_number| comment\n{EIGHT_NAMES[0]}| 0| ok\nbroken line\n")
    with pytest.raises(DatasetError, match=r"results\.csv: line 3: expected 'image_name\| comment_number\| comment'"):
        load_split(config(tmp_path, "flickr30k"), "train")


def test_flickr30k_without_caption_file_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError, match=r"results_20130124\.token.*results\.csv"):
        load_split(config(tmp_path, "flickr30k"), "train")


# --- COCO ------------------------------------------------------------------------------------


def write_coco(root: Path, year: int) -> dict[str, list[int]]:
    """Two train and two val images; returns part -> image ids."""
    ids = {"train": [9, 25], "val": [42, 73]}
    for part, part_ids in ids.items():
        prefix = "" if year == 2017 else f"COCO_{part}2014_"
        file_names = {image_id: f"{prefix}{image_id:012d}.jpg" for image_id in part_ids}
        write_images(root / f"{part}{year}", file_names.values())
        annotations = [  # interleaved across images, with COCO's stray whitespace
            {"id": 1000 * image_id + number, "image_id": image_id, "caption": f" {captions_for(str(image_id))[number]}\n"}
            for number in range(CAPTIONS_PER_IMAGE)
            for image_id in reversed(part_ids)
        ]
        images = [{"id": image_id, "file_name": name} for image_id, name in reversed(file_names.items())]
        document = {"images": images, "annotations": annotations}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{part}{year}.json").write_text(json.dumps(document))
    return ids


@pytest.mark.parametrize("year", [2014, 2017])
def test_coco_annotations(tmp_path, year):
    write_coco(tmp_path, year)
    data = config(tmp_path, "coco")
    train = load_split(data, "train")
    prefix = "" if year == 2017 else "COCO_train2014_"
    expected = [f"train{year}/{prefix}000000000009.jpg", f"train{year}/{prefix}000000000025.jpg"]
    assert names_of(train, tmp_path) == expected  # sorted by file name
    assert train[0].captions == tuple(captions_for("9"))  # whitespace and newline stripped
    assert len(load_split(data, "val")) == 2
    with pytest.raises(DatasetError, match=r"annotations: COCO has no public test captions.*data\.karpathy_file"):
        load_split(data, "test")


@pytest.mark.parametrize("year", [2014, 2017])
def test_coco_with_karpathy_split_matches_image_ids(tmp_path, year):
    write_coco(tmp_path, year)
    entries = [
        {"filename": "COCO_val2014_000000000073.jpg", "filepath": "val2014", "cocoid": 73, "split": "test"},
        {"filename": "COCO_val2014_000000000042.jpg", "filepath": "val2014", "cocoid": 42, "split": "restval"},
        {"filename": "COCO_train2014_000000000025.jpg", "filepath": "train2014", "cocoid": 25, "split": "train"},
        {"filename": "COCO_train2014_000000000009.jpg", "filepath": "train2014", "cocoid": 9, "split": "val"},
    ]
    write_karpathy(tmp_path / "dataset_coco.json", entries)
    data = config(tmp_path, "coco", karpathy_file="dataset_coco.json")
    test = load_split(data, "test")
    assert [Path(image.image_path).name[-8:] for image in test] == ["0073.jpg"]
    assert test[0].captions == tuple(captions_for("73"))
    assert [Path(image.image_path).name[-8:] for image in load_split(data, "train")] == ["0042.jpg", "0025.jpg"]


def test_coco_year_chosen_by_config_when_both_are_present(tmp_path):
    write_coco(tmp_path, 2014)
    write_coco(tmp_path, 2017)
    assert Path(load_split(config(tmp_path, "coco"), "train")[0].image_path).parent.name == "train2014"
    assert Path(load_split(config(tmp_path, "coco", coco_year=2017), "train")[0].image_path).parent.name == "train2017"


def test_coco_without_annotations_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError, match=r"annotations: no COCO caption annotations; looked for captions_train2014\.json"):
        load_split(config(tmp_path, "coco"), "train")


def test_coco_malformed_annotations_name_the_file(tmp_path):
    write_coco(tmp_path, 2014)
    (tmp_path / "annotations" / "captions_val2014.json").write_text('{"images": [], "annotations": [{"image_id": 5}]}')
    with pytest.raises(DatasetError, match=r"captions_val2014\.json: annotations\[0\] lacks 'image_id' or 'caption'"):
        load_split(config(tmp_path, "coco"), "val")


def test_coco_missing_images_are_counted_and_named(tmp_path):
    write_coco(tmp_path, 2014)
    (tmp_path / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    message = r"captions_val2014\.json: 1 of 2 val images .*missing .*COCO_val2014_000000000073\.jpg"
    with pytest.raises(DatasetError, match=message):
        load_split(config(tmp_path, "coco"), "val")


# --- Karpathy ------------------------------------------------------------------------------


def write_karpathy(path: Path, entries) -> None:
    images = []
    for entry in entries:
        name = entry["filename"]
        sentences = [{"raw": caption, "tokens": caption.split()} for caption in captions_for(name)]
        images.append({"sentences": sentences, **entry})
    path.write_text(json.dumps({"images": images, "dataset": "test"}))


def test_karpathy_flickr_file_restval_is_train(tmp_path):
    write_images(tmp_path / "Flicker8k_Dataset", EIGHT_NAMES)
    splits = ["train", "restval", "val", "test", "train", "test", "val", "train"]
    entries = [{"filename": name, "split": split} for name, split in zip(EIGHT_NAMES, splits)]
    write_karpathy(tmp_path / "dataset_flickr8k.json", entries)
    data = config(tmp_path, "karpathy")  # the only dataset_*.json under root is found
    train = load_split(data, "train")
    assert names_of(train, tmp_path) == [f"Flicker8k_Dataset/{EIGHT_NAMES[index]}" for index in (0, 1, 4, 7)]  # file order
    assert train[1].captions == tuple(captions_for(EIGHT_NAMES[1]))
    assert len(load_split(data, "val")) == 2 and len(load_split(data, "test")) == 2


def test_karpathy_coco_file_uses_filepath(tmp_path):
    write_images(tmp_path / "val2014", ["COCO_val2014_000000000042.jpg"])
    write_images(tmp_path / "train2014", ["COCO_train2014_000000000009.jpg"])
    entries = [
        {"filename": "COCO_val2014_000000000042.jpg", "filepath": "val2014", "cocoid": 42, "split": "restval"},
        {"filename": "COCO_train2014_000000000009.jpg", "filepath": "train2014", "cocoid": 9, "split": "train"},
    ]
    write_karpathy(tmp_path / "dataset_coco.json", entries)
    train = load_split(config(tmp_path, "karpathy"), "train")
    expected = ["val2014/COCO_val2014_000000000042.jpg", "train2014/COCO_train2014_000000000009.jpg"]  # file order
    assert names_of(train, tmp_path) == expected


def test_karpathy_images_dir_from_config(tmp_path):
    write_images(tmp_path / "my_pictures", EIGHT_NAMES[:1])
    write_karpathy(tmp_path / "dataset_flickr30k.json", [{"filename": EIGHT_NAMES[0], "split": "test"}])
    test = load_split(config(tmp_path, "karpathy", images_dir="my_pictures"), "test")
    assert names_of(test, tmp_path) == [f"my_pictures/{EIGHT_NAMES[0]}"]


def test_karpathy_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"no Karpathy split file; looked for .*dataset_\*\.json"):
        load_split(config(tmp_path, "karpathy"), "train")
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [{"filename": "a.jpg", "split": "dev", "sentences": []}]}')
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json: images\[0\] \(a\.jpg\): split 'dev'"):
        load_split(config(tmp_path, "karpathy"), "train")
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json: not a JSON file"):
        load_split(config(tmp_path, "karpathy"), "train")


def test_karpathy_images_not_on_disk_fail_with_folders_looked_in(tmp_path):
    write_karpathy(tmp_path / "dataset_flickr8k.json", [{"filename": name, "split": "train"} for name in EIGHT_NAMES])
    message = r"dataset_flickr8k\.json: no images folder holds its images .*Flicker8k_Dataset/"
    with pytest.raises(DatasetError, match=message):
        load_split(config(tmp_path, "karpathy"), "train")


# --- generic CSV -------------------------------------------------------------------------


def test_csv_with_split_column(tmp_path):
    write_images(tmp_path / "images", EIGHT_NAMES)
    splits = dict(zip(EIGHT_NAMES, ["test", "train", "val", "train", "train", "test", "train", "train"]))
    rows = ["image,caption,split"]
    rows += [f"{name},{caption},{splits[name]}" for name in EIGHT_NAMES for caption in captions_for(name)]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    data = config(tmp_path, "csv")
    test = load_split(data, "test")
    assert names_of(test, tmp_path) == [f"images/{EIGHT_NAMES[0]}", f"images/{EIGHT_NAMES[5]}"]  # row order
    assert test[0].captions == tuple(captions_for(EIGHT_NAMES[0]))
    assert len(load_split(data, "train")) == 5 and len(load_split(data, "val")) == 1


def test_csv_without_split_column_uses_the_sorted_name_rule(tmp_path):
    write_images(tmp_path / "photos", EIGHT_NAMES)
    rows = ["caption,image"] + [f"{caption},{name}" for name in EIGHT_NAMES for caption in captions_for(name)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    data = config(tmp_path, "csv", csv_file="mine.csv", images_dir="photos")
    assert names_of(load_split(data, "train"), tmp_path) == [f"photos/{name}" for name in sorted(EIGHT_NAMES)[:6]]
    assert names_of(load_split(data, "val"), tmp_path) == [f"photos/{sorted(EIGHT_NAMES)[6]}"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"captions\.csv: caption file not found"),
        ("image,text\na.jpg,x\n", r"captions\.csv: line 1: header 'image,text' lacks column\(s\) caption"),
        ("image,caption\na.jpg,a cat\nb.jpg\n", r"captions\.csv: line 3: expected 2 fields"),
        ("image,caption\na.jpg,  \n", r"captions\.csv: line 2: empty caption for image 'a\.jpg'"),
        ("image,caption,split\na.jpg,a cat,dev\n", r"captions\.csv: line 2: split 'dev' for image 'a\.jpg'"),
        (
            "image,caption,split\na.jpg,a cat,train\na.jpg,a dog,test\n",
            r"captions\.csv: line 3: image 'a\.jpg' is in split 'test'",
        ),
        ("image,caption\n\n", r"captions\.csv: no caption rows"),
        ("image,caption,split\na.jpg,a cat,train\n", r"captions\.csv: no val images"),
    ],
)
def test_csv_errors_name_the_file(tmp_path, content, message):
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    if content is not None:
        (tmp_path / "captions.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_split(config(tmp_path, "csv"), "val")


def test_csv_missing_images_are_counted_and_named(tmp_path):
    write_images(tmp_path, ["a.jpg"])
    (tmp_path / "captions.csv").write_text("image,caption,split\na.jpg,x,train\nb.jpg,y,train\nc.jpg,z,train\n")
    message = r"captions\.csv: 2 of 3 train images it captions are missing from .*: b\.jpg, c\.jpg"
    with pytest.raises(DatasetError, match=message):
        load_split(config(tmp_path, "csv"), "train")
