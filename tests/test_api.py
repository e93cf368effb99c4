"""The Python API: from captioning import Captioner, load, load_config, train."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.captioner import Captioner, load
from captioning.data.images import read_rgb

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_api_imports_lazily_and_train_is_the_training_function():
    script = "\n".join([
        "import sys",
        "import captioning",
        "assert 'tensorflow' not in sys.modules, 'import captioning must not start TensorFlow'",
        "from captioning import Captioner, load, load_config, train",
        "import captioning.training.loop as training_module",
        "from captioning.captioner import Captioner as real_captioner, load as real_load",
        "assert Captioner is real_captioner and load is real_load and train is training_module.train",
        "print(load_config(None, ['decoder.units=8']).decoder.units)",
    ])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPOSITORY_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"


def test_caption_takes_paths_pil_images_arrays_and_lists(exported_model, shapes_test_images):
    captioner = load(exported_model)
    path = shapes_test_images[0]
    expected = captioner.caption_paths([path])[0]
    pixels = read_rgb(path)  # (height, width, 3) uint8
    assert expected and captioner.caption(path) == expected and captioner.caption(Path(path)) == expected
    assert captioner.caption(Image.open(path)) == expected
    assert captioner.caption(pixels) == expected
    assert captioner.caption(pixels.astype(np.float32) / 255.0) == expected
    many = captioner.caption([path, Image.open(shapes_test_images[1]), pixels, shapes_test_images[1]], batch_size=3)
    assert many == [expected, captioner.caption_paths([shapes_test_images[1]])[0], expected,
                    captioner.caption_paths([shapes_test_images[1]])[0]]


def test_caption_refuses_arrays_it_cannot_read(exported_model):
    captioner = load(exported_model)
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*pass uint8"):
        captioner.caption(np.full((8, 8, 3), 200.0))
    with pytest.raises(ValueError, match=r"\(height, width, 3\) RGB, got shape \(8, 8\)"):
        captioner.caption(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="cannot caption a int"):
        captioner.caption(3)


def test_load_takes_a_run_directory_or_a_model_file(exported_model, trained_run, shapes_test_images):
    from_run, from_file = load(trained_run), load(exported_model)
    assert isinstance(from_run, Captioner) and isinstance(from_file, Captioner)
    assert from_run.caption(shapes_test_images[:4]) == from_file.caption(shapes_test_images[:4])
