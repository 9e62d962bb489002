"""Import a tenant's own conversations from JSONL, CSV or Parquet: "bring your own data".

Each record is one conversation: a session id, its ``text`` (or its ``turns``, a list of
``{"role": ..., "text": ...}``), and optionally the LLM's label, the LLM's confidence and the
classification method. A field map says which of the file's fields holds each of them
(``session_id=ticket_id,text=body,llm_label=predicted_category``): given with ``--map``, or stored
as the tenant setting ``field_map`` so nobody types it twice; a target the map leaves out is read
from the field of its own name. The stored document is exactly what ``legolas demo-data`` writes,
so the quality gate, the scoring and the label audit read imported conversations as they read the
demo's::

    session_id              <- session_id   (a non-empty string, or an integer id)
    text                    <- text, or the turns joined as "role: text" lines
    turns                   <- turns        (kept as given when the record has them)
    llm_prediction          <- llm_label    (optional: a conversation without one waits for a review)
    llm_confidence          <- llm_confidence (a finite number when present)
    classification_method   <- method       (default "llm": an imported label is the LLM's unless it says otherwise)
    created_at              the first import's time (kept by later imports)

Records are validated like ``import-reviews`` validates reviews (``review_import``): a bad record is
reported with its line (or row) number and counted, never an abort, and the import goes to the end.
A session id seen earlier in the same file is rejected, so an import is a function of the file: the
same file imported again reports every conversation as unchanged and writes nothing, and a
conversation whose text changed is updated (and scored again by the next ``ensemble_predictions``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.data.review_import import (
    _RECORD_ERRORS,
    MAX_LINE_BYTES,
    ImportReport,
    _csv_records,
    _is_utf8,
    _read_lines,
    _short,
    decode_json_object,
    finite_number,
)

#: What a field map can name, with the stored field each one fills.
TARGETS = {
    "session_id": "session_id",
    "text": "text",
    "turns": "turns",
    "llm_label": "llm_prediction",
    "llm_confidence": "llm_confidence",
    "method": "classification_method",
}
#: The stored fields an import owns: compared on re-import, replaced when they change.
IMPORTED_FIELDS = tuple(TARGETS.values())
FORMATS = ("auto", "jsonl", "csv", "parquet")
DEFAULT_METHOD = "llm"
#: Records written to the store together (one lookup of the stored documents per batch).
BATCH = 1000


@dataclass
class ConversationImportReport(ImportReport):
    """What an import did: ``imported`` new conversations, ``updated`` changed ones, ``duplicates``
    already stored unchanged, and the rejected lines with their reasons."""

    updated: int = 0
    dry_run: bool = False


def parse_field_map(spec: str | dict[str, Any] | None) -> dict[str, str]:
    """A field map (target -> the file's field name) from ``"target=field,..."`` or a mapping.

    Args:
        spec: ``--map``'s text, the stored tenant setting ``field_map``, or ``None`` (no renaming).

    Returns:
        ``{target: source field}`` for the targets named; the others read the field of their own name.

    Raises:
        ValueError: naming the allowed targets and what was received, for an unknown target, a
            pair without ``=``, an empty name or a target named twice.

    Example:
        >>> parse_field_map("session_id=ticket_id, text=body")
        {'session_id': 'ticket_id', 'text': 'body'}
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        pairs = list(spec.items())
    elif isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            target, sep, source = part.partition("=")
            if not sep:
                raise ValueError(f"field map (--map, tenant setting field_map) must be target=field pairs separated by ',', got {part.strip()!r} in {spec!r}")
            pairs.append((target.strip(), source.strip()))
    else:
        raise ValueError(f"field map (--map, tenant setting field_map) must be 'target=field,...' or an object, got {spec!r}")
    mapping: dict[str, str] = {}
    for target, source in pairs:
        if target not in TARGETS:
            raise ValueError(f"field map (--map, tenant setting field_map): unknown target {target!r}; the targets are {list(TARGETS)}")
        if not isinstance(source, str) or not source:
            raise ValueError(f"field map (--map, tenant setting field_map): target {target!r} needs a field name, got {source!r}")
        if target in mapping:
            raise ValueError(f"field map (--map, tenant setting field_map): target {target!r} is mapped twice ({mapping[target]!r}, {source!r})")
        mapping[target] = source
    return mapping


def resolve_field_map(option: str | None, setting: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """The field map an import uses, and where it came from: ``--map`` wins over the tenant setting.

    Returns:
        ``(map, reason)``, the reason naming the source for the import's summary line.
    """
    if option:
        return parse_field_map(option), "--map"
    if setting:
        return parse_field_map(setting), "the tenant setting field_map"
    return {}, "no field map (the file's fields are named as LEGOLAS names them)"


def turns_text(turns: Any) -> tuple[str | None, str | None]:
    """(the conversation as ``role: text`` lines, None) or (None, why the turns are rejected)."""
    if isinstance(turns, str):  # a CSV cell holds the list as JSON
        try:
            turns = json.loads(turns)
        except (ValueError, RecursionError):
            return None, f"turns must be a list of {{role, text}} objects (JSON in a CSV cell), got {_short(turns)}"
    if not isinstance(turns, list) or not turns:
        return None, f"turns must be a non-empty list of {{role, text}} objects, got {_short(turns)}"
    lines = []
    for i, turn in enumerate(turns):
        role, text = (turn.get("role"), turn.get("text")) if isinstance(turn, dict) else (None, None)
        if not isinstance(role, str) or not role.strip() or not isinstance(text, str):
            return None, f"turns[{i}] must be an object with a non-empty string role and a string text, got {_short(turn)}"
        lines.append(f"{role.strip()}: {text}")
    return "\n".join(lines), None


def parse_conversation_record(obj: dict[str, Any], field_map: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one decoded record (a JSON object, a CSV row or a Parquet row) into a classification document.

    Returns:
        ``(document, None)`` or ``(None, why the record is rejected)``; the reason names the file's field.
    """
    source = {target: field_map.get(target, target) for target in TARGETS}
    value = {target: obj.get(name) for target, name in source.items()}
    for target, raw in value.items():
        if isinstance(raw, str) and not _is_utf8(raw):
            return None, f"{source[target]} is not valid UTF-8 (a lone surrogate such as \\ud800), got {_short(raw)}"
    raw_sid = value["session_id"]
    # Parquet and JSON often carry ticket numbers as integers: they name a session as their str does.
    sid = normalise_session_id(raw_sid) if isinstance(raw_sid, (str, int)) else None
    if sid is None:
        return None, f"{source['session_id']} (session id) must be a non-empty string or an integer, got {_short(raw_sid)}"
    doc: dict[str, Any] = {"session_id": sid}
    text = value["text"]
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            return None, f"{source['text']} (text) must be a non-empty string, got {_short(text)}"
        doc["text"] = text
    elif value["turns"] is not None:
        doc["text"], problem = turns_text(value["turns"])
        if problem:
            return None, f"{source['turns']}: {problem}"
        turns = value["turns"]
        doc["turns"] = json.loads(turns) if isinstance(turns, str) else [{"role": t["role"], "text": t["text"]} for t in turns]
    else:
        return None, f"a conversation needs {source['text']!r} (text) or {source['turns']!r} (turns); the record has neither"
    label = value["llm_label"]
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            return None, f"{source['llm_label']} (LLM label) must be a non-empty string when present, got {_short(label)}"
        doc["llm_prediction"] = label
    confidence = value["llm_confidence"]
    if confidence is not None:
        number = finite_number(confidence)
        if number is None:
            return None, f"{source['llm_confidence']} (LLM confidence) must be a finite number when present, got {_short(confidence, 40)}"
        doc["llm_confidence"] = number
    method = value["method"] if value["method"] is not None else DEFAULT_METHOD
    if not isinstance(method, str) or not method.strip():
        return None, f"{source['method']} (classification method) must be a non-empty string when present, got {_short(method)}"
    doc["classification_method"] = method
    return doc, None


def _jsonl_records(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict | None, str | None]]:
    with open(path, "rb") as handle:
        for line_no, raw in _read_lines(handle, max_line_bytes):
            if raw is None:
                yield line_no, None, f"line longer than {max_line_bytes} bytes"
            elif raw.strip():  # blank lines are not records
                yield (line_no, *decode_json_object(raw))


def _parquet_records(path: Path, batch_rows: int = 10_000) -> Iterator[tuple[int, dict | None, str | None]]:
    """Row number (from 1) and the row as plain Python values, one record batch in memory at a time."""
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row, None


def detect_format(path: Path, fmt: str) -> str:
    """The file's format: ``fmt`` itself, or for ``"auto"`` the one its extension names (else JSONL).

    Raises:
        ValueError: if ``fmt`` is not one of ``FORMATS``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format (--format) must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "jsonl")


def import_conversations(
    path: str | Path,
    store,
    field_map: dict[str, str] | None = None,
    *,
    fmt: str = "auto",
    dry_run: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
    clock=lambda: datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0),
) -> ConversationImportReport:
    """Import every valid record of ``path`` into the tenant's classification documents.

    Args:
        path: a JSON-lines file, a CSV file with a header row, or a Parquet file.
        store: the tenant's ``TenantStore``.
        field_map: target -> the file's field (``parse_field_map``); ``None`` reads LEGOLAS's names.
        fmt: one of ``FORMATS``; ``"auto"`` decides from the extension (``.csv``, ``.parquet``, else JSONL).
        dry_run: validate and count (new, updated, unchanged, rejected) without writing anything.
        clock: the import time, stored as ``created_at`` of new conversations.

    Raises:
        FileNotFoundError: if ``path`` does not exist (named in the message).
        ValueError: for an unknown format, or a field map naming an unknown target.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    field_map = parse_field_map(field_map)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} does not exist or is not a file")
    if fmt == "csv":
        records = _csv_records(path, max_line_bytes, numbers=(field_map.get("llm_confidence", "llm_confidence"),))
    elif fmt == "parquet":
        records = _parquet_records(path)
    else:
        records = _jsonl_records(path, max_line_bytes)
    report = ConversationImportReport(dry_run=dry_run)
    seen: dict[str, int] = {}  # session id -> the line that gave it
    pending: list[tuple[int, dict[str, Any]]] = []
    now = clock()
    for line_no, record, problem in records:
        report.lines += 1
        doc = None
        if problem is None:
            try:
                doc, problem = parse_conversation_record(record, field_map)
            except _RECORD_ERRORS as exc:  # any error of one record is that line's rejection
                doc, problem = None, f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
        if problem is None and doc["session_id"] in seen:
            problem = f"session id {_short(doc['session_id'])} already given on line {seen[doc['session_id']]}"
        if problem:
            report.reject(line_no, problem)
            continue
        seen[doc["session_id"]] = line_no
        pending.append((line_no, {**doc, "created_at": now}))
        if len(pending) >= BATCH:
            _store_batch(store, pending, report, dry_run)
            pending = []
    _store_batch(store, pending, report, dry_run)
    return report


def _store_batch(store, pending: list[tuple[int, dict[str, Any]]], report: ConversationImportReport, dry_run: bool) -> None:
    """Upsert one batch; a batch the store cannot encode is retried record by record to find the bad one."""
    if not pending:
        return
    try:
        outcomes = store.upsert_classifications([doc for _, doc in pending], IMPORTED_FIELDS, write=not dry_run)
    except _RECORD_ERRORS:
        if len(pending) == 1:
            raise
        for one in pending:
            try:
                _store_batch(store, [one], report, dry_run)
            except _RECORD_ERRORS as exc:
                report.reject(one[0], f"cannot be stored ({type(exc).__name__}: {str(exc)[:80]})")
        return
    for outcome in outcomes:
        if outcome == "new":
            report.imported += 1
        elif outcome == "updated":
            report.updated += 1
        else:
            report.duplicates += 1
