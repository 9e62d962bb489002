"""The ensemble as an MLflow pyfunc model: ``mlflow models serve -m models:/legolas-<tenant>@champion``
answers what ``ensemble_predictions`` writes into the store.

A version's model directory is self-contained: its artifacts are the K fold checkpoints with their
sidecars (weights, labels, the HF model config and the training config), the tokenizer saved from
the folds' ``model_name``, and the version's manifest. Nothing is read from the training machine's
paths, so the bundled MiniLM (a local package path) serves on a machine without it. The inference
is ``FoldEnsemble.predict_proba`` in ``EVAL_PRECISION`` and the answer per text is
``prediction_values``: the same code, precision and rounding as the scoring asset.

The model's code is LEGOLAS itself, imported by reference (MLflow's "models from code":
``served_model.py``, no pickled object): serve it from an environment where the project is installed
(``--env-manager local``).

Example:
    >>> model_dir = save_ensemble_model(manifest, "var/output/demo/.../manifest.json", "/tmp/model")  # doctest: +SKIP
    >>> model = mlflow.pyfunc.load_model("models:/legolas-demo@champion")                            # doctest: +SKIP
    >>> model.predict(pd.DataFrame({"text": ["my parcel never arrived"]}))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
from legolas_ml.scoring.predictions import prediction_values
from legolas_ml.training.checkpoint import CheckpointError, read_sidecar, sidecar_path
from legolas_ml.training.modeling import resolve_device

#: What ``predict`` answers per row, after ``session_id`` when the input has one: the fields
#: ``ensemble_predictions`` writes, but ``ml_scored_at`` (a served answer is not stored).
OUTPUT_COLUMNS = ("ml_prediction", "ml_confidence", "ml_probabilities", "ml_model_version", "ml_text_sha256")
#: ``text`` is required; ``session_id`` (a string) is optional and comes back unchanged beside the answer.
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "text"), ColSpec("string", "session_id", required=False)]))
#: Settings a caller may override at load time (``mlflow.pyfunc.load_model(uri, model_config={...})``).
DEFAULT_MODEL_CONFIG = {"device": "auto", "batch_size": 64}
TOKENIZER_ARTIFACT = "tokenizer"
MANIFEST_ARTIFACT = "manifest"
#: Pinned in the model's requirements so another environment knows what it was logged with; LEGOLAS
#: itself is not on an index, hence ``--env-manager local``.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "numpy", "pandas")


def fold_artifact(fold: int) -> str:
    """The artifact key of fold ``fold``'s weights (its sidecar: ``fold<k>_sidecar``)."""
    return f"fold{fold}"


def _fold_paths(artifacts: Mapping[str, str]) -> list[str]:
    """The weights files in fold order (the manifest's order, which the ensemble's average follows)."""
    folds = sorted(int(key[len("fold"):]) for key in artifacts if key.startswith("fold") and key[len("fold"):].isdigit())
    if not folds or folds != list(range(len(folds))):
        raise CheckpointError(f"the model's artifacts must hold folds 0..K-1, got {sorted(artifacts)}")
    paths = [artifacts[fold_artifact(k)] for k in folds]
    for k, path in enumerate(paths):
        # MLflow copies every artifact into one directory: the sidecar lands beside its weights.
        assert str(sidecar_path(path)) == artifacts[f"{fold_artifact(k)}_sidecar"], f"fold {k}'s sidecar is not beside {path}"
    return paths


def model_texts(frame: pd.DataFrame) -> list[str]:
    """The ``text`` column as a list, refused when a row has no text to score.

    Raises:
        ValueError: if there is no ``text`` column (the available ones are named), or a row's text is
            missing, not a string or blank (``ensemble_predictions`` leaves such documents unscored).
    """
    if "text" not in frame.columns:
        raise ValueError(f"the input needs a 'text' column (and optionally 'session_id'), got columns {list(frame.columns)}")
    bad = [i for i, text in enumerate(frame["text"]) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(f"'text' must be a non-empty string in every row, got {len(bad)} row(s) without one (rows {bad[:10]})")
    return frame["text"].tolist()


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """One LEGOLAS version as an MLflow pyfunc: texts in, the champion's predictions out.

    ``model_config`` (defaults in ``DEFAULT_MODEL_CONFIG``): ``device`` (``"auto"``, ``"cpu"`` or
    ``"cuda:N"``) and ``batch_size`` (texts per forward pass).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the K folds (verified against their sidecars) and the bundled tokenizer.

        Raises:
            ValueError: if ``model_config`` has a ``batch_size`` < 1 or an unknown device.
            CheckpointError: if a fold is corrupt or its labels differ from the manifest's.
        """
        # MLflow itself drops (with a warning) a load-time key the model was not saved with.
        config = {**DEFAULT_MODEL_CONFIG, **(context.model_config or {})}
        if not isinstance(config["batch_size"], int) or config["batch_size"] < 1:
            raise ValueError(f"model_config batch_size must be an integer >= 1, got {config['batch_size']!r}")
        self.batch_size = config["batch_size"]
        self.manifest = json.loads(Path(context.artifacts[MANIFEST_ARTIFACT]).read_text())
        self.ensemble = FoldEnsemble(
            _fold_paths(context.artifacts), device=str(resolve_device(config["device"])), precision=EVAL_PRECISION,
            tokenizer=context.artifacts[TOKENIZER_ARTIFACT],
        )
        if self.ensemble.labels != list(self.manifest["labels"]):
            raise CheckpointError(f"the folds' labels {self.ensemble.labels} differ from the manifest's {self.manifest['labels']}")

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Each row's prediction: ``session_id`` (when given), then ``OUTPUT_COLUMNS``.

        Args:
            context: MLflow's context (unused: everything was loaded by ``load_context``).
            model_input: a DataFrame with a ``text`` column and optionally ``session_id``.
            params: unused; the settings are ``model_config``'s.

        Returns:
            One row per input row, in order: the values ``ensemble_predictions`` writes.

        Raises:
            ValueError: as ``model_texts``.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        texts = model_texts(frame)
        probs = self.ensemble.predict_proba(texts, self.batch_size)  # (n, n_classes)
        version = self.manifest["version"]
        rows = [prediction_values(row, self.ensemble.labels, version, text) for row, text in zip(probs, texts)]
        answer = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        if "session_id" in frame.columns:
            answer.insert(0, "session_id", frame["session_id"].tolist())
        return answer


def _requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={installed_version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def save_ensemble_model(manifest: Mapping[str, Any], manifest_path: str | Path, path: str | Path) -> Path:
    """Write a version as an MLflow pyfunc model directory at ``path`` (which must not exist yet).

    Args:
        manifest: the version's manifest (``ModelRegistry.manifest``): checkpoints, their SHA-256, labels.
        manifest_path: where that manifest is (``ModelRegistry.manifest_path``); it travels with the model.
        path: the model directory to create.

    Returns:
        ``path``.

    Raises:
        CheckpointError: if a checkpoint is missing, corrupt, or no longer the one the manifest recorded.
        ValueError: if the manifest lists no checkpoint.
    """
    checkpoints = list(manifest.get("checkpoints") or [])
    recorded = list(manifest.get("sha256") or [])
    for k, checkpoint in enumerate(checkpoints):
        found = read_sidecar(checkpoint)["sha256"]
        if k < len(recorded) and found != recorded[k]:
            raise CheckpointError(
                f"{checkpoint} has sha256 {found[:12]}... but version {manifest.get('version')}'s manifest recorded "
                f"{recorded[k][:12]}...: the fold was replaced after the version was written"
            )
    # The ensemble's own checks (the folds agree on labels, model and max length) before anything is written.
    ensemble = FoldEnsemble(checkpoints, device="cpu", precision=EVAL_PRECISION, resident=False)
    with tempfile.TemporaryDirectory(prefix="legolas-pyfunc-") as staging:
        tokenizer_dir = Path(staging) / TOKENIZER_ARTIFACT
        ensemble.tokenizer.save_pretrained(str(tokenizer_dir))
        artifacts = {MANIFEST_ARTIFACT: str(manifest_path), TOKENIZER_ARTIFACT: str(tokenizer_dir)}
        for k, checkpoint in enumerate(checkpoints):
            artifacts[fold_artifact(k)] = str(checkpoint)
            artifacts[f"{fold_artifact(k)}_sidecar"] = str(sidecar_path(checkpoint))
        # Explicit requirements: inferring them would load the whole model once more in a subprocess.
        mlflow.pyfunc.save_model(
            path=str(path), python_model=str(Path(__file__).with_name("served_model.py")), artifacts=artifacts, signature=SIGNATURE,
            model_config=dict(DEFAULT_MODEL_CONFIG), pip_requirements=_requirements(),
            metadata={"legolas.tenant": manifest.get("tenant"), "legolas.version": manifest.get("version")},
        )
    return Path(path)
