"""Issue #27, "a CLI that fits its ecosystem": --version, --json, `legolas train`, unknown tenants,
exit codes (usage 2, runtime 1) and the help texts."""

import importlib.metadata
import json
import shlex
import sys

import pytest

from legolas_ml.core import settings
from legolas_ml.cli import main
from legolas_ml.cli.conventions import EXIT_RUNTIME, EXIT_USAGE, CommandError, UsageError, exit_code_for
from legolas_ml.data.tenants import Tenant, TenantSettings
from legolas_ml.cli.train import parse_folds, plan_training_run


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    monkeypatch.delenv("LEGOLAS_MONGO_URI", raising=False)
    monkeypatch.delenv("LEGOLAS_TENANT", raising=False)
    return tmp_path


def _champion(home, versions=("v1",)):
    """Tenant demo with a little data and ``versions`` promoted in turn (one tiny checkpoint each)."""
    import torch

    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry
    from legolas_ml.training.checkpoint import save_checkpoint

    assert main(["demo-data", "--conversations", "60", "--reviews", "10"]) == 0
    checkpoint = save_checkpoint(home / "fold0.safetensors", {"w": torch.ones(1)}, {
        "epoch": 0, "metrics": {}, "labels": ["a", "b"], "model_config": {}, "training_config": {}})
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    for version in versions:
        registry.write_candidate({
            "version": version, "checkpoints": [str(checkpoint)], "mode": "first", "created_at": "2026-11-25T10:00:00Z",
            "test_metrics": {"balanced_accuracy": 0.9, "n": 40}, "test_metrics_human": {"n": 8, "balanced_accuracy": 0.625},
        })
        registry.promote(version, actor="test", reason="test", holdout_balanced_accuracy=0.58)
    return registry


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"legolas {importlib.metadata.version('legolas')}"


def test_json_is_one_document_on_stdout_for_each_command(home, tmp_path, capsys):
    """status, versions, tenants list and review-queue --json: stdout parses as one JSON document and
    carries what the text shows."""
    _champion(home, ("v1", "v2"))
    capsys.readouterr()

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    [row] = status["tenants"]
    assert row["tenant"] == "demo" and row["documents"] == 63 and row["reviews"] == 13
    assert row["champion"]["version"] == "v2" and row["champion"]["earlier_champions"] == ["v1"]
    assert row["human_test_balanced_accuracy"] == 0.625 and row["holdout_balanced_accuracy"] == 0.58

    assert main(["versions", "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert versions["champion"] == "v2" and versions["champion_stack"] == ["v1", "v2"]
    assert [(v["version"], v["state"]) for v in versions["versions"]] == [("v1", "earlier"), ("v2", "champion")]

    assert main(["tenants", "add", "acme", "--n-folds", "4"]) == 0
    capsys.readouterr()
    assert main(["tenants", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {t["name"]: (t["source"], t["settings"]) for t in listing["tenants"]} == {
        "acme": ("catalogue", {"n_folds": 4}), "demo": ("documents", {})}

    queue_file = tmp_path / "queue.jsonl"
    assert main(["review-queue", "--json", "--output", str(queue_file)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["documents"] == len(queue_file.read_text().splitlines()) and summary["output"] == str(queue_file)
    assert "import-reviews" in captured.err  # the hint stays, on stderr


def test_review_queue_json_needs_an_output_file(capsys):
    assert main(["demo-data", "--conversations", "60", "--reviews", "10"]) == 0
    capsys.readouterr()
    assert main(["review-queue", "--json"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and "--output FILE" in captured.err


def test_train_runs_the_tenants_partition_range():
    """K from the tenant's n_folds, else the preset's (dev: one partition); as the code location's tags."""
    from legolas_assets.tenancy import TenantPlan

    own = Tenant("acme-eu", TenantSettings(n_folds=4))
    run = plan_training_run(own, settings.PRESETS["demo"], None, python="/py")
    assert run.command == (
        "/py", "-m", "dagster", "job", "execute", "-m", "legolas_assets.definitions", "-j", "acme_eu__training_job",
        "--tags", json.dumps({"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "3"}),
    )
    assert run.tags == TenantPlan("acme-eu", own.settings).range_tags() and run.job_name == TenantPlan("acme-eu").job_name
    assert plan_training_run(Tenant("demo"), settings.PRESETS["demo"], None).tags["dagster/asset_partition_range_end"] == "2"
    assert plan_training_run(Tenant("demo"), settings.PRESETS["dev"], None).tags["dagster/asset_partition_range_end"] == "0"
    assert plan_training_run(own, settings.PRESETS["dev"], "1-3").tags == {
        "dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "3"}


@pytest.mark.parametrize("spec, expected", [(None, (0, 2)), ("0-2", (0, 2)), ("1-2", (1, 2)), ("0,1", (0, 1)), ("2", (2, 2)), (" 1 , 2 ", (1, 2))])
def test_folds_forms(spec, expected):
    assert parse_folds(spec, 3) == expected


@pytest.mark.parametrize("spec, reason", [("0,2", "consecutive"), ("3", "no fold 3"), ("2-1", "empty"), ("a", "'a'"), ("-1", "'-1'"), ("", "''")])
def test_folds_errors_name_the_option_the_forms_and_the_value(spec, reason):
    with pytest.raises(UsageError, match=r"--folds must be 'A-B'.*within 0\.\.\.2") as error:
        parse_folds(spec, 3)
    assert reason in str(error.value)


def test_train_dry_run_prints_the_dagster_command(capsys):
    assert main(["tenants", "add", "acme", "--n-folds", "5"]) == 0
    capsys.readouterr()
    assert main(["train", "--tenant", "acme", "--folds", "0,1", "--dry-run"]) == 0
    command = shlex.split(capsys.readouterr().out)
    assert command[:2] == [sys.executable, "-m"] and command[command.index("-j") + 1] == "acme__training_job"
    assert json.loads(command[command.index("--tags") + 1]) == {
        "dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "1"}
    assert main(["train", "--tenant", "acme", "--folds", "5", "--dry-run"]) == EXIT_USAGE  # folds are 0...4
    assert "no fold 5" in capsys.readouterr().err


def test_train_streams_the_runs_output_and_exits_with_its_code(home, tmp_path, monkeypatch, capfd):
    """The Dagster command runs as a child that inherits stdout/stderr; its exit code is the command's, and
    DAGSTER_HOME defaults to $LEGOLAS_HOME/dagster (the Makefile's) so the UI sees the run. A stand-in for
    the interpreter keeps this fast: a real `dagster job execute` loads the code location (10 s of CPU,
    over 30 s on a shared 2-core machine; docs/cli.md shows one)."""
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\necho "run: $*"\necho "home: $DAGSTER_HOME" >&2\nexit 3\n')
    stand_in.chmod(0o755)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["tenants", "add", "acme", "--n-folds", "4"]) == 0
    monkeypatch.setattr(sys, "executable", str(stand_in))
    assert main(["train", "--tenant", "acme", "--folds", "1-2"]) == 3
    captured = capfd.readouterr()
    assert "run: -m dagster job execute -m legolas_assets.definitions -j acme__training_job --tags " in captured.out
    assert '"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "2"' in captured.out
    assert f"home: {home / 'dagster'}" in captured.err and (home / "dagster").is_dir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    assert main(["train", "--tenant", "acme"]) == 0


@pytest.mark.parametrize("command", [
    ["versions"], ["promote", "--version", "v1"], ["rollback"], ["review-queue"], ["train", "--dry-run"],
    ["repair-store"],
])
def test_an_unknown_tenant_exits_2_listing_the_known_ones(command, capsys):
    assert main(["demo-data", "--conversations", "60", "--reviews", "10"]) == 0
    assert main(["tenants", "add", "acme"]) == 0
    capsys.readouterr()
    assert main([*command, "--tenant", "nope"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--tenant must name a tenant of this deployment, got 'nope'; the tenants are: 'acme', 'demo'" in captured.err


def test_a_removed_tenant_is_named_as_removed_and_a_new_one_can_start(capsys):
    assert main(["tenants", "add", "acme"]) == 0 and main(["tenants", "remove", "acme"]) == 0
    capsys.readouterr()
    assert main(["versions", "--tenant", "acme"]) == EXIT_USAGE
    assert "'acme' was removed (`legolas tenants add acme` brings it back)" in capsys.readouterr().err
    assert main(["tenants", "remove", "acme"]) == EXIT_USAGE
    assert main(["repair-store", "--tenant", "acme"]) == 0  # repairs every tenant the store names
    # demo-data and import-reviews write a tenant's first documents: a new name is accepted there.
    assert main(["demo-data", "--tenant", "fresh", "--conversations", "60", "--reviews", "10"]) == 0


def test_usage_errors_exit_2_and_runtime_errors_1(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["status", "--no-such-option"])
    assert exit_.value.code == EXIT_USAGE  # argparse's own
    assert main(["import-reviews", "/nonexistent/reviews.csv"]) == EXIT_RUNTIME  # a missing file: the world
    assert "/nonexistent/reviews.csv" in capsys.readouterr().err
    monkeypatch.setenv("LEGOLAS_DATABASE", "a/b")
    assert main(["status"]) == EXIT_USAGE  # an invalid setting: named with what was received
    assert "LEGOLAS_DATABASE" in capsys.readouterr().err
    assert exit_code_for(CommandError("no earlier champion")) == EXIT_RUNTIME
    assert exit_code_for(ValueError("bad input")) == EXIT_USAGE and exit_code_for(OSError("gone")) == EXIT_RUNTIME


def test_rollback_at_the_first_champion_exits_1(home, capsys):
    _champion(home, ("v1",))
    capsys.readouterr()
    assert main(["rollback"]) == EXIT_RUNTIME
    assert "v1 is the first champion" in capsys.readouterr().err
    assert main(["versions", "--json"]) == 0 and json.loads(capsys.readouterr().out)["champion"] == "v1"  # unchanged


def test_import_reviews_help_says_csv_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["import-reviews", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "JSONL or CSV" in out and ".csv" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit codes: 0 done; 1" in capsys.readouterr().out
