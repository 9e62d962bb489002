import json
import subprocess
import sys

import pytest

from legolas_ml.cli import main
from legolas_ml.data.demo_data import CLASS_SHARES, generate_demo_data


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    monkeypatch.delenv("LEGOLAS_MONGO_URI", raising=False)
    return tmp_path


def test_demo_data_is_reproducible_imbalanced_and_noisy():
    docs, reviews = generate_demo_data(1500, 300, seed=7)
    again, _ = generate_demo_data(1500, 300, seed=7)
    assert docs == again
    labels = [d["llm_prediction"] for d in docs]
    shares = {c: labels.count(c) / len(labels) for c in CLASS_SHARES}
    assert len(shares) >= 4 and 0.02 < shares["cancellation"] < 0.09 and shares["billing"] > 0.25
    by_sid = {d["session_id"]: d for d in docs}
    corrected = sum(1 for r in reviews if r["session_id"] in by_sid and r["label"] != by_sid[r["session_id"]]["llm_prediction"])
    assert 30 < corrected < 150  # reviews fix part of the ~12% wrong LLM labels; the rest stay noisy
    assert any(d["needs_review"] for d in docs) and len({d["classification_method"] for d in docs}) >= 5


def test_demo_data_command_is_idempotent(capsys):
    assert main(["demo-data", "--conversations", "200", "--reviews", "40"]) == 0
    assert main(["demo-data", "--conversations", "200", "--reviews", "40"]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "203" in out and " no" in out


def test_import_reviews_reports_malformed_lines(tmp_path, capsys):
    lines = [
        json.dumps({"session_id": "s1", "label": "billing", "reviewed_at": "2026-02-01T10:00:00Z", "text": "hi"}),
        "{not json",
        json.dumps({"session_id": "s2", "label": "", "reviewed_at": "2026-02-01T10:00:00"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"session_id": "s3", "label": "shipping", "reviewed_at": "2026-02-01T11:00:00", "confidence": 0.9}),
        json.dumps({"session_id": "s4", "label": "shipping", "reviewed_at": "not a date"}),
    ]
    path = tmp_path / "log.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    assert main(["import-reviews", str(path), "--tenant", "acme"]) == 1
    captured = capsys.readouterr()
    for line_no in (2, 3, 4, 7, 8):
        assert f"log.jsonl:{line_no}: rejected" in captured.err
    assert "2 reviews imported" in captured.out and "5 rejected" in captured.out
    # Importing again imports nothing new: reviews are unique per (tenant, session, reviewed_at).
    assert main(["import-reviews", str(path), "--tenant", "acme"]) == 1
    assert "0 reviews imported, 2 already present" in capsys.readouterr().out


def test_import_missing_file_and_bad_tenant(capsys):
    assert main(["import-reviews", "/nonexistent/file.jsonl"]) == 1  # a runtime condition: the command is right
    assert "/nonexistent/file.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo-data", "--tenant", "../etc"])
    # The reason, with the allowed characters and the value, not argparse's "invalid ... value".
    assert "tenant must be 1-64 characters of letters, digits" in capsys.readouterr().err


def test_entry_point_installed():
    result = subprocess.run([sys.executable, "-m", "legolas_ml.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "import-reviews" in result.stdout



def _demo_registry(home):
    """Tenant demo with a little data, its registry, and one tiny checkpoint versions can point at."""
    import torch

    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry
    from legolas_ml.training.checkpoint import save_checkpoint

    assert main(["demo-data", "--conversations", "60", "--reviews", "10"]) == 0
    checkpoint = save_checkpoint(home / "fold0.safetensors", {"w": torch.ones(1)}, {
        "epoch": 0, "metrics": {}, "labels": ["a", "b"], "model_config": {}, "training_config": {}})
    return ModelRegistry(TenantArtifacts(home / "output", "demo")), checkpoint

def test_status_shows_the_champions_newest_report(home, capsys):
    """Each explainability run writes its own report (runs/<run_id>/explainability/): status names the newest."""
    import os

    registry, checkpoint = _demo_registry(home)
    registry.write_candidate({
        "version": "v1", "checkpoints": [str(checkpoint)], "mode": "first", "created_at": "2026-11-25T10:00:00Z",
        "test_metrics": {"balanced_accuracy": 0.8, "n": 40},
    })
    registry.promote("v1", actor="test", reason="test")
    reports = []
    for k, run in enumerate(["run-b", "run-a"]):  # the newest is not the last by name
        report = registry.version_dir("v1") / "runs" / run / "explainability" / "report.html"
        report.parent.mkdir(parents=True)
        report.write_text("<html></html>")
        os.utime(report, ns=(10**18 + k * 10**9, 10**18 + k * 10**9))
        reports.append(report)
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"  report:    {reports[-1]}\n" in out and str(reports[0]) not in out


def test_status_headlines_the_human_test_score_and_the_recorded_holdout_score(home, capsys):
    """The champion's row: balanced accuracy on human-labelled test sessions (not the mixed score, mostly
    agreement with LLM labels) and the latest holdout balanced accuracy its decisions recorded."""
    registry, checkpoint = _demo_registry(home)
    for version, human in (("v1", 0.6123), ("v2", 0.65)):
        registry.write_candidate({
            "version": version, "checkpoints": [str(checkpoint)], "mode": "first", "created_at": "2026-11-25T10:00:00Z",
            "test_metrics": {"balanced_accuracy": 0.91, "n": 40},
            "test_metrics_human": {"n": 10, "balanced_accuracy": human, "accuracy": 0.7},
            "llm_agreement": {"n": 30, "balanced_accuracy": 0.95, "accuracy": 0.96},
        })
    registry.promote("v1", actor="test", reason="first", holdout_balanced_accuracy=0.5871)
    registry.promote("v2", actor="test", reason="better", holdout_balanced_accuracy=0.7)
    registry.rollback(actor="test")  # v1 serves again; the rollback record carries no holdout score
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert "human test BA" in header and "holdout BA" in header and "test BA " not in header.replace("human test BA", "")
    assert row.split()[-4:-1] == ["v1", "0.6123", "0.5871"]
    assert "0.9100" in out and "mixed" in out  # the mixed score is still printed, named for what it is
    assert "balanced accuracy 0.6123 on 10 human-labelled sessions" in out and "agreement with LLM labels 0.9500" in out


def test_status_and_versions_show_the_challenger_and_the_champion_stack(home, capsys):
    """Issue #26: `legolas status` shows the waiting challenger and how far it is from a decision;
    `legolas versions` the stack of champions a rollback walks back."""
    registry, checkpoint = _demo_registry(home)
    for version in ("v1", "v2", "v3"):
        registry.write_candidate({"version": version, "checkpoints": [str(checkpoint)], "mode": "first",
                                  "created_at": "2026-11-25T10:00:00Z", "test_metrics": {"balanced_accuracy": 0.9, "n": 4}})
    registry.promote("v1", actor="test", reason="first")
    registry.promote("v2", actor="test", reason="better")
    registry.wait_as_challenger("v3", actor="test", reason="not yet decided", holdout_n=34, next_look_at=43,
                                decision={"promotion": {"sessions_to_decide": 120}})
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "challenger: v3 waits since" in out and "compared on 34 holdout sessions, looked at again at 43" in out
    assert "about 120 expected to decide" in out and "earlier champions (rollback walks back): v1" in out
    assert main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "champions, oldest first (rollback walks back): v1 -> v2" in out and "challenger: v3" in out


def test_status_shows_dashes_for_a_champion_without_recorded_scores(home, capsys):
    """An old manifest (no human test score) and decisions without a holdout score: "-", not the mixed score."""
    registry, checkpoint = _demo_registry(home)
    registry.write_candidate({
        "version": "v1", "checkpoints": [str(checkpoint)], "mode": "first", "created_at": "2026-11-25T10:00:00Z",
        "test_metrics": {"balanced_accuracy": 0.8, "n": 40},
    })
    registry.promote("v1", actor="test", reason="first", holdout_balanced_accuracy=None)
    capsys.readouterr()
    assert main(["status"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[-4:-1] == ["v1", "-", "-"] and "0.8000" not in row


def test_holdout_scores_are_the_latest_recorded_per_version():
    from legolas_ml.cli.lifecycle import holdout_balanced_accuracies

    legacy = {"version": "v0", "action": "promoted", "decision": {"comparison": {"candidate_balanced_accuracy": 0.55}}}
    history = [
        legacy,
        {"version": "v1", "action": "promoted", "holdout_balanced_accuracy": 0.6},
        {"version": "v1", "action": "promoted", "holdout_balanced_accuracy": 0.62},
        {"version": "v1", "action": "rolled_back"},  # no score: the earlier one stands
        {"version": "v2", "action": "rejected", "holdout_balanced_accuracy": None, "decision": {"comparison": None}},
    ]
    assert holdout_balanced_accuracies(history) == {"v0": 0.55, "v1": 0.62}
    # A later comparison scores the champion on today's holdout: its latest score.
    history.append({"version": "v3", "action": "challenger", "previous_champion": "v1", "holdout_balanced_accuracy": 0.7,
                    "champion_holdout_balanced_accuracy": 0.66})
    assert holdout_balanced_accuracies(history) == {"v0": 0.55, "v1": 0.66, "v3": 0.7}


def test_versions_lists_the_human_test_score_and_the_holdout_score(home, capsys):
    registry, checkpoint = _demo_registry(home)
    registry.write_candidate({
        "version": "v1", "checkpoints": [str(checkpoint)], "created_at": "2026-11-25T10:00:00Z",
        "test_metrics": {"balanced_accuracy": 0.9, "n": 40}, "test_metrics_human": {"n": 8, "balanced_accuracy": 0.625, "accuracy": 0.6},
    })
    registry.promote("v1", actor="test", reason="first", holdout_balanced_accuracy=0.58)
    capsys.readouterr()
    assert main(["versions"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "human test BA" in header and "holdout BA" in header
    assert row.split()[:4] == ["v1", "champion", "0.6250", "0.5800"]
