"""Training on several devices or machines: the ``runtime.strategy`` switch.

    strategy = build_strategy(config.runtime)   # before any other TensorFlow work
    with strategy.scope():
        model = build_model(...); model.compile(...); model.fit(...)

- "default": TensorFlow's default strategy, one device; ``scope()`` changes nothing.
- "mirrored": ``tf.distribute.MirroredStrategy`` over every GPU of this machine (over its
  logical CPU devices when it has no GPU, which is how the tests run it). Each replica
  holds a copy of the weights; gradients are summed over replicas every step.
- "multi_worker": ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named by
  the ``TF_CONFIG`` environment variable (every machine runs the same command with its own
  ``task.index``; see the README). It must be created before TensorFlow runs any op.

``training.batch_size`` is the global batch: Keras splits each batch evenly over the
replicas (all GPUs of all workers), so the loss of one step is each replica's mean over
its real tokens, averaged over the replicas, and the learning rate is not rescaled.

Worker identity (``Worker``) comes from ``TF_CONFIG`` alone, so feature extraction can
shard its images by worker (``shard_bounds``) without asking TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os

from captioning.config import ConfigError, RuntimeConfig
from captioning.validate import check_strategy


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place in the cluster: ``index`` of ``count`` workers; 0 is the chief."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def worker_from_tf_config(text: str | None) -> Worker:
    """``TF_CONFIG``'s text -> this worker's position; no text (or no cluster) is one worker.

    TF_CONFIG = {"cluster": {"chief": [...]?, "worker": [host:port, ...]}, "task": {"type", "index"}}.
    With a "chief" task it is worker 0 and the workers follow it; without one, worker 0 is
    the chief (TensorFlow's convention). Evaluators and parameter servers train nothing.
    """
    if not text:
        return Worker()
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        task_type, task_index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"TF_CONFIG is not valid: {error}; expected JSON like "
                          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}') from None
    if not chiefs and not workers:
        return Worker()
    if task_type not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG task type '{task_type}' does not train; valid for training: chief, worker")
    tasks = len(chiefs) + len(workers)
    index = task_index if task_type == "chief" else len(chiefs) + task_index
    if not 0 <= index < tasks:
        raise ConfigError(f"TF_CONFIG task {task_type} {task_index} is not in its cluster of {tasks} tasks")
    return Worker(index=index, count=tasks)


def current_worker(runtime: RuntimeConfig) -> Worker:
    """This process's Worker: from TF_CONFIG under "multi_worker", the only worker otherwise."""
    if runtime.strategy != "multi_worker":
        return Worker()
    return worker_from_tf_config(os.environ.get("TF_CONFIG"))


def shard_bounds(total: int, worker: Worker) -> tuple[int, int]:
    """(start, stop): worker ``index``'s contiguous share of ``total`` items.

    The shares are disjoint, cover 0..total in worker order, and differ in size by at most
    one (the first ``total % count`` workers take one more).
    """
    if total < 0 or not 0 <= worker.index < worker.count:
        raise ValueError(f"cannot shard {total} items for worker {worker.index} of {worker.count}")
    base, extra = divmod(total, worker.count)
    start = worker.index * base + min(worker.index, extra)
    return start, start + base + (1 if worker.index < extra else 0)


def build_strategy(runtime: RuntimeConfig):
    """The tf.distribute strategy ``runtime.strategy`` names."""
    check_strategy(runtime)
    import tensorflow as tf

    if runtime.strategy == "default":
        return tf.distribute.get_strategy()
    if runtime.strategy == "mirrored":
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(gpus or [device.name for device in tf.config.list_logical_devices("CPU")])
    current_worker(runtime)  # a malformed TF_CONFIG is a ConfigError, not a TensorFlow traceback
    return tf.distribute.MultiWorkerMirroredStrategy()
