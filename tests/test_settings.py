"""Every LEGOLAS_* variable is parsed in one place; a bad value names the variable, the allowed values and what it got."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from legolas_ml.core import settings
from legolas_ml.core.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]

# (variable, bad value, accessor, words the message must contain besides the variable and the value)
BAD_VALUES = [
    ("LEGOLAS_N_FOLDS", "abc", settings.n_folds, "integer >= 2"),
    ("LEGOLAS_N_FOLDS", "2.5", settings.n_folds, "integer >= 2"),
    ("LEGOLAS_N_FOLDS", "1", settings.n_folds, "LEGOLAS_PRESET=dev"),
    ("LEGOLAS_EPOCHS", "0", settings.epochs, "integer >= 1"),
    ("LEGOLAS_EPOCHS", "ten", settings.epochs, "integer >= 1"),
    ("LEGOLAS_MAX_LENGTH", "0", settings.max_length, "integer >= 1"),
    ("LEGOLAS_BATCH_SIZE", "0", settings.batch_size, "integer >= 1"),
    ("LEGOLAS_LR", "0", settings.lr, "number > 0"),
    ("LEGOLAS_LR", "nan", settings.lr, "number > 0"),
    ("LEGOLAS_PRESET", "fast", settings.preset_name, "'default', 'demo', 'dev'"),
    ("LEGOLAS_DEVICE", "gpu", settings.device, "'cuda:N'"),
    ("LEGOLAS_PRECISION", "fp8", settings.precision, "'bf16'"),
    ("LEGOLAS_MODEL_INIT", "random", settings.model_init, "'scratch'"),
    ("LEGOLAS_MODEL_OVERRIDES", "num_hidden_layers=2", settings.model_overrides, "JSON object"),
    ("LEGOLAS_MODEL_OVERRIDES", "[2]", settings.model_overrides, "JSON object"),
    ("LEGOLAS_MODEL", "/nonexistent", settings.model_name, "no such directory"),
    ("LEGOLAS_EXPLAIN_PER_CLASS", "0", settings.explain_per_class, "integer >= 1"),
    ("LEGOLAS_RETRAIN_THRESHOLD", "-5", settings.retrain_threshold, "integer >= 1"),
    ("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "-1", settings.retrain_max_age_hours, "number >= 0"),
    ("LEGOLAS_TENANT", "../etc", settings.tenant, "letters, digits"),
    ("LEGOLAS_DATABASE", "a/b", settings.database_name, "letters, digits"),
]


@pytest.mark.parametrize("variable, value, accessor, allowed", BAD_VALUES, ids=[f"{v}={x}" for v, x, _, _ in BAD_VALUES])
def test_bad_value_names_variable_allowed_values_and_value(monkeypatch, variable, value, accessor, allowed):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        accessor()
    message = str(err.value)
    assert variable in message and repr(value) in message and allowed in message
    assert "\n" not in message


def test_unset_or_blank_means_the_default(monkeypatch):
    for name in ("LEGOLAS_N_FOLDS", "LEGOLAS_EPOCHS", "LEGOLAS_MAX_LENGTH", "LEGOLAS_PRESET", "LEGOLAS_LR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEGOLAS_BATCH_SIZE", " ")
    assert settings.n_folds() is None and settings.epochs() is None and settings.max_length() is None
    assert settings.batch_size() == 16 and settings.lr() is None and settings.explain_per_class() >= 1
    assert settings.preset() == settings.PRESETS["default"]
    monkeypatch.setenv("LEGOLAS_N_FOLDS", "4")
    assert settings.preset()["n_folds"] == 4 and settings.preset()["kfold"]


def test_zero_epochs_is_refused_not_replaced_by_the_preset(monkeypatch):
    from legolas_assets.configuration import ConfigurationError
    from legolas_assets.resources import default_resources

    monkeypatch.setenv("LEGOLAS_EPOCHS", "0")
    with pytest.raises(ConfigurationError, match="LEGOLAS_EPOCHS must be an integer >= 1.*got '0'"):
        default_resources()
    monkeypatch.setenv("LEGOLAS_EPOCHS", "3")
    monkeypatch.setenv("LEGOLAS_MAX_LENGTH", "0")
    with pytest.raises(ConfigurationError, match="LEGOLAS_MAX_LENGTH"):
        default_resources()
    monkeypatch.delenv("LEGOLAS_MAX_LENGTH")
    config = default_resources()["training"].config()
    assert config.epochs == 3 and config.max_length == settings.preset()["max_length"]


def test_a_run_config_changes_only_the_fields_it_names(monkeypatch):
    """Issue #27 (c): a run config naming `patience` used to reset every setting taken from LEGOLAS_*."""
    from dagster import asset, materialize

    from legolas_assets.resources import TrainingResource, default_resources

    for name, value in (("LEGOLAS_PRESET", "demo"), ("LEGOLAS_EPOCHS", "3"), ("LEGOLAS_MODEL_INIT", "scratch"),
                        ("LEGOLAS_RUNNER", "ray"), ("LEGOLAS_LR", "0.001"), ("LEGOLAS_PRECISION", "fp32")):
        monkeypatch.setenv(name, value)
    seen = {}

    @asset
    def resolved_training(training: TrainingResource) -> None:
        seen["resolved"] = training.resolved()
        seen["runner"] = training.fold_runner().name

    resources = {k: v for k, v in default_resources().items() if k == "training"}
    run_config = {"resources": {"training": {"config": {"patience": 100}}}}
    assert materialize([resolved_training], resources=resources, run_config=run_config).success
    config, sources = seen["resolved"].config, seen["resolved"].sources
    assert (config.patience, sources["patience"]) == (100, "run_config")
    assert (config.epochs, config.model_init, config.lr, config.precision) == (3, "scratch", 0.001, "fp32")
    assert {sources[n] for n in ("epochs", "model_init", "lr", "precision")} == {"environment"}
    assert (config.n_folds, sources["n_folds"]) == (settings.PRESETS["demo"]["n_folds"], "preset")
    assert seen["runner"] == "ray"


def test_the_layers_apply_in_order(monkeypatch):
    from legolas_ml.data.tenants import TenantSettings
    from legolas_ml.training.resolution import resolve_training

    monkeypatch.setenv("LEGOLAS_PRESET", "demo")
    monkeypatch.setenv("LEGOLAS_EPOCHS", "4")
    monkeypatch.delenv("LEGOLAS_MAX_LENGTH", raising=False)
    resolved = resolve_training({"epochs": 5, "max_length": 64, "seed": None}, TenantSettings(epochs=6, n_folds=4))
    config, sources = resolved.config, resolved.sources
    assert (config.epochs, sources["epochs"]) == (6, "tenant")  # tenant > run config > environment > preset
    assert (config.max_length, sources["max_length"]) == (64, "run_config")
    assert (config.lr, sources["lr"]) == (settings.PRESETS["demo"]["lr"], "preset")
    assert (config.seed, sources["seed"]) == (42, "default")
    assert (config.n_folds, config.kfold, sources["n_folds"]) == (4, True, "tenant")
    with pytest.raises(ValueError, match=r"unknown training field\(s\) \['patiense'\] in the run config; known fields: \["):
        resolve_training({"patiense": 3})


def test_missing_local_model_path_is_one_line(tmp_path):
    from legolas_ml.training.modeling import build_model, load_tokenizer
    from synthetic import tiny_config

    missing = str(tmp_path / "no-such-model")
    for call in (lambda: load_tokenizer(missing), lambda: build_model(tiny_config(model_name=missing), ["a", "b"])):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert missing in str(err.value) and "no such directory" in str(err.value) and "\n" not in str(err.value)
        assert err.value.__cause__ is None


def test_no_module_reads_a_legolas_variable_but_settings():
    offenders = []
    for path in sorted((ROOT / "legolas_ml").rglob("*.py")) + sorted((ROOT / "legolas_assets").rglob("*.py")):
        if path == ROOT / "legolas_ml" / "settings.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(os\.environ|getenv)\b.*LEGOLAS_", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.slow
def test_a_bad_variable_at_definitions_load_is_one_line_on_the_cli(tmp_path):
    env = {**os.environ, "LEGOLAS_N_FOLDS": "2.5", "DAGSTER_HOME": str(tmp_path), "LEGOLAS_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "legolas_assets.definitions", "--select", "labeled_dataset"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    assert "Error: LEGOLAS_N_FOLDS must be an integer >= 2" in out.stderr and "got '2.5'" in out.stderr
    assert "Traceback" not in out.stderr and "invalid literal" not in out.stderr
