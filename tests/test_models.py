"""Tests for the model registry and the ResNet family (freebies.models)."""

import pytest
import torch
from torch import nn

from freebies.models import create_model, model_names


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def option_a_resnet_params(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameter count of a CIFAR ResNet with parameter-free shortcuts, written out by hand.

    3x3 convs have no bias; every conv is followed by a norm with 2 affine params per channel;
    the head is a 64 -> num_classes linear layer with bias.
    """
    n = (depth - 2) // 6
    stem = 9 * in_channels * 16 + 2 * 16
    stages = 0
    prev = 16
    for width in (16, 32, 64):
        first = 9 * prev * width  # first conv of a stage changes width; the rest keep it
        rest = (2 * n - 1) * 9 * width * width
        norms = 2 * n * 2 * width
        stages += first + rest + norms
        prev = width
    head = 64 * num_classes + num_classes
    return stem + stages + head


def test_resnet20_exact_param_count():
    # 269,722 is the paper's option A (0.27M). The often-quoted 272,474 includes the two
    # 1x1-conv+BN projection shortcuts of option B (512 + 64 + 2048 + 128 = 2,752 more).
    assert count(create_model("resnet20", 10)) == 269_722
    assert option_a_resnet_params(20) == 269_722


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_param_counts_match_formula(depth):
    assert count(create_model(f"resnet{depth}", 10)) == option_a_resnet_params(depth)


def test_cifar_resnet_param_count_depends_on_classes_and_channels():
    model = create_model("resnet20", 100, in_channels=1)
    assert count(model) == option_a_resnet_params(20, num_classes=100, in_channels=1)


def test_cifar_resnet_counts_grow_with_depth():
    counts = [count(create_model(f"resnet{d}", 10)) for d in (20, 32, 44, 56, 110)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    # Each 12 layers of depth add two blocks per stage: 4 convs and 4 norms at each width.
    per_12 = sum(4 * 9 * w * w + 4 * 2 * w for w in (16, 32, 64))
    assert counts[1] - counts[0] == per_12


@pytest.mark.parametrize(
    ("name", "expected"), [("preact_resnet18", 11.17e6), ("wrn-28-10", 36.5e6)]
)
def test_big_model_param_counts(name, expected):
    assert abs(count(create_model(name, 10)) - expected) / expected < 0.01


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (28, 36)])
def test_resnet20_forward_shape(batch, in_channels, size):
    model = create_model("resnet20", 7, in_channels=in_channels)
    out = model(torch.randn(batch, in_channels, *size))
    assert out.shape == (batch, 7)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {}),
        ("preact_resnet18", {}),
        ("wrn-10-1", {"dropout": 0.3}),
        ("resnet20", {"norm": "gn"}),
        ("preact_resnet18", {"norm": "gn"}),
        ("wrn-10-2", {"norm": "gn"}),
    ],
)
def test_forward_shape_each_family(name, kwargs):
    model = create_model(name, 5, in_channels=3, **kwargs)
    assert model(torch.randn(2, 3, 8, 12)).shape == (2, 5)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18", "wrn-10-2"])
def test_channels_last(name):
    model = create_model(name, 10).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 28, 36)
    with torch.no_grad():
        out = model(x.to(memory_format=torch.channels_last))
        ref = model(x.contiguous())
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18", "wrn-10-2"])
def test_group_norm_has_no_batch_norm(name):
    model = create_model(name, 10, norm="gn")
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)


def test_unknown_norm():
    with pytest.raises(ValueError, match=r"unknown norm 'ln'.*norm must be one of: bn, gn"):
        create_model("resnet20", 10, norm="ln")


def test_wrn_name_forms_build_the_same_structure():
    a = create_model("wrn-16-4", 10)
    b = create_model("wrn16_4", 10)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [
        (k, v.shape) for k, v in b.state_dict().items()
    ]


def test_wrn_dropout_sits_in_blocks():
    with_dropout = create_model("wrn-10-1", 10, dropout=0.3)
    without = create_model("wrn-10-1", 10)
    assert any(isinstance(m, nn.Dropout) for m in with_dropout.modules())
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())


@pytest.mark.parametrize("name", ["wrn-27-10", "wrn30_2", "wrn-4-1"])
def test_wrn_bad_depth(name):
    with pytest.raises(ValueError, match=r"wide_resnet: depth must be 6n\+4"):
        create_model(name, 10)


@pytest.mark.parametrize(("typo", "meant"), [("resnt20", "resnet20"), ("resnet-56", "resnet56")])
def test_unknown_model_suggests_nearest(typo, meant):
    with pytest.raises(
        ValueError, match=f"create_model: unknown model '{typo}' \\(did you mean '{meant}'\\?\\)"
    ):
        create_model(typo, 10)


def test_unknown_model_lists_choices_on_one_line():
    with pytest.raises(ValueError) as info:
        create_model("vgg16", 10)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet20" in message and "preact_resnet18" in message and "wrn-D-K" in message


@pytest.mark.parametrize(("name", "kwarg"), [("resnet20", "dropout"), ("wrn-16-4", "dropot")])
def test_unknown_kwarg(name, kwarg):
    with pytest.raises(TypeError, match=f"does not take option\\(s\\) '{kwarg}'"):
        create_model(name, 10, **{kwarg: 0.1})


def test_model_names_cover_every_family():
    names = model_names()
    assert {"resnet20", "resnet110", "preact_resnet18", "wrn-28-10"} <= set(names)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    logits = model(torch.randn(4, 3, 16, 16))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
