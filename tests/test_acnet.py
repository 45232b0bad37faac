"""Tests for ACNet blocks, conversion and fusion (freebies.models.acnet)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from freebies.models import create_model
from freebies.models.acnet import ACBlock, convert, fuse_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structure(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in model.named_modules()]


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Random affine params and running stats, so folding is tested away from the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                for t, lo, hi in (
                    (m.weight, 0.5, 1.5),
                    (m.bias, -0.5, 0.5),
                    (m.running_mean, -0.5, 0.5),
                    (m.running_var, 0.5, 2.0),
                ):
                    t.copy_(torch.empty(t.shape, dtype=t.dtype).uniform_(lo, hi, generator=g))


def settle(model: nn.Module, make_x, steps: int = 3) -> nn.Module:
    """A few train-mode forwards (BN stats move, per branch differently), then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(make_x())
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- ACBlock: fused == unfused -------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
def test_acblock_fuse_matches_block(k, stride, padding, depthwise, bias):
    for dtype, tol in ((torch.float64, 1e-5), (torch.float32, 1e-4)):
        torch.manual_seed(0)
        c_in, c_out, groups = (4, 4, 4) if depthwise else (4, 6, 1)
        conv = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=bias, dtype=dtype)
        block = ACBlock(conv, side_gamma=1 / 3)
        randomize_bn(block)
        settle(block, lambda dtype=dtype, c_in=c_in: torch.randn(5, c_in, 9, 13, dtype=dtype))
        x = torch.randn(3, c_in, 9, 13, dtype=dtype)  # odd batch, odd non-square image
        with torch.no_grad():
            ref = block(x)
            fused = block.fuse()
            out = fused(x)
            # Same geometry as the original conv.
            assert ref.shape == conv(x).shape
        assert type(fused) is nn.Conv2d and fused.bias is not None
        assert fused.weight.shape == conv.weight.shape and fused.weight.dtype == dtype
        assert (fused.stride, fused.padding, fused.groups) == (conv.stride, conv.padding, groups)
        assert max_diff(out, ref) <= tol


@pytest.mark.parametrize(
    "padding, padding_mode",
    [("same", "zeros"), ("valid", "zeros"), ((0, 2), "zeros"), ((2, 1), "zeros"), (1, "reflect")],
)
def test_acblock_fuse_other_paddings(padding, padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 5, padding=padding, padding_mode=padding_mode, dtype=torch.float64)
    block = ACBlock(conv)
    randomize_bn(block)
    settle(block, lambda: torch.randn(4, 4, 9, 13, dtype=torch.float64))
    x = torch.randn(3, 4, 9, 13, dtype=torch.float64)
    with torch.no_grad():
        assert block(x).shape == conv(x).shape
        assert max_diff(block.fuse()(x), block(x)) <= 1e-5


@pytest.mark.parametrize("k, stride, padding", [(3, 2, 0), (5, 1, 1), (3, 1, 1)])
def test_acblock_fuse_channels_last(k, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, k, stride, padding, groups=4)
    block = ACBlock(conv).to(memory_format=torch.channels_last)
    randomize_bn(block)
    settle(block, lambda: torch.randn(4, 4, 9, 13).to(memory_format=torch.channels_last))
    x = torch.randn(3, 4, 9, 13)
    x_cl = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)
        fused = block.fuse()
        assert max_diff(block(x_cl), ref) <= 1e-5
        assert max_diff(fused(x_cl), ref) <= 1e-4


@needs_cuda
@pytest.mark.parametrize("padding", [0, 1])
def test_acblock_fuse_cuda(padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 2, padding, bias=True).cuda()
    block = ACBlock(conv)
    assert block.hor_conv.weight.is_cuda and block.ver_bn.running_var.is_cuda
    randomize_bn(block.cpu())
    block.cuda()
    settle(block, lambda: torch.randn(4, 4, 9, 13, device="cuda"))
    x = torch.randn(3, 4, 9, 13, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad():
        fused = block.fuse()
        assert fused.weight.is_cuda
        assert max_diff(fused(x), block(x)) <= 1e-4


def test_fused_kernel_matches_written_out_formula():
    # BN(conv_w(x)) = conv_{w * g/s}(x) + (beta - mu * g/s), s = sqrt(var + eps); the 1 x k and
    # k x 1 kernels are zero-padded to k x k (centre row / column) and the three are summed.
    torch.manual_seed(0)
    k, c = 5, 2
    block = ACBlock(nn.Conv2d(4, 6, k, padding=1, bias=True, dtype=torch.float64))
    randomize_bn(block)
    block.eval()

    def scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return s, bn.bias - bn.running_mean * s

    s_sq, t_sq = scale_shift(block.square_bn)
    s_h, t_h = scale_shift(block.hor_bn)
    s_v, t_v = scale_shift(block.ver_bn)
    w_h = F.pad(block.hor_conv.weight, (0, 0, c, c))  # (O, I, 1, k) -> (O, I, k, k)
    w_v = F.pad(block.ver_conv.weight, (c, c, 0, 0))  # (O, I, k, 1) -> (O, I, k, k)
    r = (-1, 1, 1, 1)
    weight = block.square_conv.weight * s_sq.view(r) + w_h * s_h.view(r) + w_v * s_v.view(r)
    bias = block.square_conv.bias * s_sq + t_sq + t_h + t_v
    fused = block.fuse()
    assert torch.allclose(fused.weight, weight, rtol=0, atol=1e-12)
    assert torch.allclose(fused.bias, bias, rtol=0, atol=1e-12)


def test_zero_side_gamma_is_the_square_branch():
    # Neutral setting: side BNs output gamma * z + beta = 0, in train and in eval mode.
    torch.manual_seed(0)
    block = ACBlock(nn.Conv2d(4, 6, 3, padding=1), side_gamma=0.0)
    x = torch.randn(3, 4, 9, 13)
    for mode in (True, False):
        block.train(mode)
        with torch.no_grad():
            assert torch.equal(block(x), block.square_bn(block.square_conv(x)))


def test_side_gamma_initialises_side_bn_weights_only():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    block = ACBlock(conv, side_gamma=1 / 3)
    assert torch.allclose(block.hor_bn.weight, torch.full((6,), 1 / 3))
    assert torch.allclose(block.ver_bn.weight, torch.full((6,), 1 / 3))
    assert torch.equal(block.square_bn.weight, torch.ones(6))
    # The square branch starts from a copy of the conv, bias included, not from the conv itself.
    assert torch.equal(block.square_conv.weight, conv.weight)
    assert torch.equal(block.square_conv.bias, conv.bias)
    assert block.square_conv.weight is not conv.weight
    assert block.hor_conv.bias is None and block.ver_conv.bias is None
    model = convert(nn.Sequential(nn.Conv2d(3, 4, 3)), side_gamma=0.25)
    assert torch.equal(model[0].ver_bn.weight, torch.full((4,), 0.25))
    assert torch.equal(model[0].square_bn.weight, torch.ones(4))


def test_authors_init_gamma_is_side_and_square_gamma():
    # DingXiaoH/ACNet's ACBlock.init_gamma(g) sets the square, horizontal and vertical BN
    # weights all to g (g = 1/3 for their CIFAR models); that is both arguments at g.
    model = convert(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
        side_gamma=1 / 3,
        square_gamma=1 / 3,
    )
    for block in (model[0], model[2]):
        for bn in (block.square_bn, block.hor_bn, block.ver_bn):
            assert torch.equal(bn.weight, torch.full((4,), 1 / 3))
    block = ACBlock(nn.Conv2d(2, 2, 5, padding=2), square_gamma=0.5)
    assert torch.equal(block.square_bn.weight, torch.full((2,), 0.5))
    assert torch.equal(block.hor_bn.weight, torch.ones(2))


def test_acblock_fuse_in_train_mode_raises():
    block = ACBlock(nn.Conv2d(4, 6, 3))
    with pytest.raises(ValueError, match=r"ACBlock.fuse: .* must be in eval mode.*model\.eval\(\)"):
        block.fuse()
    block.eval()
    block.hor_bn.train()  # one branch still training is just as wrong
    with pytest.raises(ValueError, match="must be in eval mode"):
        block.fuse()


@pytest.mark.parametrize(
    "conv,error",
    [
        (nn.Conv2d(4, 4, 1), ValueError),
        (nn.Conv2d(4, 4, 4), ValueError),
        (nn.Conv2d(4, 4, (1, 3)), ValueError),
        (nn.Conv2d(4, 4, 3, dilation=2), ValueError),
        (nn.Conv1d(4, 4, 3), TypeError),
    ],
)
def test_acblock_rejects_unsuitable_conv(conv, error):
    with pytest.raises(error, match=r"ACBlock: conv must be .*square, odd kernel of size >= 3 and"):
        ACBlock(conv)


# --- convert and fuse_model on whole models --------------------------------------------------


def test_convert_resnet20_turns_every_3x3_conv_into_an_acblock():
    plain = create_model("resnet20", 10, 1)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)
    model = convert(copy.deepcopy(plain))
    blocks = [m for m in model.modules() if isinstance(m, ACBlock)]
    assert len(blocks) == 19
    squares = {id(b.square_conv) for b in blocks}
    assert all(
        id(m) in squares
        for m in model.modules()
        if type(m) is nn.Conv2d and m.kernel_size == (3, 3)
    )
    # Each block adds a 1x3 and a 3x1 kernel and three BNs (2 affine params per channel each).
    growth = sum(2 * 3 * c.in_channels * c.out_channels + 3 * 2 * c.out_channels for c in convs)
    assert count(model) == count(plain) + growth
    assert model(torch.randn(3, 1, 12, 10)).shape == (3, 10)
    # Converting again does not nest blocks.
    assert len([m for m in convert(model).modules() if isinstance(m, ACBlock)]) == 19


def test_fused_acnet_resnet20_is_a_plain_resnet20():
    torch.manual_seed(0)
    model = convert(create_model("resnet20", 10, 1), side_gamma=1 / 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # a few steps, so the branches' weights and BN stats move apart
        x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        ref = model(x)
    fused, report = fuse_model(copy.deepcopy(model))
    assert report == {"acb": 19, "conv_bn": 19}
    with torch.no_grad():
        out = fused(x)
    assert max_diff(out, ref) <= 1e-4

    plain, plain_report = fuse_model(create_model("resnet20", 10, 1).eval())
    assert plain_report == {"acb": 0, "conv_bn": 19}
    assert structure(fused) == structure(plain)
    assert count(fused) == count(plain)
    assert not any(isinstance(m, (nn.BatchNorm2d, ACBlock)) for m in fused.modules())
    # Still fine-tunable, also where torch's folding adds a bias to a bias-free conv.
    assert all(p.requires_grad for p in [*fused.parameters(), *plain.parameters()])
    # Same state_dict layout: a rebuilt, fused plain model takes the fused ACNet's weights.
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x), out)


def test_convert_and_fuse_torchvision_resnet18():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = convert(resnet18(num_classes=10))
    blocks = [m for m in model.modules() if isinstance(m, ACBlock)]
    assert len(blocks) == 17  # the 7x7 stem and sixteen 3x3 convs
    inside = {id(c) for b in blocks for c in (b.square_conv, b.hor_conv, b.ver_conv)}
    rest = [m for m in model.modules() if type(m) is nn.Conv2d and id(m) not in inside]
    assert [m.kernel_size for m in rest] == [(1, 1)] * 3  # downsample shortcuts stay as they are
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative averages: eval-mode activations keep a sane scale
    settle(model, lambda: torch.randn(4, 3, 32, 32), steps=2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fused, report = fuse_model(model)
        out = fused(x)
    assert report == {"acb": 17, "conv_bn": 20}  # + 3 downsample 1x1 conv + BN
    assert max_diff(out, ref) <= 1e-4


def test_fuse_model_in_train_mode_raises():
    model = convert(create_model("resnet20", 10, 1))
    with pytest.raises(
        ValueError, match=r"fuse_model: model must be in eval mode.*model\.eval\(\)"
    ):
        fuse_model(model)
    model.eval()
    model.layers[2].bn1.train()
    with pytest.raises(ValueError, match=r"'layers\.2\.bn1' is training"):
        fuse_model(model)


def test_model_without_square_convs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, (1, 3)), nn.BatchNorm2d(4)
    )
    before = structure(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert(model) is model
    assert structure(model) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    randomize_bn(model)
    settle(model, lambda: torch.randn(4, 3, 9, 13))
    x = torch.randn(3, 3, 9, 13)
    with torch.no_grad():
        ref = model(x)
        fused, report = fuse_model(model)
        assert report == {"acb": 0, "conv_bn": 2}
        assert max_diff(fused(x), ref) <= 1e-5
    assert [type(m) for m in fused] == [nn.Conv2d, nn.Identity, nn.ReLU, nn.Conv2d, nn.Identity]


class Fusion(nn.Module):
    """A submodule named `fuse` is a layer, not a re-parameterisation hook."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(x)


def test_fuse_model_ignores_a_submodule_named_fuse():
    fused = check_fold(Fusion(), 1)
    assert isinstance(fused.fuse[1], nn.Identity)


def test_fuse_model_on_a_bare_acblock():
    block = ACBlock(nn.Conv2d(4, 6, 3, padding=1))
    randomize_bn(block)
    block.eval()
    fused, report = fuse_model(block)
    assert type(fused) is nn.Conv2d and report == {"acb": 1, "conv_bn": 0}


# --- how conv -> BN pairs are found ----------------------------------------------------------


class Crossed(nn.Module):
    """Registration order (conv_a, bn_b, conv_b, bn_a) disagrees with the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn_a = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))


class Reused(nn.Module):
    """The conv's output also feeds the skip, so folding the BN into it would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class Dynamic(nn.Module):
    """Data-dependent control flow, so fx cannot trace it; its children still can be."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.crossed = Crossed()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        if x.mean() > 0:
            x = torch.relu(x)
        x = self.crossed(x[:, :3])
        return self.bn2(self.conv2(x))


def check_fold(model: nn.Module, expected: int) -> nn.Module:
    torch.manual_seed(0)
    randomize_bn(model)
    settle(model, lambda: torch.randn(4, 3, 9, 13))
    x = torch.randn(3, 3, 9, 13)
    with torch.no_grad():
        ref = model(x)
        fused, report = fuse_model(model)
        assert max_diff(fused(x), ref) <= 1e-5
    assert report == {"acb": 0, "conv_bn": expected}
    return fused


def test_fx_pairs_follow_the_data_flow_not_registration_order():
    fused = check_fold(Crossed(), 2)
    assert isinstance(fused.bn_a, nn.Identity) and isinstance(fused.bn_b, nn.Identity)


def test_fx_does_not_fold_a_conv_whose_output_is_reused():
    fused = check_fold(Reused(), 0)
    assert isinstance(fused.bn, nn.BatchNorm2d)


def test_untraceable_model_falls_back_to_registration_order():
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(Dynamic())
    with pytest.warns(UserWarning, match="registration order"):
        fused = check_fold(Dynamic(), 4)
    # conv1/bn1 and conv2/bn2 by order; the traceable child is paired by fx, correctly.
    assert all(isinstance(m, nn.Identity) for m in (fused.bn1, fused.bn2, fused.crossed.bn_a))
    assert isinstance(fused.crossed.bn_b, nn.Identity)
