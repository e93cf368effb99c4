"""PNG plots of a run: training curves from its history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from captioning.files import atomic_path  # noqa: E402


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """One line per logged quantity (loss, val_loss, ...) against the epoch number."""
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    epochs = [row["epoch"] for row in history]
    for name in [key for key in history[0] if key != "epoch"] if history else []:
        axis.plot(epochs, [row.get(name) for row in history], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("masked cross-entropy")
    axis.set_title(title or "training curves")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
