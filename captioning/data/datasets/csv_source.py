"""The "csv" caption source (a user's own images), and the split rules every source shares.

Layout under ``root``:

    root/captions.csv   header image,caption[,split]; one row per caption, blank lines skipped
    root/...            the images; names in the table are paths relative to the images
                        folder: data.images_dir, else the first of root, images/, Images/
                        that holds the named files

``data.csv_file`` names another table (relative to root). The split column, when there is
one, holds train, val or test, and all rows of one image must agree. Images come back in
the order of their first row, captions in row order.

Every source reduces its files to the same thing: image name -> captions, plus the list of
names in the requested split. The rules below turn that into ``CaptionedImage`` and are
shared by flickr8k, flickr30k, coco and karpathy (they import them from here):

* Deterministic split, for data without split files or a split column: image names are
  sorted (Python string order); the last ``min(1000, ceil(n / 8))`` are test, the
  ``min(1000, ceil(n / 8))`` before them val, the rest train. With the 8091 images of
  Flickr8k's CSV release that is 6091 / 1000 / 1000 (Karpathy's split also holds out
  1000 + 1000); a 40-image data set gets 30 / 5 / 5. Adding images can move others
  between splits, so keep the image set fixed between training and evaluation.
* Skipped images: a split's image that has no captions, or whose file is not on disk, is
  left out with a one-line warning (logging, how many and the first names) when at most
  1 % of the split's images are; more than 1 % raises DatasetError. Flickr8k's token file
  names one image that does not exist (``2258277193_586949ec62.jpg.1``); a partial download
  loses far more than 1 %, and should stop training rather than quietly change the data.

The readers shared beyond the csv source also live here: ``read_caption_csv`` (a whole
``image,caption`` table with every image on disk, as the shapes source writes it) and
``read_json`` (coco and karpathy).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

from captioning.data.datasets import SPLITS, CaptionedImage, DatasetError

logger = logging.getLogger(__name__)

# Images each of val and test gets from the deterministic split: the 1000 that Flickr8k's
# release and Karpathy's splits hold out; small data sets hold out an eighth each instead.
HELD_OUT_IMAGES = 1000
HELD_OUT_DIVISOR = 8
# Largest fraction of a split's images that may be skipped with only a warning (see above).
MAX_SKIPPED_FRACTION = 0.01
# How many image names an error or warning lists before it stops.
MISSING_NAMES_SHOWN = 5
# Candidate images folders of the csv source, relative to root, tried in this order.
IMAGES_DIR_CANDIDATES = (".", "images", "Images")
# Names of a split tried when looking for the folder that holds its images.
IMAGES_DIR_SAMPLES = 20


@dataclasses.dataclass(frozen=True)
class CaptionRow:
    """One caption row of a CSV table; ``split`` is None when the table has no split column."""

    line_number: int
    image: str
    caption: str
    split: str | None


def read_caption_rows(csv_path: Path, *, allow_empty: bool = False) -> list[CaptionRow]:
    """The rows of a CSV with header ``image,caption`` and an optional ``split`` column.

    Captions containing unquoted commas are kept whole: fields beyond the header's count are
    joined back into the caption (image names and splits contain no commas). Other columns
    are ignored. Raises DatasetError naming the file (and line) for a missing file, a header
    without image or caption, a short row, an empty image, caption or split, an unknown
    split, or (unless ``allow_empty``) a table without rows.
    """
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: caption file not found")
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{csv_path}: file is empty; expected a header line 'image,caption[,split]'")
            columns = [name.strip() for name in header]
            missing_columns = [name for name in ("image", "caption") if name not in columns]
            if missing_columns:
                raise DatasetError(
                    f"{csv_path}: line 1: header {','.join(columns)!r} lacks column(s) "
                    f"{', '.join(missing_columns)}; expected 'image,caption[,split]'"
                )
            caption_column = columns.index("caption")
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                rows.append(_caption_row(csv_path, reader.line_num, row, columns, caption_column))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_path}: not UTF-8 text: {error}") from None
    except csv.Error as error:
        raise DatasetError(f"{csv_path}: not a readable CSV file: {error}") from None
    if not rows and not allow_empty:
        raise DatasetError(f"{csv_path}: no caption rows after the header")
    return rows


def _caption_row(csv_path: Path, line_number: int, row: list[str], columns: list[str], caption_column: int) -> CaptionRow:
    if len(row) < len(columns):
        raise DatasetError(
            f"{csv_path}: line {line_number}: expected {len(columns)} fields ({','.join(columns)}), got {len(row)}"
        )
    extra = len(row) - len(columns)  # an unquoted comma in the caption
    after = len(columns) - caption_column - 1
    caption = ",".join(row[caption_column : caption_column + extra + 1])
    values = dict(zip(columns, row[:caption_column] + [caption] + row[len(row) - after :]))
    image = values["image"].strip()
    caption = values["caption"].strip()
    if not image:
        raise DatasetError(f"{csv_path}: line {line_number}: empty image name")
    if not caption:
        raise DatasetError(f"{csv_path}: line {line_number}: empty caption for image {image!r}")
    split = None
    if "split" in values:
        split = values["split"].strip()
        if split not in SPLITS:
            raise DatasetError(
                f"{csv_path}: line {line_number}: split {split!r} for image {image!r}; valid splits: {', '.join(SPLITS)}"
            )
    return CaptionRow(line_number=line_number, image=image, caption=caption, split=split)


def captions_by_image(rows: Iterable[CaptionRow]) -> dict[str, list[str]]:
    """Image name -> its captions in row order; images in the order of their first row."""
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(row.image, []).append(row.caption)
    return captions


def read_caption_csv(csv_path: str | Path, images_dir: str | Path) -> list[CaptionedImage]:
    """Every image of a caption table, one ``CaptionedImage`` each; all must be on disk.

    The table is read by ``read_caption_rows`` (a split column, if there is one, is checked
    but not used). Images come back in the order of their first row, captions in row order;
    image names are paths relative to ``images_dir``. Unlike ``captioned_split`` nothing is
    skipped: raises DatasetError for the table's errors, or when images named in it are not
    on disk (how many, and the first few names). A table without rows gives an empty list
    (``load_split`` reports the empty split).
    """
    csv_path = Path(csv_path)
    images_dir = Path(images_dir)
    captions = captions_by_image(read_caption_rows(csv_path, allow_empty=True))
    missing = [name for name in captions if not (images_dir / name).is_file()]
    if missing:
        raise DatasetError(
            f"{csv_path}: {len(missing)} of {len(captions)} images named in the file "
            f"are missing from {images_dir}: {shown_names(missing)}"
        )
    return [CaptionedImage(image_path=str(images_dir / name), captions=tuple(captions[name])) for name in captions]


def read_json(path: Path, what: str):
    """The parsed content of a JSON file; ``what`` names the file in the not-found error.

    Raises DatasetError naming the file when it is missing, not UTF-8 or not JSON.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not a JSON file: {error}") from None


def table_split_names(rows: Sequence[CaptionRow], split: str, csv_path: Path) -> list[str]:
    """The images of ``split``: from the split column if the table has one, else the sorted-name rule."""
    if rows[0].split is None:
        return deterministic_split(captions_by_image(rows), split)
    first_split: dict[str, CaptionRow] = {}
    for row in rows:
        first = first_split.setdefault(row.image, row)
        if row.split != first.split:
            raise DatasetError(
                f"{csv_path}: line {row.line_number}: image {row.image!r} is in split {row.split!r} here "
                f"but in {first.split!r} on line {first.line_number}"
            )
    return [image for image, row in first_split.items() if row.split == split]


def deterministic_split(image_names: Iterable[str], split: str) -> list[str]:
    """The sorted names of ``split`` under the sorted-name rule of this module's docstring."""
    names = sorted(set(image_names))
    held_out = min(HELD_OUT_IMAGES, math.ceil(len(names) / HELD_OUT_DIVISOR))
    val_start = max(0, len(names) - 2 * held_out)
    test_start = max(0, len(names) - held_out)
    return {"train": names[:val_start], "val": names[val_start:test_start], "test": names[test_start:]}[split]


def shown_names(names: Sequence[str]) -> str:
    """The first few names, comma separated, with " ..." when there are more."""
    more = " ..." if len(names) > MISSING_NAMES_SHOWN else ""
    return ", ".join(names[:MISSING_NAMES_SHOWN]) + more


def check_skipped(skipped: Sequence[str], total: int, problem: str) -> None:
    """Warns about skipped images, or raises DatasetError when more than 1 % of ``total`` are.

    problem: where and why, e.g. "captions.txt: 2 of 6000 train images it captions are
    missing from Images"; the first skipped names are appended.
    """
    if not skipped:
        return
    message = f"{problem}: {shown_names(skipped)}"
    if len(skipped) > MAX_SKIPPED_FRACTION * total:
        raise DatasetError(f"{message} (more than {MAX_SKIPPED_FRACTION:.0%} of the split; an incomplete copy?)")
    logger.warning("%s; skipped (at most %.0f%% of a split may be)", message, 100 * MAX_SKIPPED_FRACTION)


def captioned_split(
    names: Iterable[str],
    captions: dict[str, list[str]],
    images_dir: Path,
    *,
    split: str,
    names_file: Path | str,
    caption_file: Path | str,
) -> list[CaptionedImage]:
    """One ``CaptionedImage`` per name of the split, in the order of ``names``.

    names: image names (paths relative to ``images_dir``) of the split; repeats are dropped.
    captions: image name -> captions, as read from ``caption_file``.
    names_file: the file that put these names in the split (split file, Karpathy file, or
    the caption file itself); error messages name it.
    Raises DatasetError for an empty split or too many skipped images (see the module docstring).
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise DatasetError(f"{names_file}: no {split} images")
    uncaptioned = [name for name in names if name not in captions]
    problem = f"{len(uncaptioned)} of {len(names)} {split} images have no captions in {caption_file}"
    check_skipped(uncaptioned, len(names), f"{names_file}: {problem}")
    captioned = [name for name in names if name in captions]
    missing = [name for name in captioned if not (images_dir / name).is_file()]
    problem = f"{len(missing)} of {len(names)} {split} images it captions are missing from {images_dir}"
    check_skipped(missing, len(names), f"{caption_file}: {problem}")
    missing = set(missing)
    return [
        CaptionedImage(image_path=str(images_dir / name), captions=tuple(captions[name]))
        for name in captioned
        if name not in missing
    ]


def find_images_dir(
    root: Path, images_dir: str, candidates: Sequence[str], names: Sequence[str], caption_file: Path
) -> Path:
    """``root / images_dir`` when set, else the first candidate folder holding one of the first ``names``.

    With no names (an empty split, reported later) the first existing candidate, else root.
    """
    if images_dir:
        path = root / images_dir
        if not path.is_dir():
            raise DatasetError(f"{path}: images folder not found (data.images_dir = {images_dir!r})")
        return path
    samples = list(names)[:IMAGES_DIR_SAMPLES]
    for candidate in candidates:
        path = root / candidate
        if path.is_dir() and (not samples or any((path / name).is_file() for name in samples)):
            return path
    if not samples:
        return root
    looked_in = ", ".join(f"{root / candidate}/" for candidate in candidates)
    raise DatasetError(
        f"{caption_file}: no images folder holds its images (e.g. {samples[0]}); looked in {looked_in}; "
        "set data.images_dir"
    )


def load_split(data_config, split: str) -> list[CaptionedImage]:
    """One split of the table ``root / data.csv_file`` (registered as "csv")."""
    root = Path(data_config.root)
    csv_path = root / data_config.csv_file
    rows = read_caption_rows(csv_path)
    names = table_split_names(rows, split, csv_path)
    images_dir = find_images_dir(root, data_config.images_dir, IMAGES_DIR_CANDIDATES, names, csv_path)
    return captioned_split(
        names, captions_by_image(rows), images_dir, split=split, names_file=csv_path, caption_file=csv_path
    )
