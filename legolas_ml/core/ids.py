"""Session ids: one normalisation shared by the importer, the store and the quality gate.

A review and the classification it refers to must meet under the same id however each was written,
so every place that reads or writes a ``session_id`` goes through ``normalise_session_id``.
"""

from __future__ import annotations

import math
from typing import Any


def normalise_session_id(value: Any) -> str | None:
    """The canonical form of a session id, or ``None`` when the value cannot name a session.

    Strings lose their surrounding whitespace (``" s1 "`` is ``"s1"``); integers and finite floats
    become their ``str``. Booleans, ``None``, empty strings, strings that are not valid UTF-8 (lone
    surrogates) and every other type name no session.

    Args:
        value: the raw ``session_id`` of a document or an input line.

    Returns:
        The normalised id, or ``None``.

    Example:
        >>> normalise_session_id("  s1\\t"), normalise_session_id(7), normalise_session_id(True)
        ('s1', '7', None)
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        try:
            return str(value)
        except ValueError:  # an int beyond Python's 4300-digit str() limit names no real session
            return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: unstorable as BSON, unwritable as JSON
        return None
    return value
