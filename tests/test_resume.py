"""Mid-epoch checkpoints: a run killed with SIGKILL at random steps ends as an uninterrupted one.

Where this is bit-identical (what the kill test checks, on CPU): one device, no
augmentation. The weights and optimizer slots come back from the checkpoint file, the
dropout generators' states and the loss tracker's running sums from state.json, and the
resumed epoch rebuilds its batches in the same seeded order and skips those already
trained on (pipeline.epoch_seed), so the run ends with the same weights, history and
metrics, to the bit.

Where it is not: with ``images.augment`` the augmentation layers' random states live in the
tf.data pipeline, not in the checkpoint, so a resumed epoch augments differently (same
batches, other flips and crops); under a multi-device strategy the all-reduce may sum in
another order; GPU kernels that are not deterministic (cuDNN's, without
TF_DETERMINISTIC_OPS=1) already differ between two uninterrupted runs.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from captioning.training.checkpoints import TrainingCheckpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, BATCH_SIZE, EPOCHS = 24, 4, 2
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH_SIZE
OVERRIDES = [
    "images.x_size=32", "images.y_size=32", "encoder.filters=[8, 16]",
    "decoder.embedding_dim=16", "decoder.units=32", "decoder.max_length=22",
    f"data.shapes_train_size={TRAIN_IMAGES}", "data.shapes_val_size=8", "data.shapes_test_size=8",
    "data.shapes_image_size=48", f"training.epochs={EPOCHS}", f"training.batch_size={BATCH_SIZE}",
    "training.validation_bleu_images=0", "runtime.checkpoint_every_steps=2",
]


def start_training(run_dir: Path, root: Path, first: bool) -> subprocess.Popen:
    """`make train` for a new run (first) or `make train RUN=run_dir` to resume it."""
    command = [sys.executable, "-m", "captioning", "train", "--run", str(run_dir)]
    if first:
        command += ["--set", *OVERRIDES, f"data.root={root / 'shapes'}", f"images.cache_dir={root / 'cache'}"]
    # PATH without java: METEOR (a java process, 10-20 s a call) is reported unavailable
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                                "PATH": os.path.dirname(sys.executable)}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def steps_done(run_dir: Path) -> int:
    """Training steps the run's checkpoint holds (finished epochs and the epoch in progress)."""
    try:
        state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return state["epochs_done"] * STEPS_PER_EPOCH + (state.get("mid_epoch") or {}).get("steps_done", 0)


def finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()[-3000:]


def run_results(run_dir: Path) -> tuple[dict, list[dict], dict]:
    """(metrics.json without its timings, history.csv rows, every array of model.weights.h5)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics = {name: value for name, value in metrics.items() if not name.endswith("_seconds") and name != "phases"}
    with open(run_dir / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    arrays = {}
    with h5py.File(run_dir / "model.weights.h5", "r") as weights:
        weights.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return metrics, history, arrays


@pytest.mark.slow
def test_a_run_killed_at_three_random_steps_ends_as_an_uninterrupted_one(tmp_path):
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = start_training(reference_dir, tmp_path, first=True)
    finished(reference)  # first: it also writes the shapes data both runs read

    generator = random.Random(24)
    kill_steps = sorted(generator.sample(range(1, EPOCHS * STEPS_PER_EPOCH - 1), 3))
    killed_at = []
    for launch, kill_step in enumerate(kill_steps):
        process = start_training(killed_dir, tmp_path, first=launch == 0)
        start = steps_done(killed_dir)
        deadline = time.monotonic() + 120
        while steps_done(killed_dir) < max(kill_step, start + 1):
            assert process.poll() is None, f"the run ended before step {kill_step}: {process.stdout.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint progress in 120 s"
            time.sleep(0.02)
        time.sleep(generator.uniform(0.0, 0.3))  # anywhere in the next steps, or inside a save
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(steps_done(killed_dir))
    finished(start_training(killed_dir, tmp_path, first=False))

    assert killed_at == sorted(killed_at) and killed_at[-1] < EPOCHS * STEPS_PER_EPOCH, killed_at
    reference_metrics, reference_history, reference_weights = run_results(reference_dir)
    metrics, history, weights = run_results(killed_dir)
    assert history == reference_history
    assert metrics == reference_metrics
    assert weights.keys() == reference_weights.keys()
    for name, array in reference_weights.items():
        np.testing.assert_array_equal(weights[name], array, err_msg=name)
    assert not list((killed_dir / "checkpoint").glob("*step*")), "a finished run keeps no mid-epoch weights"


@pytest.mark.slow
def test_a_state_written_before_mid_epoch_checkpoints_still_resumes(tmp_path):
    """Old state.json files lack mid_epoch and random_state: they resume at their last epoch."""
    import keras

    checkpoint_dir = tmp_path / "checkpoint"
    checkpoint_dir.mkdir()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dropout(0.5)(inputs)))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.save_weights(checkpoint_dir / "epoch-002.weights.h5")
    old_state = {"epochs_done": 2, "best_val_loss": 1.0, "best_epoch": 2, "epochs_without_improvement": 0,
                 "stopped_early": False, "weights_file": "epoch-002.weights.h5", "history": [], "training_seconds": 3.0}
    (checkpoint_dir / "state.json").write_text(json.dumps(old_state))
    checkpoint = TrainingCheckpoint(checkpoint_dir, checkpoint_dir / "best.weights.h5", tmp_path / "history.csv",
                                    patience=3, every_steps=2)
    assert checkpoint.restore(model) == 2
    assert checkpoint.steps_done_in(2) == 0
    assert (checkpoint_dir / "epoch-002.weights.h5").is_file()


def test_a_negative_checkpoint_interval_is_refused(tmp_path):
    from conftest import tiny_config

    from captioning.config import ConfigError
    from captioning.training.loop import train

    with pytest.raises(ConfigError, match="checkpoint_every_steps=-1"):
        train(tiny_config(tmp_path, "runtime.checkpoint_every_steps=-1"), tmp_path / "run", verbose=0)


def test_an_epochs_feature_batches_depend_on_the_seed_and_epoch_and_skip_whole_batches():
    from captioning.data.pipeline import feature_dataset

    generator = np.random.default_rng(0)
    features = generator.normal(size=(40, 3, 2)).astype(np.float16)  # (images, regions, channels)
    tokens = generator.integers(1, 9, size=(40, 2, 6)).astype(np.int32)  # (images, C, length)
    tokens[::3, :, 4:] = 0  # captions of several lengths, for the bucketing

    def epoch_batches(seed, epoch, skip_batches=0):
        dataset = feature_dataset(features, tokens, batch_size=4, shuffle=True, seed=seed, epoch=epoch,
                                  skip_batches=skip_batches)
        return [inputs["features"].numpy().tobytes() for inputs, _ in dataset]

    epoch_three = epoch_batches(seed=5, epoch=3)
    assert len(epoch_three) == 10
    assert epoch_batches(seed=5, epoch=3) == epoch_three  # a fresh pipeline: the same order
    assert epoch_batches(seed=5, epoch=3, skip_batches=4) == epoch_three[4:]
    assert epoch_batches(seed=5, epoch=2) != epoch_three
    assert epoch_batches(seed=6, epoch=3) != epoch_three
