import pytest
import torch
import torch.nn.functional as F

from legolas_ml.training.losses import FocalLoss, balanced_class_weights, build_loss, default_focal_alpha


def test_reference_values():
    loss = FocalLoss(alpha=[0.25, 0.75], gamma=2.0)
    logits = torch.tensor([[0.5, 0.4], [0.6, 0.5], [0.3, 0.2], [0.4, 0.3]])
    assert loss(logits, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(0.0363512, abs=1e-7)
    assert loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(0.1299651, abs=1e-7)


def test_gamma_zero_without_alpha_is_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    assert FocalLoss(gamma=0.0)(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_float_alpha_means_one_minus_a_and_a():
    logits, targets = torch.tensor([[0.2, -0.1], [0.3, 0.9]]), torch.tensor([0, 1])
    assert FocalLoss(alpha=0.75)(logits, targets).item() == pytest.approx(FocalLoss(alpha=[0.25, 0.75])(logits, targets).item())


def test_stable_for_huge_logits_and_reductions():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    targets = torch.tensor([1, 1])
    per_sample = FocalLoss(alpha=[0.5, 0.5], reduction="none")(logits, targets)
    assert torch.isfinite(per_sample).all() and per_sample[1] == 0
    total = FocalLoss(alpha=[0.5, 0.5], reduction="sum")(logits, targets)
    assert total.item() == pytest.approx(per_sample.sum().item())


def test_ignore_index_excluded_from_mean():
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    loss = FocalLoss(gamma=2.0)
    assert loss(logits, torch.tensor([1, -100])).item() == pytest.approx(loss(logits[:1], torch.tensor([1])).item())
    assert loss(logits, torch.tensor([-100, -100])).item() == 0.0


def test_gradients_flow():
    logits = torch.randn(8, 3, requires_grad=True)
    FocalLoss(alpha=[0.2, 0.3, 0.5])(logits, torch.randint(0, 3, (8,))).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs, match", [({"gamma": -1}, "gamma"), ({"reduction": "avg"}, "reduction"), ({"alpha": 1.5}, "alpha")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_alpha_length_must_match_classes():
    with pytest.raises(ValueError, match="3 weights but the logits have 2 classes"):
        FocalLoss(alpha=[0.2, 0.3, 0.5])(torch.zeros(1, 2), torch.tensor([0]))


def test_balanced_weights_sum_to_number_of_classes():
    w = balanced_class_weights([80, 15, 5])
    assert sum(w) == pytest.approx(3) and w[2] > w[1] > w[0]
    assert w[0] / w[2] == pytest.approx(5 / 80)
    with pytest.raises(ValueError, match="at least one member"):
        balanced_class_weights([3, 0])


def test_default_alpha():
    # Binary: 0.75 follows the minority class in either order, not the position.
    assert default_focal_alpha([10, 90]) == [0.75, 0.25]
    assert default_focal_alpha([90, 10]) == [0.25, 0.75]
    assert default_focal_alpha([50, 50]) == [0.5, 0.5]
    alpha = default_focal_alpha([60, 30, 10])
    assert sum(alpha) == pytest.approx(1) and alpha[2] > alpha[1] > alpha[0]
    assert isinstance(build_loss("ce", [5, 5]), torch.nn.CrossEntropyLoss)
