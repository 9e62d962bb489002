"""Plain-text training logs, one file per run, so a long run can be followed with ``tail -f``."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path


def open_training_log(logs_dir: str | Path, run_id: str) -> tuple[logging.Logger, Path]:
    """A logger writing to ``<logs_dir>/training_<timestamp>_<run>.log`` (line-buffered, appended).

    Raises:
        OSError: if the directory cannot be created or written; the message names it.
    """
    logs_dir = Path(logs_dir)
    safe_run = re.sub(r"[^A-Za-z0-9]", "", run_id)[:8] or "local"
    try:
        logs_dir.mkdir(parents=True, exist_ok=True)
        path = logs_dir / f"training_{time.strftime('%Y%m%d-%H%M%S')}_{safe_run}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write training logs under {logs_dir}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(f"legolas.training.{safe_run}.{path.stem}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = [handler]
    return logger, path


def close_training_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
