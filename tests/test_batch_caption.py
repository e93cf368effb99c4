"""Batch captioning: many files and folders in, one row per image out; bad files are rows too."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from captioning.apps.batch_caption import BatchCaptionError, image_paths
from captioning.captioner import load
from captioning.cli import main


def save_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_folders_give_their_images_sorted_by_extension_at_any_depth(tmp_path):
    folder = tmp_path / "photos"
    b, a, nested = save_image(folder / "b.PNG"), save_image(folder / "a.jpg"), save_image(folder / "z" / "c.png")
    (folder / "notes.txt").write_text("not an image")
    save_image(folder / ".hidden" / "d.png")
    single = save_image(tmp_path / "single.png")
    assert image_paths([single, str(folder), "missing.jpg"]) == [single, a, b, nested, "missing.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchCaptionError, match="empty: no images in this folder"):
        image_paths([str(tmp_path / "empty")])


def test_csv_has_a_row_per_image_and_a_bad_file_is_a_row_with_its_error(exported_model, shapes_test_images,
                                                                         tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for index, path in enumerate(shapes_test_images[2:5]):
        Image.open(path).save(folder / f"{index}.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "captions.csv"
    code = main(["caption", shapes_test_images[0], str(broken), str(folder), shapes_test_images[1],
                 "--model", str(exported_model), "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed
    assert "broken.jpg" in captured.err and "wrote 6 rows" in captured.out
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected_paths = [shapes_test_images[0], str(broken), *sorted(str(path) for path in folder.glob("*.png")),
                      shapes_test_images[1]]
    assert [row["path"] for row in rows] == expected_paths
    assert list(rows[0]) == ["path", "caption", "error"]
    assert rows[1]["caption"] == "" and "not an image" in rows[1]["error"]
    good = [row for row in rows if not row["error"]]
    assert len(good) == 5
    one_by_one = load(exported_model).caption_paths([row["path"] for row in good], batch_size=1)
    assert [row["caption"] for row in good] == one_by_one and all(one_by_one)


def test_jsonl_with_top_has_each_beam_and_its_log_probability(exported_model, shapes_test_images, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    code = main(["caption", *shapes_test_images[:3], "--model", str(exported_model), "--out", str(out),
                 "--beam", "3", "--top", "2"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["path"] for row in rows] == shapes_test_images[:3]
    captioner = load(exported_model, ["generation.sampler=beam", "generation.beam_width=3"])
    for row in rows:
        assert set(row) == {"path", "caption", "log_probability", "caption_2", "log_probability_2", "error"}
        assert row["error"] == "" and row["log_probability"] >= row["log_probability_2"]
        best, second = captioner.top_captions(row["path"], 2)
        assert (row["caption"], row["caption_2"]) == (best[0], second[0])
        assert row["log_probability"] == pytest.approx(best[1], abs=1e-3)


def test_without_out_several_images_print_a_line_each(exported_model, shapes_test_images, tmp_path, capsys):
    missing = str(tmp_path / "gone.png")
    code = main(["caption", shapes_test_images[0], missing, "--model", str(exported_model)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert lines[0].startswith(shapes_test_images[0] + "\t") and len(lines[0].split("\t")[1]) > 0
    assert lines[1].startswith(missing + "\terror: ") and "not found" in lines[1]


def test_an_unknown_output_format_fails_before_the_model_loads(shapes_test_images, tmp_path, capsys):
    code = main(["caption", shapes_test_images[0], "--model", str(tmp_path / "absent.keras"),
                 "--out", str(tmp_path / "captions.xlsx")])
    err = capsys.readouterr().err
    assert code == 2 and "captions.xlsx: the output must end in .csv or .jsonl" in err
