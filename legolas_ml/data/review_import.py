"""Import human review decisions from a JSONL training log (or a CSV), record by record, in bounded memory.

Each line is one JSON object with ``session_id``, ``label`` and ``reviewed_at`` (ISO 8601), and
optionally ``text``, ``reviewer``, ``confidence`` and ``notes``; a CSV has those as columns. The
review queue (``legolas review-queue``) exports exactly this format with an empty ``label``. A malformed line is reported with
its number and skipped; the valid lines are imported. Lines are read in binary with a length cap,
so a 100 MB file, or one enormous line, never has to fit in memory at once.

Every hostile line is a counted rejection, never an abort: JSON nested past the parser's recursion
limit, numbers past Python's digit limit, timestamps that overflow once converted to UTC, strings
with lone surrogates (``"\ud800"`` is valid JSON but not storable), and any document the store
cannot encode. The import always goes to the end of the file and reports.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bson.errors import BSONError

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.core.timestamps import parse_timestamp

MAX_LINE_BYTES = 2 * 1024 * 1024
# Errors that belong to one record (bad values), as opposed to the store failing (which stops the import).
_RECORD_ERRORS = (BSONError, ValueError, TypeError, OverflowError, RecursionError)
OPTIONAL_STRINGS = ("text", "reviewer", "notes")
IMPORT_FORMATS = ("auto", "jsonl", "csv")
#: The "problem" of a record whose label is still empty: a queue entry, skipped without complaint.
UNLABELLED = "unlabelled"
#: Marks a parsed review whose reviewed_at is the import time (the record had none); never stored.
STAMPED = "_reviewed_at_is_import_time"


@dataclass
class ImportReport:
    """What an import did: lines read, reviews imported, duplicates skipped, lines rejected and why."""

    lines: int = 0
    imported: int = 0
    duplicates: int = 0
    unlabelled: int = 0  # queue entries whose label nobody filled in
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


def parse_review_line(raw: bytes, default_reviewed_at: datetime | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(review document, None), (None, why the line is rejected) or (None, ``UNLABELLED``)."""
    obj, problem = decode_json_object(raw)
    if problem is not None:
        return None, problem
    return parse_review_record(obj, default_reviewed_at)


def decode_json_object(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object of one line, None) or (None, why the line is rejected); shared by every JSONL import."""
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
    return obj, None


def parse_review_record(obj: dict[str, Any], default_reviewed_at: datetime | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one decoded record (a JSON object or a CSV row).

    A record whose ``label`` is null (an empty CSV cell) is a queue entry nobody labelled yet: ``(None,
    UNLABELLED)``, skipped and counted, not rejected. A missing or empty ``reviewed_at`` becomes
    ``default_reviewed_at`` when one is given (the import time), and the document is marked
    ``STAMPED`` so the import can recognise a decision it already holds.
    """
    sid, label = obj.get("session_id"), obj.get("label")
    if not isinstance(sid, str) or not sid.strip():
        return None, f"session_id must be a non-empty string, got {_short(sid)}"
    for key in ("session_id", "label", *OPTIONAL_STRINGS):
        if isinstance(obj.get(key), str) and not _is_utf8(obj[key]):
            return None, f"{key} is not valid UTF-8 (a lone surrogate such as \\ud800), got {_short(obj[key])}"
    if "label" in obj and label is None:
        return None, UNLABELLED
    if not isinstance(label, str) or not label.strip():
        return None, f"label must be a non-empty string, got {_short(label)}"
    raw_reviewed_at = obj.get("reviewed_at")
    stamped = raw_reviewed_at in (None, "") and default_reviewed_at is not None
    if stamped:
        reviewed_at = default_reviewed_at
    else:
        reviewed_at = parse_timestamp(raw_reviewed_at)
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
        value = finite_number(confidence)
        if value is None:
            return None, f"confidence must be a finite number when present, got {_short(confidence, 40)}"
        doc["confidence"] = value
    if stamped:
        doc[STAMPED] = True
    return doc, None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` for a bool, a non-number, NaN, an infinity or an int past float's range."""
    try:  # float() first: an integer too large for a float overflows here, not in isfinite
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except OverflowError:
        return None
    return number if number is not None and math.isfinite(number) else None


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


def _csv_records(path: Path, max_line_bytes: int, numbers: tuple[str, ...] = ("confidence",)):
    """Yield (row number, record or None if unreadable, problem) from a CSV file with a header.

    Empty cells are absent fields (``None``), and the cells of the ``numbers`` columns are read as
    numbers, so a CSV row is validated exactly like the JSON object it stands for.
    """
    csv.field_size_limit(max_line_bytes)
    # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column's name.
    with open(path, encoding="utf-8-sig", newline="", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        row_no = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeError) as exc:
                row_no += 1
                yield row_no, None, f"not valid CSV ({str(exc)[:80]})"
                continue
            row_no = reader.line_num
            record: dict[str, Any] = {k: (None if v in ("", None) else v) for k, v in row.items() if isinstance(k, str)}
            for column in numbers:
                if isinstance(record.get(column), str):
                    try:
                        record[column] = float(record[column])
                    except ValueError:
                        pass  # rejected by the record's parser as "must be a finite number"
            yield row_no, record, None


def import_reviews(path: str | Path, store, max_line_bytes: int = MAX_LINE_BYTES, fmt: str = "auto") -> ImportReport:
    """Import every valid record of ``path`` into the tenant's review collection.

    Args:
        path: a JSON-lines file, or a CSV file with a header row (``legolas review-queue`` writes both).
        fmt: ``"jsonl"``, ``"csv"``, or ``"auto"`` (CSV when the file name ends in ``.csv``).

    Records without a label are queue entries nobody labelled yet: counted as ``unlabelled``, not
    rejected. Records without ``reviewed_at`` are stamped with the import time, unless the session
    already has a review with the same label (the same file imported again after more rows were
    labelled): that one counts as already present.

    Raises:
        FileNotFoundError: if ``path`` does not exist (named in the message).
        ValueError: if ``fmt`` is not one of ``IMPORT_FORMATS``.
    """
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"format must be one of {list(IMPORT_FORMATS)}, got {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"review file {path} does not exist or is not a file")
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    imported_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    report = ImportReport()
    records = _csv_records(path, max_line_bytes) if fmt == "csv" else _json_records(path, max_line_bytes, imported_at)
    for line_no, parsed, problem in records:
        report.lines += 1
        if problem is None and fmt == "csv":
            try:
                parsed, problem = parse_review_record(parsed, imported_at)
            except _RECORD_ERRORS as exc:
                parsed, problem = None, f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
        if problem == UNLABELLED:
            report.unlabelled += 1
            continue
        if problem:
            report.reject(line_no, problem)
            continue
        if parsed.pop(STAMPED, False) and store.has_review(parsed["session_id"], parsed["label"]):
            # A queue file labelled in several sittings is imported again and again: a row without
            # its own reviewed_at whose decision is already stored is the same review, not a new one.
            report.duplicates += 1
            continue
        try:
            inserted = store.insert_review(parsed)
        except _RECORD_ERRORS as exc:  # a document the store cannot encode
            report.reject(line_no, f"cannot be stored ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        if inserted:
            report.imported += 1
        else:
            report.duplicates += 1
    return report


def _json_records(path: Path, max_line_bytes: int, imported_at: datetime):
    """Yield (line number, review document or None, problem) for each non-blank line of a JSONL file."""
    with open(path, "rb") as handle:
        for line_no, raw in _read_lines(handle, max_line_bytes):
            if raw is None:
                yield line_no, None, f"line longer than {max_line_bytes} bytes"
                continue
            if not raw.strip():
                continue  # blank lines are not records
            # Any error of one record is that line's rejection, never a reason to stop half way.
            try:
                doc, problem = parse_review_line(raw, imported_at)
            except _RECORD_ERRORS as exc:
                doc, problem = None, f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
            yield line_no, doc, problem
