"""The pictures of an evaluation report, as PNG files: confusion matrix, worst mistakes,
reliability diagram and training curves.

Figures are drawn with matplotlib's object-oriented API and rendered by its Agg backend
(`Figure` + `FigureCanvasAgg`): headless on servers and in CI, and no global pyplot state, so
importing this module never switches the backend of a user's notebook and no figure leaks.
Each function takes plain numbers or file paths and writes one file; no TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from retail_vision.run_directory import replaced

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("evaluation plots need matplotlib: pip install matplotlib") from error

DPI = 120


def class_order(labels: list[str], groups: dict[str, str] | None = None) -> list[int]:
    """Indices of `labels` sorted by group (e.g. coarse class), then name, so related products sit together."""
    groups = groups or {}
    return sorted(range(len(labels)), key=lambda i: (groups.get(labels[i], ""), labels[i].lower()))


def plot_confusion_matrix(matrix, labels: list[str], path: str, groups: dict[str, str] | None = None,
                          title: str = "Confusion matrix", shown: list[int] | None = None) -> None:
    """Row-normalised confusion matrix (each row: where that class's photos went) with every label shown.

    `shown`: the classes to draw (default all), each row still a share of all that class's images.
    The figure grows with the class count and the font shrinks, so 81 classes stay legible.
    A square-root colour scale makes rare confusions visible next to a bright diagonal.
    """
    matrix = np.asarray(matrix)
    support = matrix.sum(axis=1)
    shown_set = set(range(len(labels)) if shown is None else shown)
    order = [i for i in class_order(labels, groups) if i in shown_set]
    names = [labels[i] for i in order]
    support = support[order].astype(float)
    rates = matrix[np.ix_(order, order)] / np.maximum(support, 1)[:, None]
    if len(order) < len(labels):
        title = f"{title}, the {len(order)} most confused of {len(labels)} classes (all: confusion_matrix.csv)"
    n = len(names)
    font = 9 if n <= 20 else 7 if n <= 50 else 6
    side = max(6.0, 0.2 * n + 3.0)
    fig, ax = _figure(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), [f"{name} ({int(s)})" for name, s in zip(names, support)], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(f"{title}: share of each true class's images, {int(matrix.sum())} images")
    _annotate_cells(ax, rates, font)
    if groups:
        _mark_groups(ax, [groups.get(name, "") for name in names])
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="share of the row")
    _save(fig, path)


def _annotate_cells(ax, rates: np.ndarray, font: int) -> None:
    """Percentages in the non-empty cells; with many classes only those worth a look (>= 5%)."""
    threshold = 0.0 if len(rates) <= 30 else 0.05
    for row, col in zip(*np.nonzero(rates > threshold)):
        value = rates[row, col]
        ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=font - 1,
                color="white" if value > 0.5 else "black")


def _mark_groups(ax, row_groups: list[str]) -> None:
    """Thin lines between groups, so block-diagonal confusions (apple vs apple) stand out."""
    for i in range(1, len(row_groups)):
        if row_groups[i] != row_groups[i - 1]:
            ax.axhline(i - 0.5, color="grey", linewidth=0.5)
            ax.axvline(i - 0.5, color="grey", linewidth=0.5)


def plot_worst_mistakes(paths: list[str], true_names: list[str], predicted_names: list[str],
                        confidences: list[float], path: str, columns: int = 4) -> None:
    """A grid of the given wrong predictions (most confident first): the photo, true and predicted class."""
    from PIL import Image

    if not paths:
        _message_figure("No wrong predictions.", path)
        return
    columns = min(columns, len(paths))
    rows = -(-len(paths) // columns)
    fig, axes = _figure(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, true, predicted, confidence in zip(axes.flat, paths, true_names, predicted_names, confidences):
        try:
            with Image.open(file) as photo:
                photo = photo.convert("RGB")
                photo.thumbnail((256, 256))
                ax.imshow(np.asarray(photo))
        except OSError:  # the photo moved since it was scored: keep the caption
            ax.text(0.5, 0.5, "(image unreadable)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"true: {true}\npredicted: {predicted} ({confidence:.0%})", fontsize=9)
    fig.suptitle("Most confident wrong predictions")
    _save(fig, path)


def plot_reliability(bins: dict, ece: float, path: str) -> None:
    """Accuracy against confidence per bin; bars under the diagonal mean an over-confident model."""
    edges, count = bins["edges"], bins["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    accuracy = np.nan_to_num(bins["accuracy"])
    fig, (top, bottom) = _figure(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres, accuracy, width=width, color="tab:blue", alpha=0.8, edgecolor="black", linewidth=0.5,
            label="accuracy")
    # Hatched, unfilled: the gap stays readable whether it sits above (over-) or inside (under-confident) the bar.
    top.bar(centres, np.nan_to_num(bins["confidence"]) - accuracy, bottom=accuracy, width=width,
            fill=False, hatch="//", edgecolor="red", linewidth=0.5, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability (top-1 confidence), ECE {ece:.3f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, count, width=width, color="grey", edgecolor="black", linewidth=0.5)
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="images")
    _save(fig, path)


def plot_open_set(known_scores, unknown_scores, threshold: float, score: str, path: str) -> None:
    """Histograms of the rejection score of known and unknown products, and the threshold between them."""
    fig, ax = _figure(figsize=(7, 4))
    bins = np.histogram_bin_edges(np.r_[known_scores, unknown_scores], bins=40)
    ax.hist(known_scores, bins=bins, alpha=0.6, color="tab:blue", label=f"known products ({len(known_scores)})")
    ax.hist(unknown_scores, bins=bins, alpha=0.6, color="tab:red", label=f"unknown products ({len(unknown_scores)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}: below is 'unknown'")
    ax.set(xlabel=f"rejection score ({score})", ylabel="photos", title="Known and unknown products")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_training_curves(history: dict, path: str) -> None:
    """Loss and accuracy per epoch, train and validation, with the head/fine-tune boundary marked."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, axes = _figure(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if history.get(key):
                ax.plot(epochs[: len(history[key])], history[key], style, markersize=3,
                        label="validation" if key.startswith("val_") else "train")
        for boundary, phase in _phase_starts(history.get("phase", [])):
            ax.axvline(boundary - 0.5, color="grey", linestyle=":")
            ax.text(boundary - 0.4, 0.98, phase, transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def _phase_starts(phases: list[str]) -> list[tuple[int, str]]:
    """(1-based epoch, phase name) where each phase begins."""
    return [(i + 1, phase) for i, phase in enumerate(phases) if i == 0 or phase != phases[i - 1]]


def _message_figure(message: str, path: str) -> None:
    fig, ax = _figure(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    _save(fig, path)


def _figure(rows: int = 1, columns: int = 1, figsize=(6, 4), **subplot_options):
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # render with Agg whatever backend the process uses
    return fig, fig.subplots(rows, columns, **subplot_options)


def _save(fig, path: str) -> None:
    with replaced(path) as temporary:
        fig.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
