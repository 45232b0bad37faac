"""Muon (orthogonalised momentum for conv filters) and airbench's lookahead."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freebies import config
from freebies.build import make_lookahead, make_optimizer
from freebies.models import create_model
from freebies.optim import build_optimizer, lookahead_step
from freebies.optim.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 72), (64, 576), (40, 12)])
def test_orthogonalize_keeps_the_singular_vectors_and_squeezes_the_values(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # condition ~100
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    x = orthogonalize(g)
    core = u.T @ x @ vh.T  # diagonal iff x has g's singular vectors
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 1e-4 * core.abs().max()
    # The quintic iteration lands the singular values in about [0.7, 1.2], not on 1 exactly;
    # the smallest ones of a worse-conditioned matrix would stay lower after 5 steps.
    s = torch.linalg.svdvals(x)
    assert s.max() < 1.25 and s.min() > 0.6, s


def test_muon_leaves_other_groups_to_exactly_torch_sgd():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    kw = dict(lr=0.3, momentum=0.8, nesterov=True, weight_decay=0.01)
    ours = Muon([{"params": [a]}, {"params": [b], "lr": 0.1}], **kw)
    ref = torch.optim.SGD([{"params": [a2]}, {"params": [b2], "lr": 0.1}], foreach=False, **kw)
    for step in range(4):
        grads = torch.randn(5, 3), torch.randn(7)
        for (p, q), g in zip(((a, a2), (b, b2)), grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step(), ref.step()
        assert torch.allclose(a, a2, rtol=1e-6, atol=1e-7), step
        assert torch.allclose(b, b2, rtol=1e-6, atol=1e-7), step


def test_a_muon_step_moves_a_filter_bank_along_its_orthogonalised_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    opt = Muon([{"params": [w], "muon": True}], lr=0.1, momentum=0.0, normalize=True)
    w.grad = torch.randn_like(w)
    start = w.detach() * (8**0.5 / w.detach().norm())  # the step first rescales to sqrt(out)
    opt.step()
    step = (start - w.detach()).reshape(8, -1) / 0.1
    u, _, vh = torch.linalg.svd(w.grad.reshape(8, -1), full_matrices=False)
    cos = (step * (u @ vh)).sum() / (step.norm() * (u @ vh).norm())
    assert cos > 0.97, cos  # the direction of U V^T, up to the iteration's spread
    assert 0.6 * 8**0.5 < step.norm() < 1.25 * 8**0.5


def test_muon_option_puts_conv_filters_on_muon_and_the_rest_on_sgd():
    net = create_model("airnet-8-16-32", 10, 1)
    cfg = config.load("fast", {"optim.name": "muon", "optim.muon_lr": 0.2})
    opt = make_optimizer(net, cfg, 1.0)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == 0.2 and muon[0]["momentum"] == 0.6
    assert all(p.ndim == 4 for p in muon[0]["params"]) and len(muon[0]["params"]) == 6
    rest = [p for g in opt.param_groups if not g["muon"] for p in g["params"]]
    assert any(p is net.fc.weight for p in rest) and all(p.ndim < 4 for p in rest)
    with pytest.raises(ValueError, match="no conv filters"):
        build_optimizer(nn.Linear(3, 2), "muon", 0.1)


def test_lookahead_pulls_harder_towards_the_end_and_ends_on_the_slow_copy():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=1.0)
    lookahead_step(opt, 5, 10)  # first call: the slow copy starts at the weights (0)
    assert torch.equal(opt.state[p]["slow"], torch.zeros(3)) and torch.equal(p, torch.zeros(3))
    with torch.no_grad():
        p.fill_(1.0)
    lookahead_step(opt, 6, 10)  # not a multiple of 5, not the last step: nothing happens
    assert torch.equal(p.detach(), torch.ones(3))
    lookahead_step(opt, 10, 20)  # pull = 0.95^5 * (10 / 20)^3
    pull = 0.95**5 * 0.5**3
    assert torch.allclose(p.detach(), torch.full((3,), 1 - pull))
    with torch.no_grad():
        p.fill_(5.0)
    lookahead_step(opt, 20, 20)  # the last step: the weights become the slow copy
    assert torch.allclose(p.detach(), torch.full((3,), 1 - pull))
    # The slow copy is optimizer state, so a checkpoint carries it and a resume restores it.
    again = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=1.0)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(next(iter(again.state.values()))["slow"], opt.state[p]["slow"])


def test_lookahead_is_off_by_default_and_spans_the_whole_run():
    assert make_lookahead(config.load("fast"), 100) is None
    la = make_lookahead(config.load("fast", {"optim.lookahead_every": 4}), 100)
    assert la.keywords == {"total_steps": 500, "every": 4, "decay": 0.95}


def test_airnet_whitening_patch_comes_from_the_name():
    model = create_model("airnet-8-16-32-k3", 10, 1)
    assert model.whiten.kernel_size == (3, 3) and model.whiten.out_channels == 18
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="whitening patch"):
        create_model("airnet-8-16-32-k9", 10, 1)
