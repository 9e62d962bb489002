"""Optional MLflow tracking: fold runs with their params, per-epoch metrics and artifacts, and the
champion as a registered, servable model version with the ``champion`` alias.

Off unless ``LEGOLAS_MLFLOW_TRACKING_URI`` is set (``settings.mlflow_tracking_uri``); LEGOLAS's own
registry (``lifecycle/registry.py``) stays the source of truth and MLflow mirrors it, so people who
compare runs in MLflow see LEGOLAS there too. Words as in MLflow: an *experiment* per tenant
(``legolas/<tenant>``), a *run* per fold of a training, a *registered model* per tenant
(``legolas-<tenant>``) whose *versions* are LEGOLAS versions (tag ``legolas.version``), each a pyfunc
model of the whole ensemble (``scoring/pyfunc.py``): ``mlflow models serve -m
models:/legolas-<tenant>@champion --env-manager local`` serves the champion.

A run's params and metrics go in batches (``log_batch``, within MLflow's per-call limits), and a fold
already logged for the same training key with the same checkpoint (a fold reused by a later
materialization) keeps its run instead of getting a new one.

Example:
    >>> tracker = MlflowTracker("sqlite:///var/mlflow.db")                              # doctest: +SKIP
    >>> tracker.log_folds("demo", "3f2a...", config, {"0": fold_result, ...})              # doctest: +SKIP
    >>> tracker.set_champion("demo", "3f2a...", manifest, "var/output/demo/.../manifest.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

CHAMPION_ALIAS = "champion"
EPOCH_METRICS = ("train_loss", "val_loss", "val_balanced_accuracy", "val_f1_macro", "val_accuracy")
#: The tag of a model version registered as a pyfunc of the ensemble (versions registered before
#: serving existed hold only the manifest, and are registered again when promoted).
FLAVOR_TAG, PYFUNC = "legolas.flavor", "pyfunc"
#: MLflow's limits for one ``log_batch`` call (``mlflow.utils.validation``: 100 params, 1000 metrics,
#: 1000 entities in all).
MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH = 100, 1000, 1000


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Config as MLflow params: nested keys joined with '.', values as strings (MLflow's limit: 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def batches(n_params: int, n_metrics: int) -> Iterator[tuple[slice, slice]]:
    """Split ``n_params`` params and ``n_metrics`` metrics into the fewest ``log_batch`` calls MLflow accepts.

    Params go first (at most ``MAX_PARAMS_PER_BATCH`` a call); metrics fill what a call has left
    (``MAX_METRICS_PER_BATCH``, ``MAX_ENTITIES_PER_BATCH`` with the params). Yields one
    ``(params, metrics)`` pair of slices per call; nothing when there is nothing to log.
    """
    p = m = 0
    while p < n_params or m < n_metrics:
        p_end = min(n_params, p + MAX_PARAMS_PER_BATCH)
        m_end = min(n_metrics, m + MAX_METRICS_PER_BATCH, m + MAX_ENTITIES_PER_BATCH - (p_end - p))
        yield slice(p, p_end), slice(m, m_end)
        p, m = p_end, m_end


def fold_run_to_reuse(logged: Mapping[str, Mapping[str, str]], fold: str, checkpoint_sha256: str | None) -> str | None:
    """The finished run that already holds this fold of a training, or ``None`` when it needs a new run.

    Args:
        logged: per run id, the tags of the finished runs of the same training key.
        fold: the fold's key.
        checkpoint_sha256: the SHA-256 of the fold's weights (``None`` when unknown). A run tagged
            with another checkpoint logged another model of the fold (retrained after its
            checkpoint was lost): that run is not this fold's.

    Returns:
        The run id to reuse (the first by id when several qualify), or ``None``.
    """
    for run_id in sorted(logged):
        tags = logged[run_id]
        if tags.get("legolas.fold") != str(fold):
            continue
        logged_sha = tags.get("legolas.checkpoint_sha256")
        if checkpoint_sha256 is None or logged_sha is None or logged_sha == checkpoint_sha256:
            return run_id
    return None


def _checkpoint_sha256(fold: Mapping[str, Any]) -> str | None:
    """The fold's weights digest from its sidecar, or ``None`` when the fold names no readable checkpoint."""
    from legolas_ml.training.checkpoint import CheckpointError, read_sidecar

    path = fold.get("checkpoint_path")
    if not path:
        return None
    try:
        return str(read_sidecar(path)["sha256"])
    except CheckpointError:
        return None


def default_artifact_root(tracking_uri: str) -> str | None:
    """Beside a SQLite store (``sqlite:///var/mlflow.db`` -> ``var/mlflow-artifacts``); MLflow's own default otherwise.

    MLflow's default for a database store is ``./mlruns`` under the current directory, which would
    put artifacts wherever the webserver or daemon happened to start.
    """
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent.joinpath("mlflow-artifacts").as_uri()
    return None


class MlflowTracker:
    """Mirrors LEGOLAS trainings and champions into an MLflow tracking server or local store.

    Args:
        tracking_uri: ``sqlite:///path.db``, ``file:/dir``, or an ``http(s)://`` server.
        artifact_root: where new experiments keep artifacts; default: beside a SQLite file, else MLflow's.

    Raises:
        ImportError: when mlflow is not installed (``pip install -e '.[tracking]'``).
    """

    def __init__(self, tracking_uri: str, artifact_root: str | None = None) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri must be a non-empty MLflow tracking URI, got ''")
        try:
            import mlflow
        except ImportError as exc:
            raise ImportError(f"LEGOLAS_MLFLOW_TRACKING_URI is set but mlflow is not installed: pip install -e '.[tracking]' ({exc})") from None
        self.mlflow = mlflow
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root or default_artifact_root(tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def experiment_id(self, tenant: str) -> str:
        name = f"legolas/{tenant}"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_root}/{tenant}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location, tags={"legolas.tenant": tenant})

    def log_folds(self, tenant: str, training_key: str, config: Mapping[str, Any], folds: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """One MLflow run per fold: config as params, every epoch's metrics by step, the best metrics,
        the training curve and the fold's result record as artifacts. Returns ``{fold: run_id}``.

        Params and metrics go in ``log_batch`` calls (``batches``). A fold whose model is already
        logged for ``training_key`` (``fold_run_to_reuse``: a finished run of the same fold and
        checkpoint, as when ``fold_models`` reuses a finished fold) keeps that run: nothing is logged.

        Args:
            tenant: the tenant (its experiment).
            training_key: the training's key, which is also the ensemble's version.
            config: the training config (``TrainingConfig.to_dict()``).
            folds: per fold key, the fold's result (``FoldResult.to_dict()`` plus ``curve_path``,
                ``data_version``, ``split_fingerprint``).
        """
        experiment = self.experiment_id(tenant)
        params = _flatten(config)
        logged = self._fold_runs(experiment, training_key)
        run_ids = {}
        for key, fold in sorted(folds.items(), key=lambda kv: int(kv[0])):
            sha = _checkpoint_sha256(fold)
            earlier = fold_run_to_reuse(logged, str(key), sha)
            if earlier is not None:  # the same fold model (reused checkpoint): already logged, once is enough
                run_ids[str(key)] = earlier
                continue
            tags = {
                "legolas.tenant": tenant, "legolas.version": training_key, "legolas.fold": str(key),
                "legolas.data_version": str(fold.get("data_version")), "legolas.split": str(fold.get("split_fingerprint")),
                "legolas.reused": str(fold.get("reused", False)),
                "mlflow.runName": f"{tenant} {training_key[:8]} fold {key}",
                **({"legolas.checkpoint_sha256": sha} if sha else {}),
            }
            run = self.client.create_run(experiment, tags=tags)
            run_id = run.info.run_id
            metrics = []
            for record in fold.get("history", []):
                for metric in EPOCH_METRICS:
                    if metric in record:
                        metrics.append((metric, float(record[metric]), int(record["epoch"])))
            best = fold["best_metrics"]
            metrics += [(f"best_val_{metric}", float(best[metric]), 0) for metric in ("balanced_accuracy", "accuracy", "f1_macro")]
            metrics.append(("shipped_epoch", float(fold["best_epoch"]), 0))
            metrics.append(("train_samples_per_s", float(fold["train_samples_per_s"]), 0))
            self._log_batched(run_id, params, metrics)
            if fold.get("curve_path") and Path(fold["curve_path"]).exists():
                self.client.log_artifact(run_id, fold["curve_path"])
            summary = {k: v for k, v in fold.items() if k != "history"}
            self.client.log_dict(run_id, json.loads(json.dumps(summary, default=str)), f"fold{key}_result.json")
            self.client.set_terminated(run_id)
            run_ids[str(key)] = run_id
        return run_ids

    def _fold_runs(self, experiment: str, training_key: str) -> dict[str, dict[str, str]]:
        """The tags of the finished fold runs of one training (one search, whatever K)."""
        runs = self.client.search_runs(
            [experiment], filter_string=f"tags.`legolas.version` = '{training_key}' and attributes.status = 'FINISHED'",
        )
        return {run.info.run_id: dict(run.data.tags) for run in runs if "legolas.fold" in run.data.tags}

    def _log_batched(self, run_id: str, params: Mapping[str, str], metrics: Sequence[tuple[str, float, int]]) -> None:
        """Params and ``(name, value, step)`` metrics in as few ``log_batch`` calls as MLflow's limits allow."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(name, value) for name, value in params.items()]
        metrics = [Metric(name, value, now, step) for name, value, step in metrics]
        for p, m in batches(len(params), len(metrics)):
            self.client.log_batch(run_id, metrics=metrics[m], params=params[p])

    def set_champion(self, tenant: str, version: str, manifest: Mapping[str, Any], manifest_path: str | Path) -> str:
        """Register ``version`` (once) as a servable version of ``legolas-<tenant>`` and point ``champion`` at it.

        An ensemble run records the test metrics and holds the version's pyfunc model (folds,
        tokenizer, manifest: ``scoring/pyfunc.py``) under ``model``, the model version's source.
        Promoting a version registered earlier as a pyfunc (a rollback) only moves the alias.
        Returns the MLflow model version number.

        Raises:
            CheckpointError: if a fold of the version is missing, corrupt or replaced since the manifest.
        """
        name = f"legolas-{tenant}"
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, tags={"legolas.tenant": tenant})
        existing = [
            v for v in self.client.search_model_versions(f"name = '{name}'")
            if v.tags.get("legolas.version") == version and v.tags.get(FLAVOR_TAG) == PYFUNC
        ]
        number = min(int(v.version) for v in existing) if existing else self._register(name, tenant, version, manifest, manifest_path)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(number))
        return str(number)

    def _register(self, name: str, tenant: str, version: str, manifest: Mapping[str, Any], manifest_path: str | Path) -> int:
        from legolas_ml.scoring.pyfunc import save_ensemble_model

        run = self.client.create_run(self.experiment_id(tenant), tags={
            "legolas.tenant": tenant, "legolas.version": version, "mlflow.runName": f"{tenant} {version[:8]} ensemble",
        })
        run_id = run.info.run_id
        # test_* is every test session (mostly LLM labels at first); test_human_* and llm_agreement_*
        # are the human-labelled sessions and the agreement with the LLM on the others, apart.
        scores = (("test", "test_metrics"), ("test_human", "test_metrics_human"), ("llm_agreement", "llm_agreement"))
        metrics = [
            (f"{prefix}_{metric}", float(value), 0)
            for prefix, field in scores for metric, value in (manifest.get(field) or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        params = {"n_folds": str(len(manifest.get("checkpoints", []))), "data_version": str(manifest.get("data_version"))}
        self._log_batched(run_id, params, metrics)
        # Written locally first, then uploaded: the artifact store may be remote (S3, an MLflow server).
        with tempfile.TemporaryDirectory(prefix="legolas-model-") as staging:
            model_dir = save_ensemble_model(manifest, manifest_path, Path(staging) / "model")
            self.client.log_artifacts(run_id, str(model_dir), "model")
        self.client.set_terminated(run_id)
        created = self.client.create_model_version(
            name, f"{run.info.artifact_uri}/model", run_id=run_id, tags={"legolas.version": version, FLAVOR_TAG: PYFUNC},
        )
        return int(created.version)


def redacted(error: BaseException | str) -> str:
    """An error's text with the tracking URI's password removed (``user:***@host``), for logs and metadata."""
    from legolas_ml.core import settings
    from legolas_ml.data.store import scrub

    text = str(error)
    try:
        uri = settings.mlflow_tracking_uri()
    except ValueError:  # the setting itself is invalid: its error already hides the password
        uri = ""
    return re.sub(r"//([^:/@\s]+):[^@/\s]*@", r"//\1:***@", scrub(text, uri) if uri else text)


def tracker_from_settings() -> MlflowTracker | None:
    """The tracker for ``LEGOLAS_MLFLOW_TRACKING_URI``, or ``None`` when tracking is off (the default)."""
    from legolas_ml.core import settings

    uri = settings.mlflow_tracking_uri()
    return MlflowTracker(uri) if uri else None
