import math

import pytest
import torch

from legolas_ml.training.early_stopping import RewindEarlyStopping


def _model_with(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def run(losses, stopper, train_losses=None):
    model = _model_with(0.0)
    for epoch, val in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weight remembers which epoch produced it
        train = train_losses[epoch] if train_losses else None
        if stopper.step(epoch, val, train, model):
            stopper.restore(model)
            break
    return model


def test_issue_example_stops_at_4_restores_1():
    stopper = RewindEarlyStopping(patience=3, min_delta=0.01)
    model = run([0.5, 0.4, 0.45, 0.50, 0.55], stopper)
    assert (stopper.trigger_epoch, stopper.restored_epoch) == (4, 1)
    assert model.weight.item() == 1.0  # the weights really are those of epoch 1


def test_counter_resets_on_improvement():
    stopper = RewindEarlyStopping(patience=2, min_delta=0.0)
    run([1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.86], stopper)
    assert stopper.trigger_epoch == 6 and stopper.restored_epoch == 4


def test_min_delta_decides_what_improves():
    stopper = RewindEarlyStopping(patience=2, min_delta=0.1)
    run([1.0, 0.95, 0.92], stopper)  # decreases smaller than min_delta do not count
    assert stopper.trigger_epoch == 2 and stopper.restored_epoch == 0


def test_buffer_holds_patience_plus_one_states_on_cpu():
    stopper = RewindEarlyStopping(patience=2)
    run([1.0, 0.9, 0.8, 0.7, 0.6], stopper)
    assert len(stopper._states) == 3
    assert all(t.device.type == "cpu" for _, s in stopper._states for t in s.values())
    assert not stopper.should_stop


def test_nan_stops_at_once_and_restores_last_finite_state():
    stopper = RewindEarlyStopping(patience=5)
    model = run([0.5, 0.4, math.nan, 0.3], stopper)
    assert stopper.trigger_epoch == 2 and stopper.restored_epoch == 1 and model.weight.item() == 1.0
    assert "nan" in stopper.stop_reason


def test_overfit_monitor_uses_val_over_train():
    # val keeps improving slightly (no patience stop) while val/train ratio explodes: overfitting.
    stopper = RewindEarlyStopping(patience=2, min_delta=0.0, ratio_threshold=1.5)
    run([1.0, 0.99, 0.98, 0.97, 0.96], stopper, train_losses=[1.0, 0.9, 0.5, 0.3, 0.1])
    assert stopper.trigger_epoch == 3 and "ratio" in stopper.stop_reason
    # The opposite situation (train worse than val) is not overfitting and never stops.
    other = RewindEarlyStopping(patience=2, min_delta=0.0, ratio_threshold=1.5)
    run([1.0, 0.99, 0.98, 0.97], other, train_losses=[5.0, 5.0, 5.0, 5.0])
    assert not other.should_stop


@pytest.mark.parametrize("kwargs", [{"patience": 0}, {"min_delta": -1}, {"ratio_threshold": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RewindEarlyStopping(**kwargs)


def test_state_dict_round_trip():
    stopper = RewindEarlyStopping(patience=3)
    run([0.5, 0.6], stopper)
    clone = RewindEarlyStopping(patience=3)
    clone.load_state_dict(stopper.state_dict())
    assert clone.wait_count == 1 and clone.best_epoch == 0
