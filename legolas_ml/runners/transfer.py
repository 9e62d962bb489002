"""A fold trained away from the output directory, shipped back as bytes and checked before it lands.

A remote worker shares no filesystem with the driver. It trains the fold with ``train_plan_fold``
into a temporary directory of its own, so the files are exactly those a sequential run writes
(checkpoint, sidecar, ``.result.json``), and returns their bytes with each file's SHA-256. The
driver checks every hash, writes the files atomically into the real fold directory (the result
record last: it is what marks a fold finished) and verifies the fold the way a rerun would
(``finished_fold``) before accepting it. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from legolas_ml.core.atomic_io import atomic_write, write_json_atomic
from legolas_ml.data.splits import SplitPlan
from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import EncodedDataset, finished_fold, train_plan_fold
from legolas_ml.training.trainer import EpochCallback, FoldResult

RECORD_SUFFIX = ".result.json"
#: A fold's temporary directory names the worker's pid, so a later fold can tell a dead worker's.
_TEMP_DIR = re.compile(r"legolas-fold\d+-pid(\d+)-")


@dataclass
class FoldPayload:
    """What a worker returns for one fold: its files' bytes and hashes, and its result."""

    fold: int
    checkpoint: str  # the weights file's name among ``files``
    files: dict[str, bytes]  # relative path -> content: weights, sidecar, result record
    sha256: dict[str, str]  # relative path -> hex SHA-256 of the content, computed by the worker
    result: FoldResult  # checkpoint_path still points into the worker's temporary directory
    worker: str = ""  # host:pid that trained it
    device: str = ""


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def train_fold_payload(
    data: EncodedDataset,
    plan: SplitPlan,
    fold: int,
    config: TrainingConfig,
    *,
    data_version: str,
    on_epoch: EpochCallback | None = None,
    worker: str = "",
    device: str = "",
) -> FoldPayload:
    """Train one fold into a temporary directory and return its files as a ``FoldPayload``.

    A pure function of its inputs: it writes only into its temporary directory, which is gone when
    it returns (besides sweeping the directories of dead workers, ``remove_orphaned_fold_dirs``).

    Raises:
        NonFiniteLossError, ValueError: as ``train_plan_fold``.
    """
    remove_orphaned_fold_dirs()
    with tempfile.TemporaryDirectory(prefix=f"legolas-fold{fold}-pid{os.getpid()}-") as tmp:
        root = Path(tmp)
        result = train_plan_fold(data, plan, fold, config, root, data_version=data_version, on_epoch=on_epoch, reuse_finished=False)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        checkpoint = Path(result.checkpoint_path).relative_to(root).as_posix()
    return FoldPayload(
        fold=fold,
        checkpoint=checkpoint,
        files=files,
        sha256={name: sha256_hex(content) for name, content in files.items()},
        result=result,
        worker=worker,
        device=device,
    )


def remove_orphaned_fold_dirs() -> list[Path]:
    """Delete the temporary fold directories of workers that died (SIGKILL, force-cancel) on this node.

    A killed worker never cleans up, and its directory holds a checkpoint the size of the model.

    Returns:
        The directories removed.
    """
    removed = []
    for path in Path(tempfile.gettempdir()).glob("legolas-fold*-pid*-*"):
        match = _TEMP_DIR.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie is dead, only not yet reaped by its parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def accept_fold_payload(
    payload: FoldPayload,
    folds_dir: str | Path,
    *,
    data_version: str,
    split_fingerprint: str,
    config: TrainingConfig,
) -> FoldResult:
    """Verify a worker's fold, write it atomically into ``folds_dir`` and return its result.

    Every file's bytes must match the SHA-256 the worker sent, and the result record must name the
    weights that came with it; only then is anything written. The old result record goes first
    and the new one last, so a driver dying halfway leaves a fold that a rerun retrains.

    Raises:
        CheckpointError: a file does not match its hash, the record is missing or names other
            weights, or the written fold does not verify; the message names fold, file and worker.
    """
    where = f"fold {payload.fold} from worker {payload.worker or '?'}"
    if set(payload.files) != set(payload.sha256):
        raise CheckpointError(
            f"{where}: files {sorted(payload.files)} and hashes {sorted(payload.sha256)} do not match; nothing written"
        )
    for name, content in payload.files.items():
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or ".." in parts:
            raise CheckpointError(f"{where}: refusing file path {name!r} outside the fold directory; nothing written")
        actual = sha256_hex(content)
        if actual != payload.sha256[name]:
            raise CheckpointError(
                f"{where}: {name} has sha256 {actual[:12]}... but the worker sent {payload.sha256[name][:12]}...; "
                "corrupted in transit, nothing written"
            )
    records = [name for name in payload.files if name.endswith(RECORD_SUFFIX)]
    if len(records) != 1 or payload.checkpoint not in payload.files:
        raise CheckpointError(
            f"{where}: expected the weights {payload.checkpoint!r} and one {RECORD_SUFFIX} record, "
            f"got files {sorted(payload.files)}; nothing written"
        )
    record = json.loads(payload.files[records[0]])
    if record.get("sha256") != payload.sha256[payload.checkpoint]:
        raise CheckpointError(f"{where}: its result record names other weights than {payload.checkpoint}; nothing written")

    folds_dir = Path(folds_dir)
    path = folds_dir / payload.checkpoint
    record_path = folds_dir / records[0]
    record_path.unlink(missing_ok=True)
    for name in [payload.checkpoint] + sorted(set(payload.files) - {payload.checkpoint, records[0]}):
        content = payload.files[name]
        atomic_write(folds_dir / name, lambda tmp, content=content: tmp.write_bytes(content))
    # The one field that differs from the worker's record: where the checkpoint now lives.
    record["result"]["checkpoint_path"] = str(path)
    write_json_atomic(record_path, record)
    if finished_fold(path, data_version, split_fingerprint, config) is None:
        record_path.unlink(missing_ok=True)
        load_checkpoint(path)  # raises with the reason when the files themselves are at fault
        raise CheckpointError(
            f"{where}: written to {path} but its record does not match data {data_version}, "
            f"split {split_fingerprint} and this config; record removed, the fold will be retrained"
        )
    return replace(payload.result, checkpoint_path=str(path))
