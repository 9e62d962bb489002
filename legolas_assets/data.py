"""Stage 1: the quality gate over the tenant's store."""

from dagster import AssetExecutionContext, DataVersion, Failure, MetadataValue, Output, asset

from legolas_ml.lifecycle.artifacts import write_dataset
from legolas_ml.data.quality_gate import GateSettings, gate_from_store
from legolas_ml.data.store import StoreUnavailableError

from .resources import MongoResource, TrainingResource
from .stages import DATA, SINGLE_RUN


@asset(group_name=DATA, backfill_policy=SINGLE_RUN)
def labeled_dataset(context: AssetExecutionContext, mongo: MongoResource, training: TrainingResource) -> Output[dict]:
    """Sessions that passed the quality gate: human reviews (+ trusted LLM labels on a first training)."""
    artifacts = training.artifacts(mongo.tenant)
    has_model = artifacts.has_model()
    try:
        with mongo.open() as store:
            result = gate_from_store(store, has_model, training.dataset_mode, GateSettings(training.max_text_chars))
    except StoreUnavailableError as exc:
        raise Failure(description=f"labeled_dataset: the store is unavailable: {exc}", allow_retries=True) from None
    if result.dataset.empty:
        raise Failure(
            description=f"labeled_dataset: no usable training rows for tenant {mongo.tenant!r} in {mongo.describe()} "
            f"(mode {result.mode}; quarantined {result.counts['quarantined']}). Load data with `legolas demo-data` "
            "or `legolas import-reviews`."
        )
    path = write_dataset(artifacts.dataset_path(result.content_hash), result.dataset)
    context.log.info(f"{result.mode} training: {result.mode_reason}; {result.counts}")
    summary = result.summary()
    value = {
        "tenant": mongo.tenant,
        "path": str(path),
        "data_version": result.content_hash,
        "mode": result.mode,
        "classes": sorted(result.per_class),
        "summary": summary,
    }
    quarantined = {k: v for k, v in result.quarantined.items() if v}
    metadata = {
        "tenant": mongo.tenant,
        "source": mongo.describe(),
        "mode": result.mode,
        "mode_reason": result.mode_reason,
        "rows": len(result.dataset),
        "inputs": result.counts["inputs"],
        "from_human_reviews": result.per_source["human"],
        "from_llm": result.per_source["llm"],
        "quarantined": result.counts["quarantined"],
        "superseded": result.counts["superseded"],
        "data_version": result.content_hash,
        "path": MetadataValue.path(str(path)),
        "per_class": MetadataValue.json(result.per_class),
        "quarantine_by_reason": MetadataValue.json(quarantined),
        "superseded_by_kind": MetadataValue.json(result.superseded),
        "quarantine_samples": MetadataValue.json(result.quarantine_samples),
    }
    return Output(value, data_version=DataVersion(result.content_hash), metadata=metadata)
