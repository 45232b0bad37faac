"""AdaBound / AMSBound against a per-element reference written out below (Luo et al. 2019)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from freebies.optim.adabound import AdaBound

P0 = [0.5, -1.0, 2.0]
# Element 0: moderate gradients that then shrink (the step stays inside the bounds, and AMSBound
# keeps the larger old second moment, so the two variants part ways). Element 1: tiny gradients,
# so the Adam step is huge and the upper bound clips. Element 2: large gradients, lower bound.
GRADS = [
    [0.2, 0.001, 5.0],
    [0.3, -0.002, 4.0],
    [0.02, 0.001, -6.0],
    [0.01, 0.003, 5.0],
    [-0.02, 0.001, 3.0],
    [0.1, 0.002, 2.0],
]
HP = dict(betas=(0.9, 0.99), final_lr=0.1, gamma=0.1, eps=1e-8)


def reference(
    p0: list[float],
    grads: list[list[float]],
    lrs: list[float],
    *,
    betas: tuple[float, float],
    final_lr: float,
    gamma: float,
    eps: float,
    weight_decay: float = 0.0,
    amsbound: bool = False,
    scale_final_lr: bool = True,
) -> tuple[list[list[float]], set[str]]:
    """Plain-float AdaBound: params after each step, and which bounds ever clipped."""
    b1, b2 = betas
    p = list(p0)
    n = len(p)
    m, v, vmax = [0.0] * n, [0.0] * n, [0.0] * n
    history, clipped = [], set()
    for t in range(1, len(grads) + 1):
        lr = lrs[t - 1]
        fl = final_lr * lr / lrs[0] if scale_final_lr else final_lr
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        lower = fl * (1 - 1 / (gamma * t + 1))
        upper = fl * (1 + 1 / (gamma * t))
        for i in range(n):
            g = grads[t - 1][i] + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            vmax[i] = max(vmax[i], v[i])
            raw = step_size / (math.sqrt(vmax[i] if amsbound else v[i]) + eps)
            if raw < lower:
                clipped.add(f"lower@{t}")
            if raw > upper:
                clipped.add(f"upper@{t}")
            p[i] -= min(max(raw, lower), upper) * m[i]
        history.append(list(p))
    return history, clipped


def run_ours(lrs: list[float], grads: list[list[float]], **kw) -> list[list[float]]:
    """Our optimizer on a float64 copy of P0 with the given gradients and per-step lrs."""
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([p], lr=lrs[0], **kw)
    history = []
    for lr, g in zip(lrs, grads, strict=True):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append(p.detach().tolist())
    return history


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("amsbound", [False, True])
def test_step_matches_reference(amsbound: bool, weight_decay: float):
    grads, lrs = GRADS[:5], [0.01] * 5
    want, clipped = reference(P0, grads, lrs, **HP, weight_decay=weight_decay, amsbound=amsbound)
    # The bounds must actually bite, on both sides, or the test would not check the clamp.
    assert any(c.startswith("lower") for c in clipped)
    assert any(c.startswith("upper") for c in clipped)
    other, _ = reference(P0, grads, lrs, **HP, weight_decay=weight_decay, amsbound=not amsbound)
    assert other[-1] != pytest.approx(want[-1], rel=1e-6), "gradients must separate the variants"

    got = run_ours(lrs, grads, **HP, weight_decay=weight_decay, amsbound=amsbound)
    for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert g == pytest.approx(w, rel=1e-12, abs=0), f"step {step}"


def test_lr_schedule_scales_the_bounds():
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([p], lr=0.01, **HP)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    got, lrs = [], []
    for g in GRADS:
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        sched.step()
        got.append(p.detach().tolist())
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    assert opt.param_groups[0]["base_lr"] == 0.01

    want, clipped = reference(P0, GRADS, lrs, **HP)
    assert {"lower@5", "upper@5"} <= clipped  # the halved bounds bite after the decays
    unscaled, _ = reference(P0, GRADS, lrs, **HP, scale_final_lr=False)
    assert unscaled[-1] != pytest.approx(want[-1], rel=1e-6)
    for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert g == pytest.approx(w, rel=1e-12, abs=0), f"step {step}"


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _optimizer(model: nn.Module, lrs: tuple[float, float], amsbound: bool):
    groups = [
        {"params": model[0].parameters(), "lr": lrs[0]},
        {"params": model[2].parameters(), "lr": lrs[1], "weight_decay": 1e-2},
    ]
    opt = AdaBound(groups, final_lr=0.05, gamma=0.01, amsbound=amsbound)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)


def _train(model: nn.Module, opt: AdaBound, sched, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("amsbound", [False, True])
def test_state_dict_round_trip_is_exact(amsbound: bool):
    lrs = (1e-2, 1e-3)
    straight = _model(0)
    opt_straight, sched = _optimizer(straight, lrs, amsbound)
    _train(straight, opt_straight, sched, range(10))

    first = _model(0)
    opt, sched = _optimizer(first, lrs, amsbound)
    _train(first, opt, sched, range(5))
    buf = io.BytesIO()
    torch.save(
        {"model": first.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    # A different seed and deliberately wrong lrs: everything must come from the checkpoint,
    # including each group's base_lr that scales final_lr.
    resumed = _model(1)
    resumed.load_state_dict(ckpt["model"])
    opt_resumed, sched = _optimizer(resumed, (0.5, 0.5), amsbound)
    opt_resumed.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    assert [g["base_lr"] for g in opt_resumed.param_groups] == list(lrs)
    _train(resumed, opt_resumed, sched, range(5, 10))

    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
        sa, sb = opt_straight.state[a], opt_resumed.state[b]
        assert sa.keys() == sb.keys() and sa["step"] == sb["step"] == 10
        for key in sa.keys() - {"step"}:
            assert torch.equal(sa[key], sb[key]), key
    for ga, gb in zip(opt_straight.param_groups, opt_resumed.param_groups, strict=True):
        assert ga["lr"] == gb["lr"] and ga["base_lr"] == gb["base_lr"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=0.0), "AdaBound lr must be a number > 0"),
        (dict(lr=-1e-3), "AdaBound lr must be a number > 0"),
        (dict(lr=float("nan")), "AdaBound lr must be a number > 0"),
        (dict(betas=(1.0, 0.999)), r"betas must be two numbers in \[0, 1\)"),
        (dict(betas=(0.9, -0.1)), r"betas must be two numbers in \[0, 1\)"),
        (dict(betas=(0.9,)), r"betas must be two numbers"),
        (dict(final_lr=0.0), "final_lr must be > 0"),
        (dict(gamma=0.0), r"gamma must be in \(0, 1\)"),
        (dict(gamma=1.0), r"gamma must be in \(0, 1\)"),
        (dict(eps=-1e-8), "eps must be >= 0"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
    ],
)
def test_bad_values_raise(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        AdaBound([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_value_in_a_param_group_raises_and_is_not_added():
    opt = AdaBound([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\), got 2.0"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "gamma": 2.0})
    assert len(opt.param_groups) == 1


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 3])).sum().backward()
    with pytest.raises(RuntimeError, match="AdaBound does not support sparse gradients"):
        AdaBound(emb.parameters()).step()


def test_params_without_grad_are_untouched():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = AdaBound([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and b not in opt.state
    assert not torch.equal(a, torch.ones(2))


@pytest.mark.parametrize("amsbound", [False, True])
def test_fits_a_line(amsbound: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, generator=g)
    y = 3 * x
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    opt = AdaBound(model.parameters(), lr=0.05, final_lr=0.1, amsbound=amsbound)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    first = opt.step(closure).item()  # step returns the closure's loss, like torch optimizers
    for _ in range(199):
        last = opt.step(closure).item()
    assert last < first / 10, (first, last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amsbound", [False, True])
def test_cuda_matches_cpu(amsbound: bool):
    models = {dev: _model(0).to(dev) for dev in ("cpu", "cuda")}
    for dev, model in models.items():
        opt, sched = _optimizer(model, (1e-2, 1e-3), amsbound)
        for step in range(5):
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step)).to(dev)
            opt.zero_grad()
            (model(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
            opt.step()
            sched.step()
        for p in model.parameters():
            assert all(t.device == p.device for t in opt.state[p].values() if torch.is_tensor(t))
    for a, b in zip(models["cpu"].parameters(), models["cuda"].parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-6)
