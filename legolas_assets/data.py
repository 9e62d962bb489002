"""Stage 1: the quality gate over the tenant's store."""

from dagster import AssetExecutionContext, AssetsDefinition, DataVersion, Failure, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.core.contracts import LabeledDataset
from legolas_ml.core.datasets import content_hash, write_dataset
from legolas_ml.data.quality_gate import GateSettings, gate_from_store
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.lifecycle.dataset_diff import dataset_diff
from legolas_ml.lifecycle.holdout import in_holdout, split_holdout
from legolas_ml.lifecycle.registry import ChampionUnavailableError

from .checks import members_needed
from .resources import MongoResource, LifecycleResource, TrainingResource
from .reviews import REVIEWS_KEY
from .stages import DATA, SINGLE_RUN, placement
from .tenancy import TenantPlan


def build_labeled_dataset(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/labeled_dataset``: the quality gate over the tenant's documents."""

    @asset(key=tenant.key("labeled_dataset"), **placement(tenant, DATA), backfill_policy=SINGLE_RUN, deps=[tenant.key(REVIEWS_KEY)])
    def labeled_dataset(
        context: AssetExecutionContext, mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource
    ) -> Output[LabeledDataset]:
        """Sessions that passed the quality gate (human reviews, + trusted LLM labels on a first training),
        minus the tenant's evaluation holdout, which is written beside them and never trained on."""
        artifacts = training.artifacts(tenant.name)
        try:
            # The mode follows the model in service only; a damaged champion is an error, never "no model".
            champion = lifecycle.registry(training, tenant.name).champion()
        except ChampionUnavailableError as exc:
            raise Failure(description=f"labeled_dataset: {exc}") from None
        try:
            with mongo.open(tenant.name) as store:
                result = gate_from_store(
                    store, champion is not None, training.dataset_mode, GateSettings(training.max_text_chars),
                    retrain=training.retrain(), min_rows_per_class=members_needed(tenant),
                    held_out=lambda sid: in_holdout(tenant.name, sid, lifecycle.holdout_share),
                )
                random_ids = store.random_sample_ids()
        except StoreUnavailableError as exc:
            raise Failure(description=f"labeled_dataset: the store is unavailable: {exc}", allow_retries=True) from None
        split = split_holdout(result.dataset, tenant.name, lifecycle.holdout_share)
        if split.training.empty:
            raise Failure(
                description=f"labeled_dataset: no usable training rows for tenant {tenant.name!r} in {mongo.describe()} "
                f"(mode {result.mode}; quarantined {result.counts['quarantined']}; held out {len(split.holdout)}). "
                "Load data with `legolas demo-data` or `legolas import-reviews`."
            )
        data_version = content_hash(split.training)
        path = write_dataset(artifacts.dataset_path(data_version), split.training)
        holdout_path = write_dataset(artifacts.holdout_path(data_version), split.holdout)
        context.log.info(f"{result.mode} training: {result.mode_reason}; {result.counts}; holdout {split.summary()}")
        per_class = {str(k): int(v) for k, v in split.training["label"].value_counts().sort_index().items()}
        per_source = {s: int((split.training["source"] == s).sum()) for s in ("human", "llm")}
        summary = {
            **result.summary(),
            "content_hash": data_version,
            "rows": len(split.training),
            "per_class": per_class,
            "per_source": per_source,
            "gate_per_class": result.per_class,
            "holdout": split.summary(),
        }
        value = LabeledDataset(
            tenant=tenant.name, path=str(path), holdout_path=str(holdout_path), data_version=data_version, mode=result.mode,
            classes=sorted(per_class), summary=summary,
            # What the model in service was trained on, for the shrinkage check.
            champion_dataset=champion.get("dataset_summary") if champion else None,
            champion_version=champion.get("version") if champion else None,
            # Holdout sessions a reviewer got as random samples (the queue's random slice): reported apart.
            holdout_random_ids=sorted(set(split.holdout["session_id"].astype(str)) & random_ids),
        )
        quarantined = {k: v for k, v in result.quarantined.items() if v}
        metadata = {
            "tenant": tenant.name,
            "source": mongo.describe(),
            "mode": result.mode,
            "mode_reason": result.mode_reason,
            "champion_version": value.champion_version or "none",
            "rows": len(split.training),
            **_diff_metadata(summary, value.champion_dataset),
            "inputs": result.counts["inputs"],
            "from_human_reviews": per_source["human"],
            "from_llm": per_source["llm"],
            "llm_rows_kept_by_class": MetadataValue.json(result.llm_kept),
            "left_out_by_retrain_data": result.counts.get("left_out_by_retrain_data", 0),
            "holdout_sessions": len(split.holdout),
            "holdout_random_samples": len(value.holdout_random_ids),
            "holdout_per_class": MetadataValue.json(split.per_class),
            "holdout_excluded_unreviewed": split.excluded_unreviewed,
            "quarantined": result.counts["quarantined"],
            "superseded": result.counts["superseded"],
            "data_version": data_version,
            "path": MetadataValue.path(str(path)),
            "per_class": MetadataValue.json(per_class),
            "quarantine_by_reason": MetadataValue.json(quarantined),
            "superseded_by_kind": MetadataValue.json(result.superseded),
            "quarantine_samples": MetadataValue.json(result.quarantine_samples),
        }
        return Output(value, data_version=DataVersion(data_version), metadata=metadata)
    return labeled_dataset


def _diff_metadata(summary: dict, champion_dataset: dict | None) -> dict:
    """Rows, classes and sources against the model in service (a retraining's first question)."""
    if not champion_dataset or not champion_dataset.get("rows"):
        return {"vs_model_in_service": "no model in service: a first training"}
    diff = dataset_diff(summary, champion_dataset)
    return {
        "vs_model_in_service": diff.describe(),
        "champion_rows": diff.champion_rows,
        "rows_change": diff.rows_change,
        "rows_ratio": round(diff.ratio, 4),
        "classes_added": ", ".join(diff.classes_added) or "none",
        "classes_removed": ", ".join(diff.classes_removed) or "none",
        "diff_by_class_and_source": MetadataValue.table(
            records=[TableRecord({"part": part, "model_in_service": before, "now": now, "change": now - before})
                     for part, before, now in diff.parts],
            schema=TableSchema(columns=[TableColumn("part", "string"), TableColumn("model_in_service", "int"),
                                        TableColumn("now", "int"), TableColumn("change", "int")]),
        ),
    }
