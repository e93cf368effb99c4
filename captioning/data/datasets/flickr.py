"""Flickr8k and Flickr30k: the "flickr8k" and "flickr30k" caption sources.

Flickr8k comes in two layouts under ``root``, told apart by which caption file exists
(the original release wins when both do):

    original release                              Kaggle CSV release
    root/Flicker8k_Dataset/*.jpg  (sic)           root/Images/*.jpg
    root/Flickr8k_text/Flickr8k.token.txt         root/captions.txt  (header image,caption)
    root/Flickr8k_text/Flickr_8k.trainImages.txt
    root/Flickr8k_text/Flickr_8k.devImages.txt    (our "val")
    root/Flickr8k_text/Flickr_8k.testImages.txt

The token file has one caption a line, ``IMAGE.jpg#N<TAB>caption``; an image's captions
come back ordered by N. The original release takes its splits from the split files
(images in split-file order; captioned images that no split file names are not used),
the CSV release from the sorted-name rule of ``csv_source`` (6091 / 1000 / 1000 of its
8091 images). With ``data.karpathy_file`` set, both take the splits from Karpathy's file
instead, and keep their own captions.

Flickr30k: ``results_20130124.token`` (the token format above) or the Kaggle
``results.csv`` (``image_name| comment_number| comment``), in root or in
root/flickr30k_images/; images in flickr30k-images/, flickr30k_images/ or the Kaggle
release's flickr30k_images/flickr30k_images/. Splits: Karpathy's file if set, else the
sorted-name rule (29783 / 1000 / 1000 of its 31783 images).

``data.images_dir`` overrides the images folder. Images of a split that have no captions
or no file are skipped with a warning up to 1 % of the split and fail it above that
(``csv_source``); the token file of the original Flickr8k release names one image that
does not exist, ``2258277193_586949ec62.jpg.1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from captioning.data.datasets import CaptionedImage, DatasetError
from captioning.data.datasets.csv_source import (
    captioned_split,
    captions_by_image,
    deterministic_split,
    find_images_dir,
    read_caption_rows,
    table_split_names,
)
from captioning.data.datasets.karpathy import karpathy_file, split_entries

# Flickr8k's original release: caption file and split files, relative to root.
FLICKR8K_TOKEN_FILES = ("Flickr8k_text/Flickr8k.token.txt", "Flickr8k.token.txt")
# Our split -> the release's split file, next to the token file (the release calls val "dev").
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# Flickr8k's Kaggle release: one CSV with header image,caption.
FLICKR8K_CSV_FILE = "captions.txt"
FLICKR8K_IMAGES_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", ".")

# Flickr30k: the original token file, then the Kaggle CSV (at root or inside its folder).
FLICKR30K_TOKEN_FILES = ("results_20130124.token", "flickr30k/results_20130124.token")
FLICKR30K_RESULTS_CSV_FILES = ("results.csv", "flickr30k_images/results.csv")
FLICKR30K_RESULTS_CSV_HEADER = ["image_name", "comment_number", "comment"]
FLICKR30K_IMAGES_DIRS = (
    "flickr30k-images",
    "flickr30k_images/flickr30k_images",
    "flickr30k_images",
    "Images",
    ".",
)

# A results.csv row whose separator between comment number and comment is missing, as in
# one row of the Kaggle file ("2199200615.jpg| 4 A dog runs across the grass ."): the
# number and caption are still unambiguous, so the row is read rather than rejected.
_NUMBER_THEN_CAPTION = re.compile(r"\s*(\d+)\s+(\S.*)")


def read_token_file(path: Path) -> dict[str, list[str]]:
    """Image name -> captions ordered by N, from lines ``IMAGE#N<TAB>caption``.

    Images come in the order of their first line. Blank lines are skipped. Raises
    DatasetError naming the file and line for a line without ``#N`` or tab, or an empty caption.
    """
    return _captions_by_number(path, _token_file_captions(path), nothing_read="no captions")


def _token_file_captions(path: Path) -> Iterator[tuple[str, int, str]]:
    with open(path, encoding="utf-8-sig") as file:
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_sign, number = key.strip().rpartition("#")
            if not (tab and hash_sign and name and number.isdigit()):
                raise DatasetError(f"{path}: line {line_number}: expected 'IMAGE#N<TAB>caption', got {line!r:.80}")
            caption = caption.strip()
            if not caption:
                raise DatasetError(f"{path}: line {line_number}: empty caption for image {name!r}")
            yield name, int(number), caption


def read_results_csv(path: Path) -> dict[str, list[str]]:
    """Image name -> captions ordered by comment number, from Kaggle's Flickr30k ``results.csv``.

    Its lines are ``image_name| comment_number| comment`` (``|`` and spaces, no quoting:
    captions keep their quote characters). Raises DatasetError naming the file and line for
    a wrong header or a malformed row.
    """
    return _captions_by_number(path, _results_csv_captions(path), nothing_read="no captions after the header")


def _results_csv_captions(path: Path) -> Iterator[tuple[str, int, str]]:
    with open(path, encoding="utf-8-sig") as file:
        header = [field.strip() for field in file.readline().split("|")]
        if header != FLICKR30K_RESULTS_CSV_HEADER:
            raise DatasetError(
                f"{path}: line 1: header {'|'.join(header)!r}; expected {'| '.join(FLICKR30K_RESULTS_CSV_HEADER)!r}"
            )
        for line_number, line in enumerate(file, start=2):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.split("|", 2)]
            if len(fields) == 2 and (match := _NUMBER_THEN_CAPTION.fullmatch(fields[1])):
                fields = [fields[0], match.group(1), match.group(2)]
            if len(fields) != 3 or not fields[0] or not fields[1].isdigit():
                raise DatasetError(
                    f"{path}: line {line_number}: expected 'image_name| comment_number| comment', "
                    f"got {line.strip()!r:.80}"
                )
            name, number, caption = fields
            if not caption:
                raise DatasetError(f"{path}: line {line_number}: empty caption for image {name!r}")
            yield name, int(number), caption


def _captions_by_number(
    path: Path, numbered_captions: Iterable[tuple[str, int, str]], *, nothing_read: str
) -> dict[str, list[str]]:
    """Image name -> its captions sorted by number; images in the order they first appear.

    numbered_captions: (image name, caption number, caption), read lazily from ``path``.
    nothing_read: the error's wording when there are none ("no captions").
    """
    numbered: dict[str, list[tuple[int, str]]] = {}
    try:
        for name, number, caption in numbered_captions:
            numbered.setdefault(name, []).append((number, caption))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text: {error}") from None
    if not numbered:
        raise DatasetError(f"{path}: {nothing_read}")
    return {name: [caption for _, caption in sorted(pairs, key=lambda pair: pair[0])] for name, pairs in numbered.items()}


def read_split_file(path: Path) -> list[str]:
    """Image names, one a line, in file order; blank lines skipped."""
    names = []
    try:
        with open(path, encoding="utf-8-sig") as file:
            for line_number, line in enumerate(file, start=1):
                name = line.strip()
                if not name:
                    continue
                if len(name.split()) != 1:
                    raise DatasetError(f"{path}: line {line_number}: expected one image name, got {name!r:.80}")
                names.append(name)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text: {error}") from None
    return names


def _first_file(root: Path, candidates) -> Path | None:
    return next((root / name for name in candidates if (root / name).is_file()), None)


def _karpathy_names(data_config, split: str) -> tuple[list[str], Path] | None:
    """The split's image file names and the Karpathy file, or None without data.karpathy_file."""
    path = karpathy_file(data_config)
    if path is None:
        return None
    return [entry.filename for entry in split_entries(path, split)], path


def _flickr8k_split_names(token_file: Path, split: str) -> tuple[list[str], Path]:
    split_file = token_file.parent / FLICKR8K_SPLIT_FILES[split]
    if not split_file.is_file():
        present = [name for name, file_name in FLICKR8K_SPLIT_FILES.items() if (token_file.parent / file_name).is_file()]
        raise DatasetError(
            f"{split_file}: split file for {split!r} not found; this copy has split files for "
            f"{', '.join(present) or 'no split'}. Use another split (e.g. val), point data.root at a copy "
            "with this split file, or set data.karpathy_file"
        )
    return read_split_file(split_file), split_file


def load_flickr8k_split(data_config, split: str) -> list[CaptionedImage]:
    """One split of Flickr8k in either layout (registered as "flickr8k")."""
    root = Path(data_config.root)
    token_file = _first_file(root, FLICKR8K_TOKEN_FILES)
    if token_file is not None:
        captions = read_token_file(token_file)
        names, names_file = _karpathy_names(data_config, split) or _flickr8k_split_names(token_file, split)
        caption_file = token_file
    else:
        caption_file = root / FLICKR8K_CSV_FILE
        if not caption_file.is_file():
            looked_for = ", ".join(str(root / name) for name in (*FLICKR8K_TOKEN_FILES, FLICKR8K_CSV_FILE))
            raise DatasetError(f"{root}: no Flickr8k caption file; looked for {looked_for}")
        rows = read_caption_rows(caption_file)
        captions = captions_by_image(rows)
        names, names_file = _karpathy_names(data_config, split) or (
            table_split_names(rows, split, caption_file),
            caption_file,
        )
    images_dir = find_images_dir(root, data_config.images_dir, FLICKR8K_IMAGES_DIRS, names, caption_file)
    return captioned_split(names, captions, images_dir, split=split, names_file=names_file, caption_file=caption_file)


def load_flickr30k_split(data_config, split: str) -> list[CaptionedImage]:
    """One split of Flickr30k from its token file or Kaggle's results.csv (registered as "flickr30k")."""
    root = Path(data_config.root)
    if (caption_file := _first_file(root, FLICKR30K_TOKEN_FILES)) is not None:
        captions = read_token_file(caption_file)
    elif (caption_file := _first_file(root, FLICKR30K_RESULTS_CSV_FILES)) is not None:
        captions = read_results_csv(caption_file)
    else:
        looked_for = ", ".join(str(root / name) for name in (*FLICKR30K_TOKEN_FILES, *FLICKR30K_RESULTS_CSV_FILES))
        raise DatasetError(f"{root}: no Flickr30k caption file; looked for {looked_for}")
    names, names_file = _karpathy_names(data_config, split) or (deterministic_split(captions, split), caption_file)
    images_dir = find_images_dir(root, data_config.images_dir, FLICKR30K_IMAGES_DIRS, names, caption_file)
    return captioned_split(names, captions, images_dir, split=split, names_file=names_file, caption_file=caption_file)
