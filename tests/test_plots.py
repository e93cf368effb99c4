"""Training-curve plots: what goes on which panel."""

from __future__ import annotations

from PIL import Image

from captioning.plots.curves import plot_training_curves, rate_cut_epochs


def history(rates):
    return [{"phase": 1, "epoch": epoch, "loss": 3.0 - 0.1 * epoch, "val_loss": 3.1 - 0.05 * epoch,
             "val_bleu_4": 0.1 + 0.01 * epoch, "learning_rate": rate} for epoch, rate in enumerate(rates, 1)]


def test_rate_cuts_are_the_epochs_that_trained_at_a_lower_rate():
    assert rate_cut_epochs(history([1e-3, 1e-3, 2e-4, 2e-4, 4e-5])) == [3, 5]
    assert rate_cut_epochs(history([1e-3, 1e-3])) == []
    assert rate_cut_epochs([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.9}]) == []  # no rate recorded


def test_the_learning_rate_is_not_drawn_as_a_loss(tmp_path, monkeypatch):
    import matplotlib.axes

    plotted = []
    original = matplotlib.axes.Axes.plot

    def recording_plot(self, *arguments, **options):
        plotted.append(options.get("label"))
        return original(self, *arguments, **options)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    plot_training_curves(history([1e-3, 2e-4, 2e-4]), tmp_path / "curves.png", title="t")
    assert plotted == ["loss", "val_loss", "val_bleu_4"]
    with Image.open(tmp_path / "curves.png") as image:
        assert image.width > image.height


def test_metric_bars_give_a_metric_without_values_no_place_and_cider_scores_their_own_panel(tmp_path, monkeypatch):
    from captioning.plots import curves

    figures = []
    monkeypatch.setattr(curves.plt, "close", figures.append)  # keep the figure to read its axes
    nan = float("nan")
    curves.plot_metric_bars(["a", "b"], {"bleu_4": [0.2, 0.3], "cider": [0.4, 0.5], "selection_cider": [nan, nan]},
                            tmp_path / "bars.png")
    ticks = [[label.get_text() for label in axis.get_xticklabels()] for axis in figures[0].axes]
    assert ticks == [["bleu_4"], ["cider"]]
    assert (tmp_path / "bars.png").is_file()
