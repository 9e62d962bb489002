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
    assert main(["import-reviews", "/nonexistent/file.jsonl"]) == 2
    assert "/nonexistent/file.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo-data", "--tenant", "../etc"])
    # The reason, with the allowed characters and the value, not argparse's "invalid ... value".
    assert "tenant must be 1-64 characters of letters, digits" in capsys.readouterr().err


def test_entry_point_installed():
    result = subprocess.run([sys.executable, "-m", "legolas_ml.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "import-reviews" in result.stdout


def test_status_shows_the_champions_newest_report(home, capsys):
    """Each explainability run writes its own report (runs/<run_id>/explainability/): status names the newest."""
    import os

    import torch

    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry
    from legolas_ml.training.checkpoint import save_checkpoint

    assert main(["demo-data", "--conversations", "60", "--reviews", "10"]) == 0
    checkpoint = save_checkpoint(home / "fold0.safetensors", {"w": torch.ones(1)}, {
        "epoch": 0, "metrics": {}, "labels": ["a", "b"], "model_config": {}, "training_config": {}})
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
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
