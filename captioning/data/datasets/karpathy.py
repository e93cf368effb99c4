"""Karpathy's split files: the "karpathy" caption source, and Karpathy splits for the others.

``dataset_flickr8k.json``, ``dataset_flickr30k.json`` and ``dataset_coco.json`` (from
Karpathy's NeuralTalk ``caption_datasets.zip``) hold every image with its split and
captions:

    {"images": [{"filename": "COCO_val2014_000000391895.jpg",
                 "filepath": "val2014",            (coco only)
                 "cocoid": 391895,                 (coco only)
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...]}, ...]}]}

``restval`` (the 30504 COCO val2014 images outside Karpathy's val and test) counts as
train, as in Karpathy's own training. The file is ``data.karpathy_file`` (relative to
root), else the one ``dataset_*.json`` under root.

As a source ("karpathy") captions come from the file's ``raw`` sentences (its tokens
joined by spaces when raw is empty), and images from ``root / images_dir / filepath /
filename``: ``data.images_dir`` when set, else the first of root, Flicker8k_Dataset,
Flickr8k_Dataset, Images, flickr30k-images, flickr30k_images/flickr30k_images,
flickr30k_images, images that holds the split's images. Images come back in file order;
skipped images follow the rule in ``csv_source``.

flickr8k, flickr30k and coco read only the splits from the file (``split_entries``) and
keep their own captions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioning.data.datasets import CaptionedImage, DatasetError
from captioning.data.datasets.csv_source import captioned_split, find_images_dir, read_json

# Karpathy split name -> ours.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# Folders, relative to root, where the images of a Karpathy file may lie (tried in order).
IMAGES_DIR_CANDIDATES = (
    ".",  # coco: root/val2014/..., from each entry's filepath
    "Flicker8k_Dataset",  # Flickr8k's original release (sic)
    "Flickr8k_Dataset",
    "Images",  # Flickr8k's Kaggle release
    "flickr30k-images",  # Flickr30k's original release
    "flickr30k_images/flickr30k_images",  # Flickr30k's Kaggle release
    "flickr30k_images",
    "images",
)
KARPATHY_FILE_PATTERN = "dataset_*.json"


@dataclasses.dataclass(frozen=True)
class KarpathyEntry:
    """One image of a Karpathy file."""

    filename: str
    filepath: str  # "" where the file has none (Flickr)
    split: str  # one of SPLITS; restval is already train
    captions: tuple[str, ...]  # raw sentences, stripped
    cocoid: int | None  # None where the file has none (Flickr)

    @property
    def relative_path(self) -> str:
        return f"{self.filepath}/{self.filename}" if self.filepath else self.filename


def karpathy_file(data_config) -> Path | None:
    """``data.karpathy_file`` under root, or None when it is not set."""
    if not data_config.karpathy_file:
        return None
    return Path(data_config.root) / data_config.karpathy_file


def read_karpathy_file(path: Path) -> list[KarpathyEntry]:
    """Every image of a Karpathy file, in file order.

    Raises DatasetError naming the file (and the entry, ``images[i]``) when it is missing,
    not JSON, lacks a key, has an unknown split, or names an image twice.
    """
    data = read_json(path, "Karpathy split file (data.karpathy_file)")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path}: expected an object with an 'images' list (Karpathy's dataset_*.json format)")
    entries = []
    first_index: dict[str, int] = {}
    for index, image in enumerate(images):
        entry = _entry(path, index, image)
        previous = first_index.setdefault(entry.relative_path, index)
        if previous != index:
            raise DatasetError(f"{path}: images[{index}]: {entry.relative_path} is also images[{previous}]")
        entries.append(entry)
    return entries


def _entry(path: Path, index: int, image) -> KarpathyEntry:
    where = f"{path}: images[{index}]"
    if not isinstance(image, dict):
        raise DatasetError(f"{where}: expected an object, got {image!r:.80}")
    missing_keys = [key for key in ("filename", "split", "sentences") if key not in image]
    if missing_keys:
        raise DatasetError(f"{where}: lacks {', '.join(missing_keys)}")
    filename = str(image["filename"])
    if image["split"] not in KARPATHY_SPLITS:
        raise DatasetError(
            f"{where} ({filename}): split {image['split']!r}; valid splits: {', '.join(KARPATHY_SPLITS)}"
        )
    if not isinstance(image["sentences"], list):
        raise DatasetError(f"{where} ({filename}): 'sentences' is not a list")
    captions = []
    for sentence_index, sentence in enumerate(image["sentences"]):
        caption = ""
        if isinstance(sentence, dict):
            caption = str(sentence.get("raw") or "").strip() or " ".join(map(str, sentence.get("tokens") or []))
        if not caption:
            raise DatasetError(f"{where} ({filename}): sentences[{sentence_index}] has no 'raw' text or 'tokens'")
        captions.append(caption)
    cocoid = image.get("cocoid")
    return KarpathyEntry(
        filename=filename,
        filepath=str(image.get("filepath") or ""),
        split=KARPATHY_SPLITS[image["split"]],
        captions=tuple(captions),
        cocoid=int(cocoid) if cocoid is not None else None,
    )


def split_entries(path: Path, split: str) -> list[KarpathyEntry]:
    """The entries of one split (``train`` includes restval), in file order."""
    return [entry for entry in read_karpathy_file(path) if entry.split == split]


def find_karpathy_file(data_config) -> Path:
    """``data.karpathy_file``, else the only ``dataset_*.json`` under root."""
    configured = karpathy_file(data_config)
    if configured is not None:
        return configured
    root = Path(data_config.root)
    found = sorted(root.glob(KARPATHY_FILE_PATTERN))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{root}: no Karpathy split file; looked for {root / KARPATHY_FILE_PATTERN} "
            "(dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json); set data.karpathy_file"
        )
    raise DatasetError(
        f"{root}: several Karpathy split files ({', '.join(path.name for path in found)}); "
        "choose one with data.karpathy_file"
    )


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """One split of a Karpathy file, captions included (registered as "karpathy")."""
    root = Path(data_config.root)
    path = find_karpathy_file(data_config)
    entries = split_entries(path, split)
    names = [entry.relative_path for entry in entries]
    captions = {entry.relative_path: list(entry.captions) for entry in entries if entry.captions}
    images_dir = find_images_dir(root, data_config.images_dir, IMAGES_DIR_CANDIDATES, names, path)
    return captioned_split(names, captions, images_dir, split=split, names_file=path, caption_file=path)
