"""What changed in the training set against the one the model in service was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetDiff:
    """Rows, classes and sources of a training set next to the champion's (``dataset_summary``).

    ``parts`` lists ``(part, champion, now)`` for every class (``class X``) and source
    (``source human``, ``source llm``), classes first, in name order.
    """

    rows: int
    champion_rows: int
    classes_added: list[str]
    classes_removed: list[str]
    parts: list[tuple[str, int, int]]

    @property
    def rows_change(self) -> int:
        return self.rows - self.champion_rows

    @property
    def ratio(self) -> float:
        """Rows now over the champion's (the shrinkage check warns below 0.5)."""
        return self.rows / self.champion_rows if self.champion_rows else float("inf")

    def describe(self) -> str:
        """``"412 rows vs 1180 for the model in service (-768, ratio 0.3492); classes added: none; removed: refund"``."""
        return (
            f"{self.rows} rows vs {self.champion_rows} for the model in service ({self.rows_change:+d}, ratio {self.ratio:.4f}); "
            f"classes added: {', '.join(self.classes_added) or 'none'}; removed: {', '.join(self.classes_removed) or 'none'}"
        )


def dataset_diff(summary: dict[str, Any], champion: dict[str, Any]) -> DatasetDiff:
    """Compare a dataset summary (``rows``, ``per_class``, ``per_source``) with the champion's.

    Raises:
        ValueError: if either summary lacks ``rows``, ``per_class`` or ``per_source`` (named).
    """
    for name, value in (("summary", summary), ("champion", champion)):
        missing = [k for k in ("rows", "per_class", "per_source") if k not in (value or {})]
        if missing:
            raise ValueError(f"{name} must have rows, per_class and per_source; missing {missing}")
    now_classes, before_classes = set(summary["per_class"]), set(champion["per_class"])
    parts = [(f"class {c}", int(champion["per_class"].get(c, 0)), int(summary["per_class"].get(c, 0)))
             for c in sorted(now_classes | before_classes)]
    sources = sorted(set(summary["per_source"]) | set(champion["per_source"]))
    parts += [(f"source {s}", int(champion["per_source"].get(s, 0)), int(summary["per_source"].get(s, 0))) for s in sources]
    return DatasetDiff(
        rows=int(summary["rows"]), champion_rows=int(champion["rows"] or 0),
        classes_added=sorted(now_classes - before_classes), classes_removed=sorted(before_classes - now_classes), parts=parts,
    )
