"""Timestamps as the store orders them: naive UTC ``datetime``s (the quality gate, the review import).

Its own module so that the review import (``legolas import-reviews``) parses timestamps without
loading pandas: a command that streams a 100 MB file keeps its memory for the file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def parse_timestamp(value: Any) -> datetime | None:
    """A naive-UTC datetime from a datetime or ISO-8601 string; ``None`` if it cannot be ordered.

    ``None`` also when the instant has no naive-UTC form: ``0001-01-01T00:00:00+01:00`` is in year 0
    and ``9999-12-31T23:59:59-01:00`` in year 10000 once converted to UTC.
    """
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
        except (OverflowError, ValueError):
            return None
    return ts
