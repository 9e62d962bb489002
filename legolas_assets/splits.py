"""Stage 2: the held-out test set and the stratified folds, as session-id lists."""

from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.core.contracts import LabeledDataset, StratifiedSplits
from legolas_ml.core.datasets import read_dataset
from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.training.cross_validation import plan_splits
from legolas_ml.data.splits import class_proportions

from .resources import GPUResource, TrainingResource
from .stages import DATA, SINGLE_RUN, placement
from .tenancy import TenantPlan


def build_stratified_splits(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/stratified_splits``: the tenant's test set and K folds."""

    @asset(key=tenant.key("stratified_splits"), ins=tenant.ins("labeled_dataset"), **placement(tenant, DATA), backfill_policy=SINGLE_RUN)
    def stratified_splits(
        context: AssetExecutionContext, labeled_dataset: LabeledDataset, training: TrainingResource, gpu: GPUResource
    ) -> Output[StratifiedSplits]:
        """Stratified held-out test set and K folds (one train/val split in dev mode)."""
        config = training.config(gpu, tenant)
        df = read_dataset(labeled_dataset.path)
        plan = plan_splits(df, config)
        label_of = dict(zip(df["session_id"], df["label"]))
        classes = labeled_dataset.classes
        rows = [("test", len(plan.test_ids), class_proportions(plan.test_ids, label_of, classes))]
        for fold in plan.folds:
            rows.append((f"fold {fold.index} train", len(fold.train_ids), class_proportions(fold.train_ids, label_of, classes)))
            rows.append((f"fold {fold.index} val", len(fold.val_ids), class_proportions(fold.val_ids, label_of, classes)))
        path = training.artifacts(tenant.name).splits_path(labeled_dataset.data_version, plan.fingerprint())
        write_json_atomic(path, {**plan.to_dict(), "data_version": labeled_dataset.data_version})
        context.log.info(f"split {plan.fingerprint()}: {len(plan.test_ids)} test sessions, {plan.n_folds} fold(s)")
        # Class columns are "share <class>": a class may be called "split" or "n", and a column named
        # after it would overwrite the split's name or size in every row.
        table = MetadataValue.table(
            records=[TableRecord({"split": name, "n": n, **{f"share {c}": round(p[c], 3) for c in classes}}) for name, n, p in rows],
            schema=TableSchema(
                columns=[TableColumn("split", "string"), TableColumn("n", "int")]
                + [TableColumn(f"share {c}", "float", description=f"share of class {c!r} in the split") for c in classes]
            ),
        )
        value = StratifiedSplits(
            tenant=tenant.name, path=str(path), fingerprint=plan.fingerprint(), data_version=labeled_dataset.data_version,
            n_folds=plan.n_folds, kfold=plan.kfold, classes=classes, n_test=len(plan.test_ids),
        )
        return Output(
            value,
            metadata={
                "fingerprint": plan.fingerprint(),
                "n_folds": plan.n_folds,
                "n_test": len(plan.test_ids),
                "n_train_pool": len(df) - len(plan.test_ids),
                "class_proportions": table,
                "path": MetadataValue.path(str(path)),
            },
        )

    return stratified_splits
