"""The classification step as a plain function, without the CLI: the order of the step and
its loss against a formula written out here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freebies import config, engine
from freebies.build import Training
from freebies.classify import Step, train_step
from freebies.tricks import ema_model

K = 4  # classes


def reversed_blend(x: torch.Tensor, y: torch.Tensor, generator=None):
    """A deterministic stand-in mixer: 0.7 of each image and target, 0.3 of the batch reversed."""
    return 0.7 * x + 0.3 * x.flip(0), 0.7 * y + 0.3 * y.flip(0)


def make_step(net: nn.Module, overrides: dict, dtype=torch.float32, **kw) -> Step:
    base = {"aug.crop_padding": 0, "aug.hflip": False, "train.channels_last": False}
    cfg = config.load("baseline", {**base, **overrides})
    return Step(
        cfg=cfg,
        model=net,
        gen=torch.Generator().manual_seed(0),
        mean=torch.tensor([100.0], dtype=dtype),
        std=torch.tensor([50.0], dtype=dtype),
        num_classes=K,
        steps_per_epoch=10,
        loss_dtype=dtype,
        **kw,
    )


def batch(n: int = 6, h: int = 5, w: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 1, h, w), dtype=torch.uint8, generator=g)
    return torch.arange(n), x, torch.arange(n) % K


def tiny_net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(15, K)).to(dtype)


def test_step_loss_and_update_follow_the_formula():
    """loss = CE(f(mix(x)), (1 - eps) mix(onehot) + eps / K); then w <- w - lr * grad with the
    LR before the schedule steps; then the EMA averages the updated weights."""
    net = tiny_net()
    before = copy.deepcopy(net)
    s = make_step(
        net,
        {"aug.mixup": 1.0, "loss.label_smoothing": 0.1},
        mixers={"mixup": reversed_blend},
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.0, weight_decay=0.0)
    # LR 0.5 for the first step, 0 after: the update must use the LR before the schedule steps.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 if i == 0 else 0.0)
    t = Training(net, net, opt, sched, s.gen, ema=ema_model(net, 0.9))
    idx, x, y = batch()
    loss, parts = train_step(s, (idx, x, y), epoch=0, step=0)
    assert parts == [] and loss.requires_grad
    engine.update(loss, t)  # what the engine does after every step

    xn = (x.float() - 100.0) / 50.0
    xm = 0.7 * xn + 0.3 * xn.flip(0)
    onehot = F.one_hot(y, K).float()
    q = 0.9 * (0.7 * onehot + 0.3 * onehot.flip(0)) + 0.1 / K
    logits = before(xm)
    expected = -(q * logits.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    expected.backward()
    for p_new, p_old in zip(net.parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p_new, p_old - 0.5 * p_old.grad, rtol=1e-6, atol=1e-7)
    assert sched.last_epoch == 1 and opt.param_groups[0]["lr"] == 0.0
    assert int(t.ema.n_averaged) == 1  # the first EMA update copies the *updated* weights
    for p_ema, p_new in zip(t.ema.module.parameters(), net.parameters(), strict=True):
        assert torch.equal(p_ema, p_new)


def test_the_teacher_sees_the_mixed_and_erased_batch_in_its_own_units():
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return torch.zeros(x.shape[0], K)

    def marked(x, y, generator=None):
        return x + 1000.0, y  # a mark only the mixed batch carries

    s = make_step(
        tiny_net(),
        {"aug.mixup": 0.2, "distill.alpha": 0.5},
        mixers={"mixup": marked},
        teacher=Spy(),
        t_scale=2.0,
        t_shift=-1.0,
    )
    idx, x, y = batch()
    train_step(s, (idx, x, y), epoch=0, step=0)
    xn = (x.float() - 100.0) / 50.0
    torch.testing.assert_close(seen[0], (xn + 1000.0) * 2.0 - 1.0)


def test_mixing_stops_for_the_last_epochs():
    calls = []

    def counting(x, y, generator=None):
        calls.append(1)
        return x, y

    s = make_step(
        tiny_net(),
        {"aug.mixup": 0.2, "aug.mix_off_epochs": 1, "train.epochs": 3},
        mixers={"mixup": counting},
    )
    for epoch in range(3):
        train_step(s, batch(), epoch=epoch, step=0)
    assert len(calls) == 2  # epochs 0 and 1; not the last


def test_float64_step_keeps_float64():
    net = tiny_net(torch.float64)
    s = make_step(net, {"loss.label_smoothing": 0.1}, dtype=torch.float64)
    loss, _ = train_step(s, batch(), epoch=0, step=0)
    assert loss.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in net.parameters())
