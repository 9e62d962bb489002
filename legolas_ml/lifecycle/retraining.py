"""When to retrain: enough new human reviews, or reviews waiting too long. Framework-free.

The cursor is ``(reviewed_at, str(_id))`` of the last review consumed by a requested training. It
is compared on both fields, so reviews sharing a timestamp are neither lost nor counted twice, and
it only ever moves forward (a new cursor is always the key of a review strictly after the old one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, order=True)
class ReviewCursor:
    reviewed_at: datetime
    review_id: str

    def serialize(self) -> str:
        return json.dumps({"reviewed_at": self.reviewed_at.isoformat(), "id": self.review_id})

    @classmethod
    def parse(cls, text: str | None) -> "ReviewCursor | None":
        """The cursor stored by ``serialize``; ``None`` for an empty cursor.

        Raises:
            ValueError: if the text is not a cursor (a corrupted cursor must not silently restart at 0).
        """
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(datetime.fromisoformat(data["reviewed_at"]), str(data["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable review cursor {text!r}: {exc}") from None

    @classmethod
    def of(cls, review: dict) -> "ReviewCursor":
        return cls(review["reviewed_at"], str(review["_id"]))

    def as_tuple(self) -> tuple[datetime, str]:
        return (self.reviewed_at, self.review_id)

    def __str__(self) -> str:
        return f"{self.reviewed_at.isoformat()}/{self.review_id}"


@dataclass(frozen=True)
class RetrainPolicy:
    """Retrain when ``threshold`` new reviews arrived, or the oldest waiting one is older than ``max_age``.

    Args:
        threshold: new reviews that trigger a retraining, >= 1.
        max_age: ``None`` (off) or how long a review may wait for a retraining.
    """

    threshold: int = 50
    max_age: timedelta | None = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError(f"max_age must be None or positive, got {self.max_age}")

    def decide(self, n_new: int, oldest: datetime | None, now: datetime) -> tuple[bool, str]:
        """(retrain?, the reason in words, with the counts)."""
        if n_new >= self.threshold:
            return True, f"{n_new} new reviews >= threshold {self.threshold}"
        if n_new and self.max_age is not None and oldest is not None and now - oldest >= self.max_age:
            return True, f"{n_new} new reviews, the oldest waiting {now - oldest} >= max age {self.max_age}"
        waited = f", oldest waiting {now - oldest}" if n_new and oldest is not None else ""
        return False, f"{n_new} new reviews, threshold {self.threshold}{waited}"
