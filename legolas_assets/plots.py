"""PNG plots written next to the artifacts and embedded in Dagster metadata as Markdown."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from dagster import MetadataValue  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def embed(path: Path, alt: str) -> MetadataValue:
    """Markdown with the PNG inlined, so the UI shows it without serving files."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def training_curve(history: list[dict], path: Path, title: str) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(epochs, [h["val_balanced_accuracy"] for h in history], "s--", color="tab:green", label="val balanced acc")
    twin.set_ylim(0, 1)
    twin.set_ylabel("balanced accuracy")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], fontsize=7, loc="center right")
    return _save(fig, path)


def fold_curves(histories: dict[int, list[dict]], path: Path, title: str) -> Path:
    """Every fold's validation balanced accuracy per epoch in one plot, one labelled line per fold."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for fold, history in sorted(histories.items()):
        ax.plot([h["epoch"] for h in history], [h["val_balanced_accuracy"] for h in history], "o-", label=f"fold {fold}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val balanced accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", title="validation curve", title_fontsize=7)
    return _save(fig, path)


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Row-normalised colours (recall on the diagonal) with the counts written in each cell, and a colour bar."""
    rows = [sum(row) or 1 for row in matrix]
    shares = [[value / total for value in row] for row, total in zip(matrix, rows)]
    fig, ax = plt.subplots(figsize=(2.2 + 0.8 * len(classes), 1.0 + 0.7 * len(classes)))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            color = "white" if shares[i][j] > 0.5 else "black"
            ax.text(j, i, f"{value}\n{shares[i][j]:.0%}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"{title}\n(cell: count and share of the row)", fontsize=9)
    return _save(fig, path)
