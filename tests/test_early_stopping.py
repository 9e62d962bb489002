import math

import pytest

from legolas_ml.training.early_stopping import RewindEarlyStopping


def run(losses, stopper, train_losses=None):
    for epoch, val in enumerate(losses):
        train = train_losses[epoch] if train_losses else None
        if stopper.step(epoch, val, train):
            break
    return stopper


def test_issue_example_stops_at_4_rewinds_to_1():
    stopper = RewindEarlyStopping(patience=3, min_delta=0.01)
    run([0.5, 0.4, 0.45, 0.50, 0.55], stopper)
    assert (stopper.trigger_epoch, stopper.rewind_epoch) == (4, 1)


def test_counter_resets_on_improvement():
    stopper = RewindEarlyStopping(patience=2, min_delta=0.0)
    run([1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.86], stopper)
    assert stopper.trigger_epoch == 6 and stopper.rewind_epoch == 4


def test_min_delta_decides_what_improves():
    stopper = RewindEarlyStopping(patience=2, min_delta=0.1)
    run([1.0, 0.95, 0.92], stopper)  # decreases smaller than min_delta do not count
    assert stopper.trigger_epoch == 2 and stopper.rewind_epoch == 0


def test_improving_losses_never_stop():
    stopper = run([1.0, 0.9, 0.8, 0.7, 0.6], RewindEarlyStopping(patience=2))
    assert not stopper.should_stop and stopper.rewind_epoch is None


def test_nan_stops_at_once_and_rewinds_to_the_last_finite_epoch():
    stopper = RewindEarlyStopping(patience=5)
    run([0.5, 0.4, math.nan, 0.3], stopper)
    assert stopper.trigger_epoch == 2 and stopper.rewind_epoch == 1
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
