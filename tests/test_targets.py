"""Soft targets (freebies.tricks.targets): one-hot rows and label smoothing against numbers
written out by hand, the neutral setting, dtypes and bad input."""

import pytest
import torch
import torch.nn.functional as F

from freebies.tricks import one_hot, smooth_targets


def test_smooth_targets_matches_the_written_out_formula_on_hard_and_soft_rows():
    # q' = (1 - eps) q + eps / K with eps = 0.2, K = 4, so eps / K = 0.05 and 1 - eps = 0.8.
    q = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],  # one-hot
            [0.5, 0.5, 0.0, 0.0],  # a mixup / cutmix row
            [0.7, 0.0, 0.3, 0.0],
            [0.25, 0.25, 0.25, 0.25],  # uniform: a fixed point
        ]
    )
    expected = torch.tensor(
        [
            [0.05, 0.85, 0.05, 0.05],  # 0.8 * 1 + 0.05 = 0.85
            [0.45, 0.45, 0.05, 0.05],  # 0.8 * 0.5 + 0.05 = 0.45
            [0.61, 0.05, 0.29, 0.05],  # 0.8 * 0.7 + 0.05 = 0.61, 0.8 * 0.3 + 0.05 = 0.29
            [0.25, 0.25, 0.25, 0.25],
        ]
    )
    out = smooth_targets(q, 0.2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_smoothing_one_hot_rows_is_torch_label_smoothing():
    # Cross-entropy against smoothed one-hot rows equals F.cross_entropy's own label_smoothing.
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 1, 0])
    ours = F.cross_entropy(logits, smooth_targets(one_hot(labels, 3), 0.1))
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_one_hot_rows():
    out = one_hot(torch.tensor([2, 0]), 3)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


def test_eps_zero_is_the_identity_and_dtype_is_kept():
    q = torch.rand(3, 5, dtype=torch.float64)
    assert smooth_targets(q, 0.0) is q
    assert smooth_targets(q, 0.1).dtype == torch.float64
    assert smooth_targets(q.bfloat16(), 0.1).dtype == torch.bfloat16


@pytest.mark.parametrize("eps", [-0.1, 1.0, float("nan")])
def test_bad_eps_names_the_argument(eps):
    with pytest.raises(ValueError, match=r"smooth_targets: eps must be in \[0, 1\), got"):
        smooth_targets(torch.eye(3), eps)
