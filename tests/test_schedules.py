import math

import pytest
import torch

from freebies.config import SchedCfg
from freebies.optim import build_scheduler, lr_factor


def lrs(cfg: SchedCfg, base: float = 0.1, spe: int = 10, epochs: int = 10) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = build_scheduler(opt, cfg, base_lr=base, steps_per_epoch=spe, epochs=epochs)
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
    cfg = SchedCfg(decay="cosine", warmup_epochs=1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = build_scheduler(opt, cfg, base_lr=0.1, steps_per_epoch=10, epochs=5)
    for _ in range(23):
        opt.step()
        sched.step()
    state = sched.state_dict(), opt.state_dict()
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched2 = build_scheduler(opt2, cfg, base_lr=0.1, steps_per_epoch=10, epochs=5)
    sched2.load_state_dict(state[0])
    opt2.load_state_dict(state[1])
    for step in range(23, 50):
        expected = 0.1 * lr_factor(step, total_steps=50, warmup_steps=10, decay="cosine")
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), sched.step(), opt2.step(), sched2.step()
