"""make inspect: PNGs of what every encoder makes of an image, from a config or a trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.captioner import Captioner
from captioning.cli import main
from captioning.config import load_config
from captioning.data.images import NORMALIZATIONS, displayable
from captioning.models.caption_model import image_shape
from captioning.models.encoders import ENCODERS, build_encoder
from captioning.reports.inspection import (
    DPI,
    GRID_FIGURE,
    INPUT_FIGURE,
    TOP_CHANNELS,
    filter_patches,
    inspect,
    inspect_image,
    strongest_channels,
)

DEFAULT_EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "shapes_conv_gru.toml")
INPUT_PIXELS = (round(INPUT_FIGURE[0] * DPI), round(INPUT_FIGURE[1] * DPI))
GRID_PIXELS = (round(GRID_FIGURE[0] * DPI), round(GRID_FIGURE[1] * DPI))
SMALL_ENCODERS = {  # weights none, small images: each builds in seconds
    "conv_stack": ["encoder.filters=[4, 8]"],
    "vgg16": [],
    "mobilenet": ["encoder.alpha=0.25"],
    "resnet50": [],
    "inception_v3": ["images.x_size=75", "images.y_size=75"],  # InceptionV3 needs 75 px
    "efficientnet_b0": [],
}


def test_every_registered_encoder_is_inspected():
    assert set(SMALL_ENCODERS) == set(ENCODERS)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A photo-like test image: smooth colour gradients with a bright square."""
    rows, columns = np.mgrid[0:60, 0:80]
    pixels = np.stack([rows * 4, columns * 3, 255 - rows * 2], axis=-1).astype(np.uint8)
    pixels[20:40, 30:50] = 255
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def small_config(name):
    return load_config(None, [f"encoder.name={name}", "encoder.weights=none", "images.x_size=32", "images.y_size=32",
                              *SMALL_ENCODERS[name]])


def check_png(path, size):
    """A real PNG of ``size`` pixels with something drawn on it (not one flat colour)."""
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == size, path
        pixels = np.asarray(picture.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path} is nearly blank"


@pytest.mark.slow
@pytest.mark.parametrize("encoder_name", sorted(SMALL_ENCODERS))
def test_inspect_writes_input_filters_and_one_feature_grid_per_block(encoder_name, photo, tmp_path):
    config = small_config(encoder_name)
    written = inspect_image(photo, tmp_path, config, source="test")
    encoder = build_encoder(config.encoder, image_shape(config))
    blocks = encoder.feature_maps(np.zeros((1, *image_shape(config)), "float32"))
    names = [path.name for path in written]
    assert names[0] == "input.png" and names[1].startswith("filters_")
    # One grid per block, numbered (InceptionV3's layer names change from one build to the next).
    assert [name.split("_", 2)[:2] for name in names[2:]] == [["features", str(number)] for number in range(len(blocks))]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)  # nothing else, no temporaries
    check_png(written[0], INPUT_PIXELS)
    for path in written[1:]:
        check_png(path, GRID_PIXELS)
    # Blocks go from the image's resolution down to the encoder's region grid.
    sizes = [tuple(feature_map.shape[1:3]) for _, feature_map in blocks]
    assert len(sizes) >= 2 and all(larger[0] * larger[1] > smaller[0] * smaller[1]
                                   for larger, smaller in zip(sizes, sizes[1:]))
    assert sizes[-1] == tuple(encoder.grid_shape(image_shape(config)))


def test_conv_stack_blocks_are_its_pooling_outputs_and_vgg16_its_last_layer_at_each_resolution():
    conv_stack = build_encoder(small_config("conv_stack").encoder, (32, 32, 3))
    assert [(name, tuple(shape.shape[1:])) for name, shape in conv_stack.feature_maps(np.zeros((1, 32, 32, 3)))] == [
        ("pool_0", (16, 16, 4)), ("pool_1", (8, 8, 8))]
    vgg16 = build_encoder(small_config("vgg16").encoder, (32, 32, 3))
    assert [name for name, _ in vgg16.feature_maps(np.zeros((1, 32, 32, 3), "float32"))] == [
        "block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"]
    assert vgg16.first_convolution().name == "block1_conv1"


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_the_input_picture_undoes_each_normalization(normalization):
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    shown = displayable(NORMALIZATIONS[normalization](pixels), normalization)
    np.testing.assert_allclose(shown, pixels / 255.0, atol=1e-5)


def test_strongest_channels_rank_by_mean_activation():
    feature_map = np.zeros((2, 2, 20), np.float32)
    feature_map[..., 7] = 5.0
    feature_map[0, 0, 3] = 8.0  # mean 2: second
    feature_map[..., 12] = -1.0  # below the all-zero channels
    ranked = strongest_channels(feature_map)
    assert len(ranked) == TOP_CHANNELS and list(ranked[:2]) == [7, 3] and 12 not in ranked


def test_filter_patches_are_rgb_and_each_scaled_to_its_own_range():
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = 10.0  # filter 0: one strong weight on the first input channel
    kernel[1, 1, 2, 1] = -0.1  # filter 1: one weak negative weight on the last
    patches = filter_patches(kernel, bgr=False)
    assert patches.shape == (2, 3, 3, 3) and patches.min() == 0.0 and patches.max() == 1.0
    assert patches[0, 0, 0, 0] == 1.0 and patches[1, 1, 1, 2] == 0.0
    # A BGR-reading kernel's first input channel is blue: shown in the last (RGB) channel.
    assert filter_patches(kernel, bgr=True)[0, 0, 0, 2] == 1.0


def test_a_run_captions_the_titles_and_draws_its_attention(trained_attention_run, photo, tmp_path):
    written = inspect(photo, tmp_path, run_dir=trained_attention_run)
    names = [path.name for path in written]
    assert names[0] == "input.png" and names[-1] == "attention.png"
    assert len([name for name in names if name.startswith("features_")]) == 2  # tiny config: two conv blocks
    caption = Captioner.from_run(trained_attention_run).caption_paths([str(photo)])[0]
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width > 100 and picture.height > 100
            if path.name != "attention.png":  # attention_plot's own title is the caption
                assert f"caption: {caption}" in picture.info["Description"].replace("\n", " ")


def test_a_run_without_attention_draws_no_attention_picture(trained_run, photo, tmp_path):
    names = [path.name for path in inspect(photo, tmp_path, run_dir=trained_run)]
    assert "attention.png" not in names and names[0] == "input.png"


def test_cli_inspect_prints_the_written_files(photo, tmp_path, capsys):
    code = main(["inspect", str(photo), "--experiment", DEFAULT_EXPERIMENT,
                 "--set", "encoder.filters=[4, 8]", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = captured.out.split()
    assert [line.rsplit("/", 1)[-1] for line in printed] == ["input.png", "filters_conv_0.png",
                                                             "features_0_pool_0.png", "features_1_pool_1.png"]
    assert all((tmp_path / "out" / line.rsplit("/", 1)[-1]).is_file() for line in printed)


@pytest.mark.parametrize("arguments, expected", [
    (["--experiment", DEFAULT_EXPERIMENT, "--set", "encoder.name=resnet9"], "unknown encoder 'resnet9'"),
    (["--run", "no_such_run"], "not a run directory"),
    (["--run", "no_such_run", "--experiment", DEFAULT_EXPERIMENT], "not both"),
])
def test_cli_inspect_errors_are_one_line(photo, tmp_path, capsys, arguments, expected):
    code = main(["inspect", str(photo), "--out", str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_cli_inspect_of_an_unreadable_image_names_the_file(tmp_path, capsys):
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"not an image")
    code = main(["inspect", str(broken), "--experiment", DEFAULT_EXPERIMENT])
    err = capsys.readouterr().err
    assert code == 2 and "notes.png" in err and "not an image" in err and len(err.strip().splitlines()) == 1
