"""Knowledge distillation, weight EMA and AutoAugment: formulas, neutral settings, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freebies.tricks import autoaugment, ema_model, kd_loss, make_policy


def reference_kd(s, t, q, alpha, temp):
    """(1 - a) * CE(s, q) + a * T^2 * sum_k p_t log(p_t / p_s) / N, written out."""
    ce = -(q * s.log_softmax(1)).sum(1).mean()
    pt, ps = (t / temp).softmax(1), (s / temp).softmax(1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    return (1 - alpha) * ce + alpha * temp**2 * kl


def test_kd_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.rand(5, 7, generator=g).softmax(1)
    for alpha, temp in [(0.5, 4.0), (0.9, 1.0), (0.3, 2.5)]:
        got = kd_loss(s, t, q, alpha, temp)
        torch.testing.assert_close(got, reference_kd(s, t, q, alpha, temp))


def test_kd_alpha_zero_is_cross_entropy():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    q = F.one_hot(torch.tensor([0, 3, 1]), 4).float()
    assert torch.equal(kd_loss(s, t, q, 0.0, 4.0), F.cross_entropy(s, q))


def test_kd_t_squared_keeps_the_soft_gradient_scale():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(8, 10, generator=g)
    base = torch.randn(8, 10, generator=g)
    q = torch.full((8, 10), 0.1)

    def grad_norm(temp: float, scaled: bool) -> float:
        s = base.clone().requires_grad_(True)
        loss = kd_loss(s, t, q, 1.0, temp) / (1.0 if scaled else temp**2)
        loss.backward()
        return s.grad.norm().item()

    # Without T^2 the soft gradient shrinks like 1 / T^2 (Hinton et al. 2015, section 2.1) ...
    assert grad_norm(10.0, False) / grad_norm(20.0, False) == pytest.approx(4.0, rel=0.05)
    # ... and the T^2 factor cancels that.
    assert grad_norm(10.0, True) / grad_norm(20.0, True) == pytest.approx(1.0, rel=0.05)


def test_kd_bad_values():
    s = torch.randn(2, 3)
    q = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"kd_loss: teacher logits have shape \(2, 5\) but .*3\)"):
        kd_loss(s, torch.randn(2, 5), q, 0.5, 2.0)
    with pytest.raises(ValueError, match=r"kd_loss: alpha must be in \[0, 1\], got 1.5"):
        kd_loss(s, s, q, 1.5, 2.0)
    with pytest.raises(ValueError, match=r"kd_loss: temperature must be > 0, got 0.0"):
        kd_loss(s, s, q, 0.5, 0.0)


def test_ema_follows_the_formula_including_bn_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ema_model(model, 0.9)
    snapshots = []
    for i in range(3):
        with torch.no_grad():
            model[0].weight.add_(float(i + 1))
        model(torch.randn(8, 3))  # moves the BN running stats
        snapshots.append((model[0].weight.clone(), model[1].running_mean.clone()))
        ema.update_parameters(model)
    (w1, m1), (w2, m2), (w3, m3) = snapshots
    expected_w = 0.9 * (0.9 * w1 + 0.1 * w2) + 0.1 * w3  # the first update copies
    expected_m = 0.9 * (0.9 * m1 + 0.1 * m2) + 0.1 * m3
    torch.testing.assert_close(ema.module[0].weight, expected_w)
    torch.testing.assert_close(ema.module[1].running_mean, expected_m)


def test_ema_warmup_follows_the_tensorflow_formula():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ema_model(model, 0.2, warmup=True)
    expected = None
    for n in range(4):
        with torch.no_grad():
            model[0].weight.add_(float(n + 1))
        model(torch.randn(8, 3))
        w = model[0].weight.detach().clone()
        d = min(0.2, (1 + n) / (10 + n))  # n = 1: 2/11, then the cap 0.2; n = 0 copies
        expected = w if n == 0 else d * expected + (1 - d) * w
        ema.update_parameters(model)
        torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked == 4


def test_ema_bad_decay():
    with pytest.raises(ValueError, match=r"ema_model: decay must be in \(0, 1\), got 1.0"):
        ema_model(nn.Linear(2, 2), 1.0)


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn", "randaugment", "trivialaugment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_autoaugment_shapes_and_per_image_choices(policy, channels):
    x = torch.randint(0, 256, (1, channels, 20, 28), dtype=torch.uint8).repeat(24, 1, 1, 1)
    out = autoaugment(x, make_policy(policy), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    distinct = {bytes(img.flatten().tolist()) for img in out}
    assert len(distinct) > 1, "identical images must get their own random choices"


def test_autoaugment_is_seeded_by_the_generator_and_leaves_global_rng_alone():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    policy = make_policy("trivialaugment")
    state = torch.get_rng_state()
    a = autoaugment(x, policy, torch.Generator().manual_seed(5))
    b = autoaugment(x, policy, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_autoaugment_none_is_identity_and_bad_names():
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert autoaugment(x, make_policy("none")) is x
    with pytest.raises(
        ValueError, match=r"make_policy: unknown augmentation policy 'cifar'.*'cifar10'"
    ):
        make_policy("cifar")
    with pytest.raises(TypeError, match=r"autoaugment: x must be uint8 images"):
        autoaugment(x.float(), make_policy("cifar10"))
    with pytest.raises(ValueError, match=r"autoaugment: x must be uint8 images .* 3-D"):
        autoaugment(x[0], make_policy("cifar10"))
