"""MS COCO captions: the "coco" caption source.

Layout under ``root`` (one year, 2014 or 2017):

    root/annotations/captions_train2014.json   {"images": [{"id", "file_name"}, ...],
    root/annotations/captions_val2014.json      "annotations": [{"image_id", "caption"}, ...]}
    root/train2014/COCO_train2014_000000000009.jpg ...
    root/val2014/...

The year is ``data.coco_year``, else the one whose annotations exist, 2014 when both do.
Without ``data.karpathy_file``: train is captions_train*, val is captions_val*, images
sorted by file name, and there is no test split (COCO's test captions are not public).
With Karpathy's ``dataset_coco.json``: the splits are Karpathy's (restval is train; 113287
/ 5000 / 5000 images), matched by COCO image id (so 2017 files work too), in file order;
captions still come from the annotations. An image's captions are in annotation order,
with runs of whitespace (COCO has stray newlines) made single spaces. Skipped images
follow the rule in ``csv_source``; ``data.images_dir`` is ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioning.data.datasets import CaptionedImage, DatasetError
from captioning.data.datasets.csv_source import captioned_split, read_json, shown_names
from captioning.data.datasets.karpathy import karpathy_file, split_entries

COCO_YEARS = (2014, 2017)  # in order of preference when both are present
ANNOTATIONS_DIR = "annotations"
# Our split -> the part of COCO it is read from (without a Karpathy file).
COCO_PARTS = {"train": "train", "val": "val"}


@dataclasses.dataclass
class CocoCaptions:
    """Captions of one or more annotation files; names are ``folder/file_name`` relative to root."""

    captions: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    name_by_id: dict[int, str] = dataclasses.field(default_factory=dict)
    name_by_file_name: dict[str, str] = dataclasses.field(default_factory=dict)


def annotation_file(root: Path, part: str, year: int) -> Path:
    return root / ANNOTATIONS_DIR / f"captions_{part}{year}.json"


def coco_year(data_config) -> int:
    """``data.coco_year``, else the year whose annotations are under root (2014 first)."""
    root = Path(data_config.root)
    if data_config.coco_year:
        if data_config.coco_year not in COCO_YEARS:
            valid = ", ".join(map(str, COCO_YEARS))
            raise DatasetError(f"data.coco_year = {data_config.coco_year}; valid: 0 (detect), {valid}")
        return data_config.coco_year
    for year in COCO_YEARS:
        if any(annotation_file(root, part, year).is_file() for part in COCO_PARTS.values()):
            return year
    looked_for = ", ".join(
        annotation_file(root, part, year).name for year in COCO_YEARS for part in COCO_PARTS.values()
    )
    raise DatasetError(f"{root / ANNOTATIONS_DIR}: no COCO caption annotations; looked for {looked_for}")


def read_annotations(path: Path, folder: str, into: CocoCaptions) -> list[str]:
    """Adds one annotation file's captions to ``into``; returns its image names sorted.

    folder: where its images lie under root ("train2014"). Raises DatasetError naming the
    file for a missing or non-JSON file, a missing key (with the entry), an empty caption,
    or captions of image ids that its images list lacks.
    """
    data = read_json(path, "COCO caption annotations")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)):
        raise DatasetError(f"{path}: expected an object with 'images' and 'annotations' lists (COCO caption format)")
    names_by_id = {}
    for index, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and "id" in image and "file_name" in image):
            raise DatasetError(f"{path}: images[{index}] lacks 'id' or 'file_name'")
        name = f"{folder}/{image['file_name']}"
        names_by_id[image["id"]] = name
        into.name_by_id[image["id"]] = name
        into.name_by_file_name[image["file_name"]] = name
    unknown_ids = []
    for index, annotation in enumerate(data["annotations"]):
        if not (isinstance(annotation, dict) and "image_id" in annotation and "caption" in annotation):
            raise DatasetError(f"{path}: annotations[{index}] lacks 'image_id' or 'caption'")
        caption = " ".join(str(annotation["caption"]).split())
        if not caption:
            raise DatasetError(f"{path}: annotations[{index}] (image {annotation['image_id']}): empty caption")
        name = names_by_id.get(annotation["image_id"])
        if name is None:
            unknown_ids.append(str(annotation["image_id"]))
            continue
        into.captions.setdefault(name, []).append(caption)
    if unknown_ids:
        raise DatasetError(
            f"{path}: {len(unknown_ids)} captions name image ids missing from its images list: {shown_names(unknown_ids)}"
        )
    return sorted(names_by_id.values())


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """One split of COCO captions (registered as "coco")."""
    root = Path(data_config.root)
    year = coco_year(data_config)
    karpathy_path = karpathy_file(data_config)
    coco = CocoCaptions()
    if karpathy_path is None:
        if split not in COCO_PARTS:
            raise DatasetError(
                f"{root / ANNOTATIONS_DIR}: COCO has no public {split} captions (no captions_{split}{year}.json); "
                "set data.karpathy_file to Karpathy's dataset_coco.json for the standard test split, or use val"
            )
        part = COCO_PARTS[split]
        path = annotation_file(root, part, year)
        names = read_annotations(path, f"{part}{year}", coco)
        return captioned_split(names, coco.captions, root, split=split, names_file=path, caption_file=path)

    paths = [annotation_file(root, part, year) for part in COCO_PARTS.values()]
    for path, part in zip(paths, COCO_PARTS.values()):
        read_annotations(path, f"{part}{year}", coco)
    names = []
    for entry in split_entries(karpathy_path, split):
        if entry.cocoid is not None:
            names.append(coco.name_by_id.get(entry.cocoid, entry.relative_path))
        else:
            names.append(coco.name_by_file_name.get(entry.filename, entry.relative_path))
    caption_files = f"{root / ANNOTATIONS_DIR}/{' and '.join(path.name for path in paths)}"
    return captioned_split(names, coco.captions, root, split=split, names_file=karpathy_path, caption_file=caption_files)
