import pytest

from legolas_ml.training.config import TrainingConfig


def test_defaults_match_the_design():
    cfg = TrainingConfig()
    assert (cfg.n_folds, cfg.test_size, cfg.seed, cfg.loss) == (10, 0.2, 42, "focal")
    assert (cfg.focal_gamma, cfg.patience, cfg.min_delta, cfg.best_metric) == (2.0, 5, 0.001, "balanced_accuracy")
    cfg.validate(n_classes=2)


def test_validate_lists_every_problem_at_once():
    cfg = TrainingConfig(n_folds=1, focal_gamma=-1, focal_alpha=[0.5, 0.5, 0.5], precision="int8", loss="hinge")
    with pytest.raises(ValueError) as err:
        cfg.validate(n_classes=2)
    text = str(err.value)
    for fragment in ("n_folds", "focal_gamma", "focal_alpha must have one weight per class (2 classes)", "precision", "loss"):
        assert fragment in text


def test_n_folds_is_not_checked_in_simple_mode():
    TrainingConfig(kfold=False, n_folds=1).validate()


def test_from_dict_rejects_unknown_fields_by_name():
    with pytest.raises(ValueError, match="n_fold"):
        TrainingConfig.from_dict({"n_fold": 3})
    assert TrainingConfig.from_dict(TrainingConfig(epochs=3).to_dict()).epochs == 3
