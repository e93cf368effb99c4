"""runtime.strategy: worker identity from TF_CONFIG, feature-cache sharding, and mirrored
training on two logical CPU devices matching one device."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from captioning.config import ConfigError, EncoderConfig, ImagesConfig, RuntimeConfig
from captioning.data.datasets import load_split
from captioning.training.distribution import Worker, build_strategy, shard_bounds, worker_from_tf_config
from captioning.training.features import MANIFEST_FILE, FeatureCache, FeatureCacheError

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "strategy_training_run.py"
# Mirrored training and one device see the same batches from the same initial weights; the
# loss differs only because each replica averages over its own real tokens before the
# replicas are averaged (one device averages over all tokens at once): measured 6.5e-4
# relative on the first epoch of the tiny config (3.4772 vs 3.4795).
MIRRORED_RELATIVE_TOLERANCE = 5e-3
# dropout off (each replica would draw its own masks) and no batch norm (each replica
# would normalize with its own half batch's statistics): what remains is the same arithmetic.
SAME_ARITHMETIC = ["decoder.dropout=0.0", "encoder.batch_norm=false", "data.shapes_train_size=40",
                   "data.shapes_val_size=8", "data.shapes_test_size=4"]


def tf_config(workers: int, index: int, chief: bool = False, task_type: str = "worker") -> str:
    cluster = {"worker": [f"localhost:{2000 + number}" for number in range(workers)]}
    if chief:
        cluster["chief"] = ["localhost:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_no_tf_config_is_the_only_worker():
    assert worker_from_tf_config(None) == Worker(0, 1)
    assert worker_from_tf_config("") == Worker(0, 1)
    assert worker_from_tf_config('{"task": {"type": "worker", "index": 0}}') == Worker(0, 1)
    assert Worker(0, 1).is_chief


def test_workers_without_a_chief_count_from_zero():
    assert worker_from_tf_config(tf_config(3, 0)) == Worker(0, 3)
    assert worker_from_tf_config(tf_config(3, 2)) == Worker(2, 3)
    assert worker_from_tf_config(tf_config(3, 0)).is_chief
    assert not worker_from_tf_config(tf_config(3, 1)).is_chief


def test_a_chief_task_is_worker_zero_and_the_workers_follow():
    assert worker_from_tf_config(tf_config(2, 0, chief=True, task_type="chief")) == Worker(0, 3)
    assert worker_from_tf_config(tf_config(2, 0, chief=True)) == Worker(1, 3)
    assert worker_from_tf_config(tf_config(2, 1, chief=True)) == Worker(2, 3)


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not valid"),
    (tf_config(2, 0, task_type="evaluator"), "does not train"),
    (tf_config(2, 5), "not in its cluster of 2"),
])
def test_a_bad_tf_config_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        worker_from_tf_config(text)


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 33])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_disjoint_contiguous_and_balanced(total, count):
    bounds = [shard_bounds(total, Worker(index, count)) for index in range(count)]
    covered = [item for start, stop in bounds for item in range(start, stop)]
    assert covered == list(range(total))  # every item once, in worker order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_shard_of_a_worker_outside_the_cluster_is_refused():
    with pytest.raises(ValueError, match="worker 3 of 3"):
        shard_bounds(10, Worker(3, 3))


def test_an_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="default, mirrored, multi_worker"):
        build_strategy(RuntimeConfig(strategy="parameter_server"))


def test_the_default_strategy_is_one_replica():
    assert build_strategy(RuntimeConfig()).num_replicas_in_sync == 1


# ---------------------------------------------------------------------------------------
# Feature cache shards
# ---------------------------------------------------------------------------------------


def image_files(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"image_{index:03d}.png"
        path.write_bytes(b"stands for an image %d" % index)
        paths.append(str(path))
    return paths


def fake_encoder(encoded: list[str]):
    """encode_batches for the cache: image k's features are k + 0.25 * (region, channel) ids."""

    def encode_batches(paths, batch_size=4):
        encoded.extend(paths)
        for start in range(0, len(paths), batch_size):
            numbers = [int(Path(path).stem.split("_")[1]) for path in paths[start:start + batch_size]]
            grid = 0.25 * np.arange(6, dtype=np.float32).reshape(3, 2)  # (regions, channels)
            yield np.stack([number + grid for number in numbers])  # (batch, 3, 2)

    return encode_batches


def extract(cache: FeatureCache, paths, worker: Worker, encoded: list[str]) -> np.ndarray:
    return np.asarray(cache.features(paths, EncoderConfig(name="vgg16", weights="none"), ImagesConfig(), "vgg16",
                                     fake_encoder(encoded), batch_size=4, label="test", worker=worker))


def extract_in_parallel(cache: FeatureCache, paths, worker_count: int) -> tuple[dict, dict]:
    """Workers 1.. in threads, the chief here, as separate machines would run them over one
    shared folder; returns ({worker: features}, {worker: the paths it encoded})."""
    encoded = {index: [] for index in range(worker_count)}
    results, errors = {}, []

    def run_worker(index):
        try:
            results[index] = extract(cache, paths, Worker(index, worker_count), encoded[index])
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run_worker, args=(index,)) for index in range(1, worker_count)]
    for thread in threads:
        thread.start()
    run_worker(0)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results, encoded


@pytest.mark.parametrize("worker_count", [2, 3])
def test_sharded_extraction_joins_to_what_one_worker_computes(tmp_path, worker_count):
    paths = image_files(tmp_path / "images", 10)
    expected = extract(FeatureCache(tmp_path / "single"), paths, Worker(), [])
    cache = FeatureCache(tmp_path / "shared", stall_seconds=60)
    results, encoded = extract_in_parallel(cache, paths, worker_count)
    assert expected.shape == (10, 3, 2) and expected.dtype == np.float16
    for index in range(worker_count):
        np.testing.assert_array_equal(results[index], expected)
        start, stop = shard_bounds(10, Worker(index, worker_count))
        assert encoded[index] == paths[start:stop]  # each worker encoded its share only
    (folder,) = [path for path in (tmp_path / "shared").iterdir()]
    assert (folder / MANIFEST_FILE).is_file()
    assert not list(folder.glob("shard-*"))  # the chief removes the shards once joined
    again = []
    np.testing.assert_array_equal(extract(cache, paths, Worker(1, worker_count), again), expected)
    assert again == []  # a complete cache is reused by any worker


def test_a_worker_with_no_share_of_a_tiny_split_still_joins(tmp_path):
    paths = image_files(tmp_path / "images", 2)
    results, encoded = extract_in_parallel(FeatureCache(tmp_path / "shared", stall_seconds=60), paths, 3)
    assert encoded[2] == []
    expected = extract(FeatureCache(tmp_path / "single"), paths, Worker(), [])
    for index in range(3):
        np.testing.assert_array_equal(results[index], expected)


def test_a_missing_worker_stops_the_chief_with_advice(tmp_path):
    paths = image_files(tmp_path / "images", 6)
    cache = FeatureCache(tmp_path / "shared", stall_seconds=1.5)
    with pytest.raises(FeatureCacheError, match="feature_cache_shared=false"):
        extract(cache, paths, Worker(0, 2), [])


# ---------------------------------------------------------------------------------------
# Training under a strategy (subprocesses: the devices are fixed when TensorFlow starts)
# ---------------------------------------------------------------------------------------


def run_strategies(out_dir: Path, *arguments, environment=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), str(out_dir), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(environment or {})})


def finish(process: subprocess.Popen, timeout: int = 600) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]


@pytest.mark.slow
def test_mirrored_training_on_two_devices_matches_one_device_and_resumes(tmp_path):
    # Unscored, like the two-worker test below: the frozen-backbone test scores a mirrored run.
    finish(run_strategies(tmp_path, "--strategies", "default", "mirrored", "--devices", "2", "--interrupt",
                          "--no-evaluation", "--set", *SAME_ARITHMETIC))
    single = json.loads((tmp_path / "default.json").read_text())
    mirrored = json.loads((tmp_path / "mirrored.json").read_text())
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["initial_weights"] == single["initial_weights"]
    assert mirrored["epochs_before_interruption"] == 1  # interrupted, then resumed from its checkpoint
    assert mirrored["epochs_done"] == 2 and mirrored["finished"]
    first_single, first_mirrored = single["history"][0], mirrored["history"][0]
    for name in ("loss", "val_loss"):
        assert first_mirrored[name] == pytest.approx(first_single[name], rel=MIRRORED_RELATIVE_TOLERANCE), name
    assert first_mirrored["loss"] != first_single["loss"]  # the two replicas really split the batch


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


# Two workers on 127.0.0.1 (every `make test`): the smallest run that still crosses the
# process boundary: one epoch of two batches of 16 on 32 px shapes, unscored; 56 s on the shared
# 2-core machine under a load of 7 (three processes each import TensorFlow and trace the step).
TWO_WORKERS = [*SAME_ARITHMETIC, "training.epochs=1", "data.shapes_train_size=32", "data.shapes_val_size=8",
               "data.shapes_test_size=4"]
# Two workers of one CPU device each and one process mirrored over two logical CPU devices
# run the same replicas on the same batches from the same weights; only the order of the
# cross-replica sums may differ (float32 rounding).
TWO_WORKERS_RELATIVE_TOLERANCE = 1e-4


def start_two_workers(out_dir: Path, overrides: list[str], *arguments) -> list[subprocess.Popen]:
    """Workers 0 and 1 of a TF_CONFIG cluster on two free 127.0.0.1 ports, each training
    the tiny config under "multi_worker" into out_dir (one run directory, as on a shared disk)."""
    for split in ("train", "val", "test"):  # generated once, not by two workers at the same time
        load_split(tiny_config(out_dir / "data", *overrides).data, split)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [run_strategies(out_dir, "--strategies", "multi_worker", *arguments, "--set", *overrides,
                           environment={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                                 "task": {"type": "worker", "index": index}})})
            for index in range(2)]


def check_two_workers_against_mirrored(cluster_dir: Path, mirrored_path: Path, epochs: int) -> None:
    """The two workers' records (strategy_training_run.py) against the one-process mirrored record."""
    multi_worker = json.loads((cluster_dir / "multi_worker-worker0.json").read_text())
    other_worker = json.loads((cluster_dir / "multi_worker-worker1.json").read_text())
    mirrored = json.loads(mirrored_path.read_text())
    assert (multi_worker["replicas"], mirrored["replicas"]) == (2, 2)
    assert multi_worker["finished"]
    assert multi_worker["initial_weights"] == mirrored["initial_weights"] == other_worker["initial_weights"]
    assert len(multi_worker["history"]) == len(mirrored["history"]) == epochs
    assert other_worker["history"] == multi_worker["history"]  # the workers trained one model together
    for name in ("loss", "val_loss"):
        assert multi_worker["history"][0][name] == pytest.approx(mirrored["history"][0][name],
                                                                 rel=TWO_WORKERS_RELATIVE_TOLERANCE), name
    worker_checkpoint = cluster_dir / "multi_worker" / "run" / "checkpoint" / "worker-1" / "state.json"
    assert json.loads(worker_checkpoint.read_text())["epochs_done"] == epochs


@pytest.mark.slow
def test_two_worker_processes_on_this_machine_train_like_one_mirrored_process(tmp_path):
    """Two processes on 127.0.0.1 (TF_CONFIG) under MultiWorkerMirroredStrategy train the
    trainable conv_stack model while one process mirrored over two logical CPU devices
    trains the same, all three at once; none is scored on the test split. The workers'
    losses match the mirrored process's within float32 rounding (and the mirrored test
    above ties mirrored training to one device)."""
    workers = start_two_workers(tmp_path / "cluster", TWO_WORKERS, "--no-evaluation")
    reference = run_strategies(tmp_path / "reference", "--strategies", "mirrored", "--devices", "2",
                               "--no-evaluation", "--set", *TWO_WORKERS)
    for process in (*workers, reference):
        finish(process, timeout=300)
    check_two_workers_against_mirrored(tmp_path / "cluster", tmp_path / "reference" / "mirrored.json", epochs=1)


@pytest.mark.slow
def test_two_workers_with_a_frozen_backbone_extract_features_in_shards(tmp_path):
    """What the fast test leaves out: a frozen backbone (the feature cache extracted in
    shards by the two workers), two epochs, and scoring on the test split."""
    frozen = [*SAME_ARITHMETIC, "encoder.name=mobilenet", "encoder.weights=none", "encoder.alpha=0.25",
              f"images.feature_cache_dir={tmp_path / 'features'}"]
    workers = start_two_workers(tmp_path / "cluster", frozen)
    for worker in workers:
        finish(worker, timeout=900)
    finish(run_strategies(tmp_path / "mirrored", "--strategies", "mirrored", "--devices", "2", "--set", *frozen))
    check_two_workers_against_mirrored(tmp_path / "cluster", tmp_path / "mirrored" / "mirrored.json", epochs=2)
