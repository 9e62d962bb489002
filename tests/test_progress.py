"""The remaining-time estimate of a K-fold run: every open fold runs all its epochs; 0 with the last epoch."""

import pytest

from legolas_ml.training.progress import TrainingProgress, format_duration


def test_estimate_assumes_every_open_fold_runs_all_its_epochs():
    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0, 50.0]).__next__
    progress = TrainingProgress([0, 1], max_epochs=3, clock=clock)
    first = progress.epoch_finished(0, 0, stopping=False)
    assert (first.epochs_done, first.epochs_at_most, first.remaining_s_at_most) == (1, 6, 50.0)
    stopped = progress.epoch_finished(0, 1, stopping=True)  # early stopping ends fold 0 after 2 epochs
    assert (stopped.folds_done, stopped.epochs_at_most, stopped.remaining_s_at_most) == (1, 5, 30.0)
    progress.epoch_finished(1, 0, stopping=False)
    progress.epoch_finished(1, 1, stopping=False)
    assert progress.finished == {0}
    last = progress.epoch_finished(1, 2, stopping=False)  # fold 1 ran every epoch: the run is done
    assert (last.folds_done, last.remaining_s_at_most) == (2, 0.0)
    assert last.describe().startswith("2/2 folds done, 5/5 epochs at most; 10.0s per epoch; about 0s left")


def test_last_epoch_leaves_nothing_and_bad_arguments_are_named():
    progress = TrainingProgress([3], max_epochs=1, clock=iter([0.0, 5.0]).__next__)
    last = progress.epoch_finished(3, 0, stopping=False)
    assert (last.remaining_s_at_most, last.folds_done) == (0.0, 1)
    with pytest.raises(ValueError, match=r"fold must be one of \[3\], got 4"):
        progress.epoch_finished(4, 0, stopping=False)
    with pytest.raises(ValueError, match=r"max_epochs must be an integer >= 1, got 0"):
        TrainingProgress([0], max_epochs=0)
    assert (format_duration(3725), format_duration(65), format_duration(4.2)) == ("1h02m05s", "1m05s", "4s")


def test_reused_folds_take_no_epoch_in_the_estimate():
    progress = TrainingProgress([0, 1, 2], max_epochs=3, clock=iter([0.0, 10.0, 20.0, 30.0]).__next__)
    progress.mark_reused(0)  # folds 0 and 1 finished in an earlier run: only fold 2 trains
    progress.mark_reused(1)
    first = progress.epoch_finished(2, 0, stopping=False)
    assert (first.epochs_at_most, first.remaining_s_at_most, first.folds_done) == (3, 20.0, 2)
    progress.epoch_finished(2, 1, stopping=False)
    last = progress.epoch_finished(2, 2, stopping=False)
    assert (last.folds_done, last.remaining_s_at_most) == (3, 0.0)
