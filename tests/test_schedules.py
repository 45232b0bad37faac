import dataclasses
import math

import pytest
import torch

from freebies.config import SchedCfg
from freebies.optim import build_scheduler, lr_factor, scaled_lr


def lrs(cfg: SchedCfg, base: float = 0.1, spe: int = 10, epochs: int = 10) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    kw = dataclasses.asdict(cfg)
    sched = build_scheduler(opt, base_lr=base, steps_per_epoch=spe, epochs=epochs, **kw)
    out = []
    for _ in range(spe * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_decay_at_fractions_of_the_run():
    got = lrs(SchedCfg(decay="step", milestones=[0.5, 0.75], gamma=0.1))
    assert got[49] == pytest.approx(0.1) and got[50] == pytest.approx(0.01)
    assert got[74] == pytest.approx(0.01) and got[75] == pytest.approx(0.001)


def test_cosine_follows_the_formula_after_warmup():
    cfg = SchedCfg(decay="cosine", warmup_epochs=2, warmup="linear", warmup_lr=0.0)
    got = lrs(cfg)
    warm, total = 20, 100
    for t in (0, 5, 19):
        assert got[t] == pytest.approx(0.1 * t / warm)
    for t in (20, 37, 60, 99):
        expected = 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))) * 0.1
        assert got[t] == pytest.approx(expected)


def test_constant_warmup_then_full_lr():
    got = lrs(SchedCfg(decay="none", warmup_epochs=1, warmup="constant", warmup_lr=0.01))
    assert got[:10] == pytest.approx([0.01] * 10)
    assert got[10:] == pytest.approx([0.1] * 90)


def test_linear_decay_with_floor():
    got = lrs(SchedCfg(decay="linear", min_lr=0.001))
    assert got[0] == pytest.approx(0.1)
    assert got[50] == pytest.approx(0.001 + (0.1 - 0.001) * 0.5)
    assert min(got) >= 0.001


def test_zero_warmup_is_identity():
    plain = lrs(SchedCfg(decay="cosine"))
    assert lrs(SchedCfg(decay="cosine", warmup_epochs=0.0, warmup_lr=0.05)) == plain
    assert plain[0] == pytest.approx(0.1)


def test_pure_function_matches_scheduler_and_resume_is_exact():
    kw = dict(base_lr=0.1, steps_per_epoch=10, epochs=5, decay="cosine", warmup_epochs=1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = build_scheduler(opt, **kw)
    for _ in range(23):
        opt.step()
        sched.step()
    state = sched.state_dict(), opt.state_dict()
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched2 = build_scheduler(opt2, **kw)
    sched2.load_state_dict(state[0])
    opt2.load_state_dict(state[1])
    for step in range(23, 50):
        expected = 0.1 * lr_factor(step, total_steps=50, warmup_steps=10, decay="cosine")
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), sched.step(), opt2.step(), sched2.step()


@pytest.mark.parametrize(
    ("lr", "batch", "rule", "base", "expected"),
    [
        (0.1, 1024, "linear", 256, 0.4),  # Goyal et al.: eta = 0.1 * b / 256
        (0.1, 64, "linear", 256, 0.025),
        (0.2, 1000, "linear", 100, 2.0),
        (0.1, 1024, "none", 256, 0.1),  # off: the recipe's LR as written
    ],
)
def test_linear_scaling_rule_formula(lr, batch, rule, base, expected):
    assert scaled_lr(lr, batch, rule, base) == pytest.approx(expected, rel=1e-12)


def test_scheduler_and_scaling_refuse_impossible_arguments():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"decay must be one of step, cosine.*'cosin'"):
        build_scheduler(opt, base_lr=0.1, steps_per_epoch=10, epochs=5, decay="cosin")
    with pytest.raises(ValueError, match=r"steps_per_epoch, epochs >= 1, got 0.1, 0, 5"):
        build_scheduler(opt, base_lr=0.1, steps_per_epoch=0, epochs=5)
    with pytest.raises(ValueError, match=r"scaled_lr: rule must be one of none, linear"):
        scaled_lr(0.1, 256, "sqrt")
    with pytest.raises(ValueError, match=r"global_batch and base_batch must be > 0"):
        scaled_lr(0.1, 256, "linear", 0)
