"""PNG plots of one run from its results: learning curves and the test confusion matrix.

Drawn on `matplotlib.figure.Figure`s (no pyplot state: nothing to close, no window) with fixed
margins: matplotlib's automatic layout draws each figure twice, 0.1-0.2 s of a sweep trial.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def learning_curves(history: list[dict], path: Path) -> Path:
    """Training loss, and training and validation accuracy, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["train/loss"] for h in history], marker="o", label="train/loss")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="Training loss")
    for key in ("train/acc", "val/acc"):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)
    return path


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted class; each cell the count, shaded by row fraction."""
    totals = [max(sum(row), 1) for row in matrix]
    fractions = [[c / t for c in row] for row, t in zip(matrix, totals)]
    fig = Figure(figsize=(7, 6))
    fig.subplots_adjust(left=0.12, right=0.9, bottom=0.15, top=0.94)
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, count, ha="center", va="center", fontsize=7,
                    color="white" if fractions[i][j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.savefig(path, dpi=100)
    return path
