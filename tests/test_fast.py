"""The pieces of the `fast` recipe: AirNet, alternating flip, shifted TTA, the bias LR group."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from freebies import config
from freebies.build import make_optimizer
from freebies.evaluate import evaluate, shift
from freebies.models import create_model, model_names
from freebies.models.acnet import fuse_model
from freebies.tricks.geometric import alternating_flip
from helpers import run_cli, small

# The tiny fast run (256 images, 2 epochs, 128 test images of 10 classes) must clearly beat
# chance (10%). CPU fp32, seed 0 (the tests' seed): 39.8% with SGD filters, and 39.8% again
# with Muon filters (the recipe since round two); SGD seeds 0-7 gave 28.9-50.8%, so 20% leaves
# room for other CPUs and bf16 on CUDA yet fails if it cannot learn.
MIN_TINY_ACC = 20.0


def test_airnet_builds_by_widths_and_pools_28_to_1():
    model = create_model("airnet-8-16-32", 10, 1)
    assert "airnet-64-256-256" in model_names()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model(torch.randn(2, 1, 32, 20)).shape == (2, 10)  # non-square works too
    assert model.whiten.out_channels == 8  # 2 x 2 patches of 1 channel, as +/- pairs
    with pytest.raises(ValueError, match="every width must be at least 1"):
        create_model("airnet-0-16-32", 10, 1)


def test_airnet_whitening_whitens_training_patches():
    torch.manual_seed(0)
    model = create_model("airnet-8-16-32", 10, 3)
    # Correlated channels: a whitening layer must decorrelate them and scale them to 1.
    base = torch.randn(64, 1, 12, 12)
    x = torch.cat([base, 0.5 * base + 0.1 * torch.randn_like(base), torch.randn_like(base)], 1)
    model.init_from_data(x, eps=1e-8)  # the default eps damps the weakest directions a little
    out = nn.functional.conv2d(x, model.whiten.weight[:12])  # the + half: 12 = 3 x 2 x 2
    flat = out.transpose(0, 1).reshape(12, -1)
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12), atol=0.05), cov.diag()
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_airnet_convs_start_as_pass_through_and_norm_scales_are_fixed():
    model = create_model("airnet-8-16-32", 10, 1)
    convs = [m for m in model.layers if isinstance(m, nn.Conv2d)]
    second = convs[1].weight  # 8 -> 8 after the first block's conv
    assert torch.equal(second[:, :, 1, 1], torch.eye(8)) and second[:, :, 0].abs().sum() == 0
    norms = [m for m in model.layers if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.momentum == 0.4 for m in norms)


def test_alternating_flip_flips_each_image_every_other_epoch():
    x = torch.arange(6 * 2, dtype=torch.uint8).view(6, 1, 1, 2)
    first = torch.tensor([True, False, True, True, False, False])
    idx = torch.tensor([4, 0, 2])
    e0, e1, e2 = (alternating_flip(x[idx], idx, e, first) for e in (0, 1, 2))
    flipped = x[idx].flip(3)
    assert torch.equal(e0, torch.where(first[idx][:, None, None, None], flipped, x[idx]))
    assert torch.equal(e1, torch.where(~first[idx][:, None, None, None], flipped, x[idx]))
    assert torch.equal(e2, e0)


def test_shift_moves_content_and_reflects_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down = shift(x, 1)
    assert torch.equal(down[0, 0, 1:, 1:], x[0, 0, :3, :3])
    assert torch.equal(shift(x, -1)[0, 0, :3, :3], x[0, 0, 1:, 1:])
    assert torch.equal(shift(x, 0), x)
    assert down[0, 0, 0, 1] == x[0, 0, 1, 0]  # reflected, not zero


class Mean(nn.Module):
    """Logits depend on where the bright pixels are, so shifted views change them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([left, -left], 1)


def test_shifted_tta_weights_unshifted_and_shifted_halves():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    y = torch.zeros(5, dtype=torch.long)
    mean, std = torch.tensor([0.0]), torch.tensor([255.0])
    got = evaluate(Mean(), x, y, mean, std, tta=True, tta_shift=1)
    xf = x.float() / 255
    views = [xf, xf.flip(3)]
    p = lambda v: Mean()(v).softmax(1)  # noqa: E731
    unshifted = sum(p(v) for v in views) / 2
    shifted = sum(p(shift(v, s)) for v in views for s in (1, -1)) / 4
    probs = (unshifted + shifted) / 2
    assert got["nll"] == pytest.approx(-probs[:, 0].log().mean().item(), abs=1e-6)


def test_bias_lr_scale_group_keeps_decay_per_step():
    model = create_model("airnet-8-16-32", 10, 1)
    cfg = config.load("baseline", {"optim.bias_lr_scale": 64.0})
    opt = make_optimizer(model, cfg, 0.1)
    weights, small_params = opt.param_groups
    assert weights["lr"] == 0.1 and small_params["lr"] == pytest.approx(6.4)
    assert small_params["weight_decay"] * small_params["lr"] == pytest.approx(5e-4 * 0.1)
    assert all(p.ndim <= 1 for p in small_params["params"])
    assert all(p.ndim > 1 for p in weights["params"])
    frozen = {id(model.whiten.weight)}
    assert not any(id(p) in frozen for g in opt.param_groups for p in g["params"])
    cfg = config.load("baseline", {"optim.bias_lr_scale": 64.0, "optim.no_bn_decay": True})
    assert make_optimizer(model, cfg, 0.1).param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"optim.bias_lr_scale": 0}, "optim.bias_lr_scale=0.0 must be > 0"),
        ({"train.tta": False, "train.tta_shift": 1}, "set train.tta=true too"),
        ({"train.tta_shift": -1, "train.tta": True}, "tta_shift=-1 must be >= 0"),
        ({"aug.flip_mode": "alternating"}, "did you mean 'alternate'"),
    ],
)
def test_bad_fast_settings(overrides, match):
    with pytest.raises(Exception, match=match):
        config.load("fast", overrides)


def test_tta_shift_as_large_as_the_image_is_one_line(idx_dir, tmp_path, capsys):
    argv = [
        *small(idx_dir, tmp_path / "run"),
        "--set",
        "train.tta=true",
        "--set",
        "train.tta_shift=28",
    ]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "must be smaller than the images (28x28)" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_fast_recipe_trains_airnet_end_to_end(idx_dir, tmp_path, capsys):
    argv = small(idx_dir, tmp_path / "run")
    argv[argv.index("baseline")] = "fast"
    rc, out, err = run_cli(capsys, *argv, "--set", "train.eval_every=1")
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recipe"] == "fast"
    assert "final test accuracy" in out
    assert summary["test_acc"] > MIN_TINY_ACC, summary["test_acc"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
def test_fast_recipe_on_cuda_bf16_channels_last(idx_dir, tmp_path, capsys, compiled):
    argv = small(idx_dir, tmp_path / "run")
    argv[argv.index("baseline")] = "fast"
    argv += ["--device", "cuda", "--set", "train.precision=bf16"]
    rc, _, err = run_cli(capsys, *argv, *(["--compile"] if compiled else []))
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] != "cpu"
    assert summary["test_acc"] > MIN_TINY_ACC, summary["test_acc"]


def test_airnet_whitening_stays_fp32_under_bf16_autocast():
    model = create_model("airnet-8-16-32", 10, 1)
    seen = []
    model.whiten.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x = torch.randn(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the rest of the net is in bf16
        model.whiten_fp32 = False
        model(x)
    assert seen == [torch.float32, torch.bfloat16]
    assert model(x).dtype == torch.float32  # and without autocast, nothing turns it on


def test_airnet_traces_for_fusion_without_falling_back():
    model = create_model("airnet-8-16-32", 10, 1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the untraceable fallback warns
        fused, info = fuse_model(model)
    assert info["conv_bn"] == 3  # each block's second conv feeds its BN directly
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(fused(x), model(x), atol=1e-5)
