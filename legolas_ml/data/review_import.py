"""Import human review decisions from a JSONL training log, line by line, in bounded memory.

Each line is one JSON object with ``session_id``, ``label`` and ``reviewed_at`` (ISO 8601), and
optionally ``text``, ``reviewer``, ``confidence`` and ``notes``. A malformed line is reported with
its number and skipped; the valid lines are imported. Lines are read in binary with a length cap,
so a 100 MB file, or one enormous line, never has to fit in memory at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from legolas_ml.data.quality_gate import parse_timestamp

MAX_LINE_BYTES = 2 * 1024 * 1024
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
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    sid, label = obj.get("session_id"), obj.get("label")
    if not isinstance(sid, str) or not sid.strip():
        return None, f"session_id must be a non-empty string, got {sid!r:.60}"
    if not isinstance(label, str) or not label.strip():
        return None, f"label must be a non-empty string, got {label!r:.60}"
    reviewed_at = parse_timestamp(obj.get("reviewed_at"))
    if reviewed_at is None:
        return None, f"reviewed_at must be an ISO-8601 timestamp, got {obj.get('reviewed_at')!r:.60}"
    doc: dict[str, Any] = {"session_id": sid.strip(), "label": label, "reviewed_at": reviewed_at}
    for key in OPTIONAL_STRINGS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                return None, f"{key} must be a string when present, got {type(obj[key]).__name__}"
            doc[key] = obj[key]
    confidence = obj.get("confidence")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence):
            return None, f"confidence must be a finite number when present, got {confidence!r:.40}"
        doc["confidence"] = float(confidence)
    return doc, None


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
            doc, problem = parse_review_line(raw)
            if problem:
                report.reject(line_no, problem)
            elif store.insert_review(doc):
                report.imported += 1
            else:
                report.duplicates += 1
    return report
