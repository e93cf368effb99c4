"""Trains the tiny config under one or more strategies; test_distribution.py runs it in a
subprocess, because TensorFlow's devices are fixed when it starts.

    python tests/strategy_training_run.py OUT_DIR --strategies default mirrored [--devices N]
        [--interrupt] [--no-evaluation] [--set SECTION.FIELD=VALUE ...]

Each strategy trains into OUT_DIR/<strategy>/run; with --interrupt every strategy but
"default" is interrupted after its first epoch and resumed. With --no-evaluation the run
is not scored on its evaluation split: metrics.json then holds only the training facts. A
scored run gets conftest's METEOR stand-in (no java start), like the tests in pytest. Writes OUT_DIR/<strategy>.json
(OUT_DIR/multi_worker-worker<i>.json for worker i of several):
{"replicas", "initial_weights" (sha256 of the weights as built), "history" (state.json's),
"epochs_done", "epochs_before_interruption", "finished" (metrics.json written)}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # captioning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--strategies", nargs="+", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--interrupt", action="store_true")
    parser.add_argument("--no-evaluation", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    arguments = parser.parse_args()

    import tensorflow as tf

    if arguments.devices > 1:  # before anything initializes TensorFlow
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * arguments.devices)

    import keras
    import numpy as np
    from conftest import METEOR_STAND_IN, tiny_config

    import captioning.training.loop as train_module
    import captioning.training.phases as phases_module
    from captioning.evaluation import coco_metrics
    from captioning.files import write_json
    from captioning.training.checkpoints import TrainingCheckpoint
    from captioning.training.distribution import current_worker

    keras.config.disable_traceback_filtering()  # a failure in a subprocess shows its whole stack
    out_dir = Path(arguments.out_dir)
    original_compile = phases_module.compile_model
    original_on_epoch_end = TrainingCheckpoint.on_epoch_end

    def crash_after_first_epoch(self, epoch, logs=None):
        original_on_epoch_end(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")

    if arguments.no_evaluation:  # the facts training gathered, unscored
        train_module.evaluate_run = lambda run_dir, facts: write_json(Path(run_dir) / "metrics.json", facts) or facts
    # The records compare losses and weights, never METEOR: conftest's stand-in spares each
    # scored run a java start (about 10 s on the shared 2-core machine).
    coco_metrics.meteor_score = lambda references, hypotheses: METEOR_STAND_IN

    for strategy in arguments.strategies:
        config = tiny_config(out_dir / "data", f"runtime.strategy={strategy}", *arguments.overrides)
        run_dir = out_dir / strategy / "run"
        record = {}

        def compile_and_record(model, runtime, learning_rate):  # the weights as built, before any step
            digest = hashlib.sha256()
            for weight in model.get_weights():
                digest.update(np.ascontiguousarray(weight).tobytes())
            record.setdefault("initial_weights", digest.hexdigest())
            record["replicas"] = tf.distribute.get_strategy().num_replicas_in_sync
            original_compile(model, runtime, learning_rate)

        phases_module.compile_model = compile_and_record
        if arguments.interrupt and strategy != "default":
            TrainingCheckpoint.on_epoch_end = crash_after_first_epoch
            try:
                train_module.train(config, run_dir, verbose=0)
            except KeyboardInterrupt:
                pass
            TrainingCheckpoint.on_epoch_end = original_on_epoch_end
            state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
            record["epochs_before_interruption"] = state["epochs_done"]
        train_module.train(config, run_dir, verbose=0)
        state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        record.update(history=state["history"], epochs_done=state["epochs_done"],
                      finished=(run_dir / "metrics.json").is_file())
        worker = current_worker(config.runtime)
        name = f"{strategy}-worker{worker.index}" if worker.count > 1 else strategy
        (out_dir / f"{name}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
