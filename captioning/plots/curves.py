"""PNG plots: a run's training curves from its history, and comparisons of several runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from captioning.files import atomic_path  # noqa: E402


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Losses (loss, val_loss, ...) against the epoch number; beside them, when the history
    has it, validation BLEU-4 per epoch; a dashed line where a fine-tuning phase starts (rows
    carry their ``phase``) and a dotted one where the learning rate was lowered (rows carry
    their ``learning_rate`` with training.learning_rate_decay)."""
    names = [key for key in history[0] if key not in ("epoch", "phase", "learning_rate")] if history else []
    bleu_names = [name for name in names if "bleu" in name]
    loss_names = [name for name in names if name not in bleu_names]
    figure, axes = plt.subplots(1, 2 if bleu_names else 1, figsize=(11 if bleu_names else 6, 4), dpi=100,
                                squeeze=False)
    epochs = [row["epoch"] for row in history]
    phase_starts = [row["epoch"] for previous, row in zip(history, history[1:])
                    if row.get("phase", 1) != previous.get("phase", 1)]
    rate_cuts = rate_cut_epochs(history)
    panels = [(axes[0][0], loss_names, "masked cross-entropy")]
    if bleu_names:
        panels.append((axes[0][1], bleu_names, "BLEU-4 (greedy, early-stopping images)"))
    for axis, panel_names, label in panels:
        for name in panel_names:
            axis.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
        for epoch in phase_starts:
            axis.axvline(epoch - 0.5, color="gray", linestyle="--", label="fine-tuning starts")
        for number, epoch in enumerate(rate_cuts):
            axis.axvline(epoch - 0.5, color="gray", linestyle=":", label="learning rate lowered" if number == 0 else None)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0][0].set_title(title or "training curves")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def rate_cut_epochs(history: list[dict]) -> list[int]:
    """The epochs that trained at a lower learning rate than the epoch before them."""
    return [row["epoch"] for previous, row in zip(history, history[1:])
            if row.get("learning_rate") is not None and previous.get("learning_rate") is not None
            and float(row["learning_rate"]) < float(previous["learning_rate"])]


def plot_metric_bars(labels: list[str], values: dict[str, list[float]], path: str | Path,
                     errors: dict[str, list[float]] | None = None, title: str = "") -> None:
    """Grouped bars: one group per metric, one bar per label (run), error bars from ``errors``.

    values: metric name -> one value per label (NaN draws no bar; a metric with no value at
    all gets no place on its axis). CIDEr runs to 10 and would flatten BLEU's 0..1 bars, so the
    CIDEr scores (names ending in "cider") get a panel of their own.
    """
    measured = [name for name in values if any(value == value for value in values[name])]
    panels = [[name for name in measured if not name.endswith("cider")], [name for name in measured if name.endswith("cider")]]
    panels = [names for names in panels if names] or [list(values)]  # nothing measured: empty axes rather than no file
    figure, axes = plt.subplots(1, len(panels), figsize=(4 + 0.3 * len(labels) * len(values), 4.5), dpi=100,
                                squeeze=False, gridspec_kw={"width_ratios": [len(names) for names in panels]})
    width = 0.8 / len(labels)
    for axis, names in zip(axes[0], panels):
        for number, label in enumerate(labels):
            positions = [group + (number - (len(labels) - 1) / 2) * width for group in range(len(names))]
            axis.bar(positions, [values[name][number] for name in names], width, color=f"C{number % 10}",
                     yerr=[errors[name][number] for name in names] if errors else None, capsize=3, label=label)
        axis.set_xticks(range(len(names)), names)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score")
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title or "metrics")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def plot_learning_curves(histories: dict[str, list[list[dict]]], path: str | Path, title: str = "") -> None:
    """Validation loss (solid) and training loss (dashed) per epoch, one colour per label.

    histories: label -> the histories of its runs (one per seed), each as plot_training_curves takes.
    """
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    for number, (label, runs) in enumerate(histories.items()):
        for run_number, history in enumerate(run for run in runs if run):
            epochs = [row["epoch"] for row in history]
            for name, style in [("val_loss", "-"), ("loss", "--")]:
                if name in history[0]:
                    axis.plot(epochs, [row[name] for row in history], style, marker="o", markersize=3,
                              color=f"C{number % 10}", label=f"{label} {name}" if run_number == 0 else None)
    axis.set_xlabel("epoch")
    axis.set_ylabel("masked cross-entropy")
    axis.set_title(title or "learning curves: val_loss solid, loss dashed")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole numbers
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def plot_gradient_norms(rows: list[dict], path: str | Path, title: str = "") -> None:
    """One line per encoder convolution: its gradient norm against the training step, log scale.

    rows: ``{"step", "depth", "layer", "norm"}`` dicts, as gradients.GradientNormLogger records them.
    """
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    for depth in sorted({row["depth"] for row in rows}):
        layer_rows = [row for row in rows if row["depth"] == depth]
        axis.plot([row["step"] for row in layer_rows], [row["norm"] for row in layer_rows], marker="o", markersize=3,
                  color=f"C{(depth - 1) % 10}", label=f"{depth}: {layer_rows[0]['layer']}")
    axis.set_yscale("log")
    axis.set_xlabel("training step (first epoch)")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole numbers
    axis.set_ylabel("gradient norm (kernel and bias)")
    axis.set_title(title or "encoder gradient norms, input side first")
    finish_log_plot(figure, axis, path, legend=bool(rows))


def finish_log_plot(figure, axis, path: str | Path, legend: bool) -> None:
    """Grid on both log decades, a legend when there are lines, saved atomically as PNG."""
    axis.grid(alpha=0.3, which="both")
    if legend:
        axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def plot_layer_gradient_norms(layers: dict[str, list[tuple[str, float]]], path: str | Path, title: str = "") -> None:
    """One line per label (run or experiment): the mean first-epoch gradient norm of each
    encoder convolution against its depth (1 = next to the image), log scale.

    layers: label -> ``[(layer name, mean norm), ...]`` input side first (gradients.mean_norm_per_layer).
    """
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    deepest = max(layers.values(), key=len, default=[])
    for number, (label, norms) in enumerate(layers.items()):
        axis.plot(range(1, len(norms) + 1), [norm for _, norm in norms], marker="o", color=f"C{number % 10}", label=label)
    axis.set_xticks(range(1, len(deepest) + 1), [f"{depth}\n{name}" for depth, (name, _) in enumerate(deepest, start=1)],
                    fontsize="small")
    axis.set_yscale("log")
    axis.set_xlabel("encoder convolution (input side first)")
    axis.set_ylabel("mean gradient norm, first epoch")
    axis.set_title(title or "how much gradient reaches each encoder layer")
    finish_log_plot(figure, axis, path, legend=bool(layers))
