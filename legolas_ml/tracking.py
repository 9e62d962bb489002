"""Optional MLflow tracking: fold runs with their params, per-epoch metrics and artifacts, and the
champion as a registered model version with the ``champion`` alias.

Off unless ``LEGOLAS_MLFLOW_TRACKING_URI`` is set (``settings.mlflow_tracking_uri``); LEGOLAS's own
registry (``lifecycle/registry.py``) stays the source of truth and MLflow mirrors it, so people who
compare runs in MLflow see LEGOLAS there too. Words as in MLflow: an *experiment* per tenant
(``legolas/<tenant>``), a *run* per fold of a training, a *registered model* per tenant
(``legolas-<tenant>``) whose *versions* are LEGOLAS versions (tag ``legolas.version``).

Example:
    >>> tracker = MlflowTracker("sqlite:///var/mlflow.db")                              # doctest: +SKIP
    >>> tracker.log_folds("demo", "3f2a...", config, {"0": fold_result, ...})              # doctest: +SKIP
    >>> tracker.set_champion("demo", "3f2a...", manifest, "var/output/demo/.../manifest.json")  # doctest: +SKIP
"""

from __future__ import annotations

import re

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHAMPION_ALIAS = "champion"
EPOCH_METRICS = ("train_loss", "val_loss", "val_balanced_accuracy", "val_f1_macro", "val_accuracy")


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

        Args:
            tenant: the tenant (its experiment).
            training_key: the training's key, which is also the ensemble's version.
            config: the training config (``TrainingConfig.to_dict()``).
            folds: per fold key, the fold's result (``FoldResult.to_dict()`` plus ``curve_path``,
                ``data_version``, ``split_fingerprint``).
        """
        experiment = self.experiment_id(tenant)
        params = _flatten(config)
        run_ids = {}
        for key, fold in sorted(folds.items(), key=lambda kv: int(kv[0])):
            tags = {
                "legolas.tenant": tenant, "legolas.version": training_key, "legolas.fold": str(key),
                "legolas.data_version": str(fold.get("data_version")), "legolas.split": str(fold.get("split_fingerprint")),
                "legolas.reused": str(fold.get("reused", False)),
                "mlflow.runName": f"{tenant} {training_key[:8]} fold {key}",
            }
            run = self.client.create_run(experiment, tags=tags)
            run_id = run.info.run_id
            for name, value in params.items():
                self.client.log_param(run_id, name, value)
            for record in fold.get("history", []):
                for metric in EPOCH_METRICS:
                    if metric in record:
                        self.client.log_metric(run_id, metric, float(record[metric]), step=int(record["epoch"]))
            best = fold["best_metrics"]
            for metric in ("balanced_accuracy", "accuracy", "f1_macro"):
                self.client.log_metric(run_id, f"best_val_{metric}", float(best[metric]))
            self.client.log_metric(run_id, "shipped_epoch", float(fold["best_epoch"]))
            self.client.log_metric(run_id, "train_samples_per_s", float(fold["train_samples_per_s"]))
            if fold.get("curve_path") and Path(fold["curve_path"]).exists():
                self.client.log_artifact(run_id, fold["curve_path"])
            summary = {k: v for k, v in fold.items() if k != "history"}
            self.client.log_dict(run_id, json.loads(json.dumps(summary, default=str)), f"fold{key}_result.json")
            self.client.set_terminated(run_id)
            run_ids[str(key)] = run_id
        return run_ids

    def set_champion(self, tenant: str, version: str, manifest: Mapping[str, Any], manifest_path: str | Path) -> str:
        """Register ``version`` (once) as a version of ``legolas-<tenant>`` and point ``champion`` at it.

        An ensemble run records the test metrics and the manifest; its artifacts are the model
        version's source. Promoting a version registered earlier (a rollback) only moves the alias.
        Returns the MLflow model version number.
        """
        name = f"legolas-{tenant}"
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, tags={"legolas.tenant": tenant})
        existing = [v for v in self.client.search_model_versions(f"name = '{name}'") if v.tags.get("legolas.version") == version]
        if existing:
            number = existing[0].version
        else:
            run = self.client.create_run(self.experiment_id(tenant), tags={
                "legolas.tenant": tenant, "legolas.version": version, "mlflow.runName": f"{tenant} {version[:8]} ensemble",
            })
            run_id = run.info.run_id
            # test_* is every test session (mostly LLM labels at first); test_human_* and llm_agreement_*
            # are the human-labelled sessions and the agreement with the LLM on the others, apart.
            scores = (("test", "test_metrics"), ("test_human", "test_metrics_human"), ("llm_agreement", "llm_agreement"))
            for prefix, field in scores:
                for metric, value in (manifest.get(field) or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.client.log_metric(run_id, f"{prefix}_{metric}", float(value))
            self.client.log_param(run_id, "n_folds", str(len(manifest.get("checkpoints", []))))
            self.client.log_param(run_id, "data_version", str(manifest.get("data_version")))
            self.client.log_artifact(run_id, str(manifest_path), "ensemble")
            self.client.set_terminated(run_id)
            source = f"{run.info.artifact_uri}/ensemble"
            created = self.client.create_model_version(name, source, run_id=run_id, tags={"legolas.version": version})
            number = created.version
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, number)
        return str(number)


def redacted(error: BaseException | str) -> str:
    """An error's text with the tracking URI's password removed (``user:***@host``), for logs and metadata."""
    from legolas_ml import settings
    from legolas_ml.data.store import scrub

    text = str(error)
    try:
        uri = settings.mlflow_tracking_uri()
    except ValueError:  # the setting itself is invalid: its error already hides the password
        uri = ""
    return re.sub(r"//([^:/@\s]+):[^@/\s]*@", r"//\1:***@", scrub(text, uri) if uri else text)


def tracker_from_settings() -> MlflowTracker | None:
    """The tracker for ``LEGOLAS_MLFLOW_TRACKING_URI``, or ``None`` when tracking is off (the default)."""
    from legolas_ml import settings

    uri = settings.mlflow_tracking_uri()
    return MlflowTracker(uri) if uri else None
