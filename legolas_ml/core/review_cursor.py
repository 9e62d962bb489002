"""A position in a tenant's reviews: what a training read, what a sensor has counted.

The quality gate, the registry and the sensors all compare these, so the ground floor holds them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime


@functools.total_ordering
@dataclass(frozen=True)
class ReviewCursor:
    """A position in a tenant's reviews, in the order the store received them: ``ReviewCursor(seq=12)``
    covers every review numbered 12 or less.

    Releases before sequence numbers wrote ``(reviewed_at, review_id)`` cursors, which live on in
    ``decisions.jsonl`` files and sensor cursors: ``ReviewCursor(reviewed_at, review_id)`` is such a
    *legacy* cursor. It still parses and serializes as before, orders below every sequence cursor
    (a training that wrote a sequence cursor read every review an older one did), and the store
    resolves it to a sequence number (``TenantStore.resolve_cursor``).

    Example:
        >>> ReviewCursor(seq=12) < ReviewCursor(seq=13) and ReviewCursor(datetime(2026, 1, 1), "a") < ReviewCursor(seq=1)
        True
    """

    reviewed_at: datetime | None = None  # legacy cursors only
    review_id: str | None = None  # legacy cursors only
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.seq is not None:
            if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0 or (self.reviewed_at, self.review_id) != (None, None):
                raise ValueError(f"a review cursor is seq=<integer >= 0> or (reviewed_at, review_id), got {self!r}")
        elif not isinstance(self.reviewed_at, datetime) or not isinstance(self.review_id, str):
            raise ValueError(f"a legacy review cursor needs a datetime reviewed_at and a str review_id, got {self!r}")

    @property
    def legacy(self) -> bool:
        """Whether an older release wrote it: ``(reviewed_at, review_id)`` instead of a sequence number."""
        return self.seq is None

    def _key(self) -> tuple:
        return (0, self.reviewed_at, self.review_id) if self.legacy else (1, self.seq)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ReviewCursor):
            return NotImplemented
        return self._key() < other._key()

    def serialize(self) -> str:
        if self.legacy:
            return json.dumps({"reviewed_at": self.reviewed_at.isoformat(), "id": self.review_id})
        return json.dumps({"seq": self.seq})

    @classmethod
    def parse(cls, text: str | None) -> "ReviewCursor | None":
        """The cursor stored by ``serialize`` (this release's or an older one's); ``None`` for an empty cursor.

        Raises:
            ValueError: if the text is not a cursor (a corrupted cursor must not silently restart at 0).
        """
        if not text:
            return None
        try:
            data = json.loads(text)
            if "seq" in data:
                return cls(seq=data["seq"])
            return cls(datetime.fromisoformat(data["reviewed_at"]), str(data["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable review cursor {text!r}: {exc}") from None

    @classmethod
    def of(cls, review: dict) -> "ReviewCursor":
        """The cursor of a review read from the store (its ``seq``).

        Raises:
            ValueError: if the review has no sequence number (it was not read from the store).
        """
        if review.get("seq") is None:
            raise ValueError(f"review {review.get('_id')!r} has no seq: only reviews read from the store are numbered")
        return cls(seq=review["seq"])

    def as_tuple(self) -> tuple[int | None, datetime | None, str | None]:
        """``(seq, reviewed_at, review_id)``, ``None`` where absent: the cursor as ``TenantStore.reviews_after`` takes it."""
        return (self.seq, self.reviewed_at, self.review_id)

    def __str__(self) -> str:
        if self.legacy:
            return f"{self.reviewed_at.isoformat()}/{self.review_id}"
        return f"review #{self.seq}"
