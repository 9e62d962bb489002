"""Class names that are also column names ("split", "n") do not corrupt the class-proportions table."""

from dagster import AssetKey, DagsterInstance, materialize

from dagster_helpers import resources
from dagster_helpers import ASSETS, key
from legolas_ml.data.store import open_tenant_store


def test_classes_named_split_and_n_keep_the_table_intact(tmp_path):
    with open_tenant_store(None, tmp_path, "legolas", "demo", writer=True) as store:
        for i in range(60):
            label = ("split", "n", "billing")[i % 3]
            store.insert_review({"session_id": f"s{i:03d}", "label": label, "text": f"conversation {i} about {label}",
                                 "reviewed_at": f"2026-01-01T10:00:{i % 60:02d}"})
    result = materialize(ASSETS, selection=[key("labeled_dataset"), key("stratified_splits")], resources=resources(tmp_path),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    (mat,) = [m for m in result.get_asset_materialization_events() if m.asset_key == key("stratified_splits")]
    table = mat.materialization.metadata["class_proportions"].value
    columns = [c.name for c in table.schema.columns]
    assert len(columns) == len(set(columns)) == 5
    rows = [r.data for r in table.records]
    assert [r["split"] for r in rows][:3] == ["test", "fold 0 train", "fold 0 val"]
    assert all(isinstance(r["n"], int) and r["n"] > 0 for r in rows)
    for row in rows:
        assert abs(sum(row[f"share {c}"] for c in ("billing", "n", "split")) - 1) < 0.01
