"""How much gradient reaches each convolution of the encoder during the first epoch.

With ``training.log_gradient_norms = true`` the run directory gets

    gradient_norms.csv   step, depth, layer, norm: one row per (measured step, convolution)
    gradient_norms.png   one line per convolution, norm against step, log scale

so the vanishing gradient of a deep sigmoid stack shows at a glance: sigmoid's derivative
is at most 1/4, so every layer between a convolution and the loss scales its gradient
down, and the first convolution's norm lies orders of magnitude below the last one's,
while relu's stay within one order. ``compare.py`` overlays runs' per-layer means.

How it is measured: a callback (``GradientNormLogger``) that, before the first step and
after every ``training.gradient_norm_interval``-th step of the first epoch, runs the
model on one fixed training batch under ``tf.GradientTape`` and takes, per convolution,
the norm of the loss's gradient with respect to its kernel and bias together. Chosen over
a custom ``CaptionModel.train_step`` that would record the gradients the optimizer applies:

- training itself is untouched: the same compiled Keras step, no second copy of its loss,
  optimizer and metric logic to drift from Keras', no cost at all when the flag is off;
- one fixed batch makes the steps comparable: a change of the norm is a change of the
  weights, not of which images the step happened to draw;
- the cost is paid only at the measured steps, and only in the first epoch.

What it gives up: the norms are those of one batch, not of every batch trained on. The
model runs with ``training=False``: dropout is off, so measuring neither draws from the
random streams training's dropout uses (the run stays what it would be without the flag)
nor adds mask noise; batch norm, where present, uses its moving statistics.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import keras
import tensorflow as tf

from captioning.files import write_text
from captioning.plots.curves import plot_gradient_norms

GRADIENT_NORMS_FILE = "gradient_norms.csv"
GRADIENT_NORMS_PLOT = "gradient_norms.png"
COLUMNS = ["step", "depth", "layer", "norm"]


def convolution_weights(encoder: keras.layers.Layer) -> list[tuple[str, list]]:
    """``[(layer name, [kernel, bias]), ...]`` for each trainable convolution, input side first.

    A convolution is a layer holding a 4-D kernel (height, width, in, out): Conv2D and
    depthwise alike. Variables are grouped by their layer's path, in the encoder's own
    variable order (the order the layers were built in).
    """
    by_layer: dict[str, list] = {}
    for variable in encoder.trainable_variables:
        layer_path = variable.path.rsplit("/", 1)[0]
        by_layer.setdefault(layer_path, []).append(variable)
    return [(layer_path.rsplit("/", 1)[-1], variables) for layer_path, variables in by_layer.items()
            if any(len(variable.shape) == 4 for variable in variables)]


class GradientNormLogger(keras.callbacks.Callback):
    """Writes the encoder convolutions' gradient norms of the first epoch (see the module docstring).

    batch: (inputs, targets) as the training dataset yields them, the same at every measurement.
    loss: the training loss, called as loss(targets, logits).
    interval: training steps between two measurements.
    """

    def __init__(self, batch, loss, interval: int, csv_path: Path, plot_path: Path, title: str = ""):
        super().__init__()
        self.inputs, self.targets = batch
        self.loss = loss
        self.interval = interval
        self.csv_path, self.plot_path = Path(csv_path), Path(plot_path)
        self.title = title
        self.rows: list[dict] = []
        self.epoch = None
        self._resumed_steps = 0  # first-epoch steps done before a mid-epoch checkpoint resumed the run
        self._layers = None
        self._norms = None

    def _compile(self):
        self._layers = convolution_weights(self.model.encoder)
        if not self._layers:
            raise ValueError("training.log_gradient_norms: the encoder has no trainable convolution to measure")
        variables = [variable for _, layer_variables in self._layers for variable in layer_variables]
        sizes = [len(layer_variables) for _, layer_variables in self._layers]

        @tf.function
        def norms(inputs, targets):
            with tf.GradientTape() as tape:
                logits = self.model(inputs, training=False)  # (batch, captions, length, vocab)
                loss = self.loss(targets, logits)
            gradients = tape.gradient(loss, variables)
            squares = [tf.zeros(()) if gradient is None else tf.reduce_sum(tf.square(gradient)) for gradient in gradients]
            per_layer, start = [], 0
            for size in sizes:
                per_layer.append(tf.sqrt(tf.add_n(squares[start:start + size])))
                start += size
            return tf.stack(per_layer)  # (convolutions,)

        self._norms = norms

    def measure(self, step: int) -> None:
        if self._norms is None:
            self._compile()
        norms = self._norms(self.inputs, self.targets).numpy()
        for depth, ((name, _), norm) in enumerate(zip(self._layers, norms), start=1):
            self.rows.append({"step": step, "depth": depth, "layer": name, "norm": float(norm)})

    def checkpoint_state(self) -> dict:
        """What a mid-epoch checkpoint keeps (checkpoints.TrainingCheckpoint.track_callbacks)."""
        return {"rows": self.rows}

    def restore_checkpoint_state(self, state: dict, steps_done: int) -> None:
        """A first epoch resumed after ``steps_done`` steps keeps the measurements made so far."""
        self.rows = list(state["rows"])
        self._resumed_steps = steps_done

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == 0 and not self._resumed_steps:  # a run resumed after its first epoch has its file already
            self.rows = []
            self.measure(0)

    def on_train_batch_end(self, batch, logs=None):
        step = self._resumed_steps + batch + 1
        if self.epoch == 0 and step % self.interval == 0:
            self.measure(step)

    def on_epoch_end(self, epoch, logs=None):
        self._resumed_steps = 0
        if epoch == 0:
            write_gradient_norms(self.rows, self.csv_path)
            plot_gradient_norms(self.rows, self.plot_path, title=self.title)


def write_gradient_norms(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_gradient_norms(path: Path) -> list[dict]:
    """gradient_norms.csv as ``[{"step": 0, "depth": 1, "layer": "conv_0", "norm": 0.01}, ...]``; [] without the file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path) as handle:
        return [{"step": int(row["step"]), "depth": int(row["depth"]), "layer": row["layer"], "norm": float(row["norm"])}
                for row in csv.DictReader(handle)]


def mean_norm_per_layer(run_dirs: list[Path]) -> list[tuple[str, float]]:
    """``[(layer, mean norm), ...]`` input side first: each layer's norm averaged over the
    measured steps of each run, then over the runs (seeds). [] when no run has the file."""
    per_depth: dict[int, tuple[str, list[float]]] = {}
    for run_dir in run_dirs:
        rows = read_gradient_norms(Path(run_dir) / GRADIENT_NORMS_FILE)
        for depth in sorted({row["depth"] for row in rows}):
            norms = [row["norm"] for row in rows if row["depth"] == depth]
            name = next(row["layer"] for row in rows if row["depth"] == depth)
            per_depth.setdefault(depth, (name, []))[1].append(math.fsum(norms) / len(norms))
    return [(name, math.fsum(means) / len(means)) for _, (name, means) in sorted(per_depth.items())]
