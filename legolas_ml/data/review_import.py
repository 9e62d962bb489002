"""Import human review decisions from a JSONL training log, line by line, in bounded memory.

Each line is one JSON object with ``session_id``, ``label`` and ``reviewed_at`` (ISO 8601), and
optionally ``text``, ``reviewer``, ``confidence`` and ``notes``. A malformed line is reported with
its number and skipped; the valid lines are imported. Lines are read in binary with a length cap,
so a 100 MB file, or one enormous line, never has to fit in memory at once.

Every hostile line is a counted rejection, never an abort: JSON nested past the parser's recursion
limit, numbers past Python's digit limit, timestamps that overflow once converted to UTC, strings
with lone surrogates (``"\ud800"`` is valid JSON but not storable), and any document the store
cannot encode. The import always goes to the end of the file and reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bson.errors import BSONError

from legolas_ml.data.ids import normalise_session_id
from legolas_ml.data.quality_gate import parse_timestamp

MAX_LINE_BYTES = 2 * 1024 * 1024
# Errors that belong to one record (bad values), as opposed to the store failing (which stops the import).
_RECORD_ERRORS = (BSONError, ValueError, TypeError, OverflowError, RecursionError)
OPTIONAL_STRINGS = ("text", "reviewer", "notes")


@dataclass
class ImportReport:
    """What an import did: lines read, reviews imported, duplicates skipped, lines rejected and why."""

    lines: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected_count: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), first 1000 kept
    max_kept_errors: int = 1000

    def reject(self, line_no: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < self.max_kept_errors:
            self.rejected.append((line_no, reason))

    @property
    def ok(self) -> bool:
        return self.rejected_count == 0


def _read_lines(handle: BinaryIO, limit: int):
    """Yield (line_no, bytes or None if the line exceeded ``limit``), never holding more than ``limit``."""
    line_no = 0
    while True:
        chunk = handle.readline(limit + 1)
        if not chunk:
            return
        line_no += 1
        if len(chunk) > limit and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the over-long line
                chunk = handle.readline(limit + 1)
            yield line_no, None
            continue
        yield line_no, chunk


def parse_review_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(review document, None) or (None, why the line is rejected)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 at byte {exc.start}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "not valid JSON (nested deeper than the parser's recursion limit)"
    except ValueError as exc:  # e.g. an integer literal past Python's 4300-digit limit
        return None, f"not valid JSON ({str(exc)[:80]})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    sid, label = obj.get("session_id"), obj.get("label")
    if not isinstance(sid, str) or not sid.strip():
        return None, f"session_id must be a non-empty string, got {_short(sid)}"
    for key in ("session_id", "label", *OPTIONAL_STRINGS):
        if isinstance(obj.get(key), str) and not _is_utf8(obj[key]):
            return None, f"{key} is not valid UTF-8 (a lone surrogate such as \\ud800), got {_short(obj[key])}"
    if not isinstance(label, str) or not label.strip():
        return None, f"label must be a non-empty string, got {_short(label)}"
    reviewed_at = parse_timestamp(obj.get("reviewed_at"))
    if reviewed_at is None:
        return None, (
            f"reviewed_at must be an ISO-8601 timestamp within years 1-9999 in UTC, got {_short(obj.get('reviewed_at'))}"
        )
    doc: dict[str, Any] = {"session_id": normalise_session_id(sid), "label": label, "reviewed_at": reviewed_at}
    for key in OPTIONAL_STRINGS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                return None, f"{key} must be a string when present, got {type(obj[key]).__name__}"
            doc[key] = obj[key]
    confidence = obj.get("confidence")
    if confidence is not None:
        try:  # float() first: an integer too large for a float overflows here, not in isfinite
            value = float(confidence) if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) else None
        except OverflowError:
            value = None
        if value is None or not math.isfinite(value):
            return None, f"confidence must be a finite number when present, got {_short(confidence, 40)}"
        doc["confidence"] = value
    return doc, None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any, limit: int = 60) -> str:
    """A bounded ``repr`` of a received value for a rejection reason (never raises)."""
    try:
        return repr(value)[:limit]
    except (ValueError, RecursionError):  # an int past str()'s digit limit, a deeply nested value
        return f"<{type(value).__name__}>"


def import_reviews(path: str | Path, store, max_line_bytes: int = MAX_LINE_BYTES) -> ImportReport:
    """Import every valid line of ``path`` into the tenant's review collection.

    Raises:
        FileNotFoundError: if ``path`` does not exist (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"review file {path} does not exist or is not a file")
    report = ImportReport()
    with open(path, "rb") as handle:
        for line_no, raw in _read_lines(handle, max_line_bytes):
            report.lines += 1
            if raw is None:
                report.reject(line_no, f"line longer than {max_line_bytes} bytes")
                continue
            if not raw.strip():
                report.lines -= 1  # blank lines are not records
                continue
            # Any error of one record is that line's rejection, never a reason to stop half way.
            try:
                doc, problem = parse_review_line(raw)
            except _RECORD_ERRORS as exc:
                doc, problem = None, f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
            if problem:
                report.reject(line_no, problem)
                continue
            try:
                inserted = store.insert_review(doc)
            except _RECORD_ERRORS as exc:  # a document the store cannot encode
                report.reject(line_no, f"cannot be stored ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            if inserted:
                report.imported += 1
            else:
                report.duplicates += 1
    return report
