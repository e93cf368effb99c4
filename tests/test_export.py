"""One-file models: make export writes a .keras file that captions as the run did, alone."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from captioning.captioner import Captioner, load
from captioning.cli import DEFAULT_MODEL, main
from captioning.config import to_dict
from captioning.data.vocabulary import Vocabulary
from captioning.models.model_file import ModelFileError, PackagedCaptioner, export_run, read_model_file
from captioning.runs import load_run_config

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
# The experiments' data.root is ../shared/data/flickr8k; a git worktree sits one level deeper.
FLICKR8K_CANDIDATES = [folder / "shared" / "data" / "flickr8k" / "Flicker8k_Dataset"
                       for folder in (REPOSITORY_ROOT, REPOSITORY_ROOT.parent, REPOSITORY_ROOT.parents[1])]


def test_the_file_holds_config_weights_and_vocabulary_asset(exported_model, trained_run):
    with zipfile.ZipFile(exported_model) as archive:
        names = archive.namelist()
        saved = json.loads(archive.read("config.json"))
        vocabulary_assets = [name for name in names if name.startswith("assets/") and name.endswith("vocabulary.json")]
        assert len(vocabulary_assets) == 1
        tokens = json.loads(archive.read(vocabulary_assets[0]))["tokens"]
    assert "model.weights.h5" in names
    assert saved["registered_name"] == "captioning>PackagedCaptioner"
    assert tokens == Vocabulary.load(trained_run / "vocabulary.json").tokens
    expected = to_dict(load_run_config(trained_run, ["images.cache=false"]))
    assert saved["config"]["experiment"] == expected  # image size, encoder (normalization), generation defaults


def test_keras_loads_it_in_safe_mode_with_no_run_directory(exported_model, trained_run):
    packaged = keras.saving.load_model(exported_model, safe_mode=True)
    assert isinstance(packaged, PackagedCaptioner)
    assert packaged.vocabulary().tokens == Vocabulary.load(trained_run / "vocabulary.json").tokens
    run_captioner = Captioner.from_run(trained_run)
    rng = np.random.default_rng(0)
    inputs = {"images": rng.random((2, 32, 32, 3), dtype=np.float32),
              "captions": rng.integers(1, packaged.vocab_size, (2, 2, 5)).astype("int32")}
    # the same weights, bit for bit: the same logits
    np.testing.assert_array_equal(np.asarray(packaged(inputs)), np.asarray(run_captioner.model(inputs)))


@pytest.mark.parametrize("overrides", [[], ["generation.sampler=beam", "generation.beam_width=3"]])
def test_captions_are_identical_before_and_after_export(exported_model, trained_run, shapes_test_images, overrides):
    before = Captioner.from_run(trained_run, overrides).caption_paths(shapes_test_images)
    after = Captioner.from_model_file(exported_model, overrides).caption_paths(shapes_test_images)
    assert after == before and all(before)


def test_top_beams_are_identical_before_and_after_export(exported_model, trained_run, shapes_test_images):
    before = Captioner.from_run(trained_run).top_captions(shapes_test_images[0], 3)
    after = load(exported_model).top_captions(shapes_test_images[0], 3)
    assert after == before and len(after) == 3


def test_caption_command_with_model_prints_what_the_run_prints(exported_model, trained_run, shapes_test_images, capsys):
    assert main(["caption", shapes_test_images[0], "--run", str(trained_run)]) == 0
    from_run = capsys.readouterr().out
    assert main(["caption", shapes_test_images[0], "--model", str(exported_model)]) == 0
    assert capsys.readouterr().out == from_run and from_run.strip()


def test_export_command_writes_a_loadable_file(trained_run, tmp_path, capsys):
    out = tmp_path / "sub" / "model.keras"
    assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "conv_stack" in printed
    assert read_model_file(out).vocab_size == Vocabulary.load(trained_run / "vocabulary.json").size


@pytest.mark.parametrize("content, message", [
    (b"just some text", "not a .keras zip archive"),
    (None, "model file not found"),
])
def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "notes.keras"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        read_model_file(path)
    image = tmp_path / "photo.png"
    keras.utils.save_img(image, np.zeros((8, 8, 3)))
    assert main(["caption", str(image), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "notes.keras" in err and message in err


def test_another_keras_model_is_refused_by_name(tmp_path):
    path = tmp_path / "classifier.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    with pytest.raises(ModelFileError, match=r"classifier\.keras: a Keras file, but not a captioning model"):
        load(path)


def test_export_refuses_another_suffix_and_a_model_file_only_takes_generation_overrides(trained_run, exported_model,
                                                                                       tmp_path):
    with pytest.raises(ModelFileError, match=r"must end in \.keras"):
        export_run(trained_run, tmp_path / "model.h5")
    with pytest.raises(ValueError, match="decoder.units=8.*only generation"):
        Captioner.from_model_file(exported_model, ["decoder.units=8"])


@pytest.mark.slow
def test_the_shipped_flickr8k_model_captions_a_real_photo():
    """models/flickr8k.keras (models/README.md) on a Flickr8k photo of a dog on grass."""
    photos = [folder / "1001773457_577c3a7d70.jpg" for folder in FLICKR8K_CANDIDATES]
    photo = next((path for path in photos if path.is_file()), photos[0])
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"{DEFAULT_MODEL} is missing (it is committed to the repository; is this a partial checkout?)")
    assert DEFAULT_MODEL.stat().st_size <= 30e6
    if not photo.is_file():
        pytest.skip(f"{photo} is missing (the Flickr8k images are not on this machine)")
    captioner = load(DEFAULT_MODEL)
    caption = captioner.caption(str(photo))
    words = caption.split()
    assert len(words) >= 4 and ("dog" in words or "dogs" in words), caption
    assert not {"square", "circle", "triangle"} & set(words), caption  # not the shapes vocabulary
