"""ACNet: asymmetric convolution blocks, trained as three branches and fused into one conv.

Ding et al., ICCV 2019, "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via
Asymmetric Convolution Blocks", https://arxiv.org/abs/1908.03930

Training form of a k x k conv: k x k conv + BN, 1 x k conv + BN and k x 1 conv + BN, summed.
Because convolution is additive in the kernel, the three branches (each with its BN folded in,
using running statistics) are exactly one k x k conv whose centre row and column carry the 1 x k
and k x 1 kernels. So the deployed model has the original architecture and costs nothing extra.

- `convert(model)` swaps every eligible square conv for an `ACBlock`, in place. The branch BNs
  start at weight 1 unless told otherwise: the authors' released code (DingXiaoH/ACNet,
  `ACBlock.init_gamma`) sets all three to the same gamma, 1/3 for their CIFAR models, which is
  `convert(model, side_gamma=1/3, square_gamma=1/3)`.
- `fuse_model(model)` is the one walker (timm's convention): every module with `fuse()` is
  replaced by what it returns, then every conv -> BatchNorm2d pair is folded with
  `torch.nn.utils.fusion.fuse_conv_bn_eval`. The module tree keeps its attribute names (a folded
  BN becomes `nn.Identity`), so a fused ACNet and a fused plain model share one `state_dict`
  layout.

Hand-written because no maintained library has it: the ACB branch alignment and kernel merge.
The per-branch conv+BN folding uses `torch.nn.utils.fusion.fuse_conv_bn_weights`.
"""

import copy
import inspect
import itertools
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from freebies.tricks.record import Key, Trick

__all__ = ["ACBlock", "convert", "fuse_model", "is_square_conv"]


def is_square_conv(module: nn.Module) -> bool:
    """True for a plain `nn.Conv2d` that `ACBlock` can take: k x k, k odd >= 3, dilation 1.

    Subclasses of Conv2d are left alone on purpose: they may change what forward does with the
    weight (weight standardisation, quantisation), which would make the merged kernel wrong.
    """
    if type(module) is not nn.Conv2d:
        return False
    kh, kw = module.kernel_size
    return kh == kw and kh >= 3 and kh % 2 == 1 and tuple(module.dilation) == (1, 1)


def convert(model: nn.Module, side_gamma: float = 1.0, square_gamma: float = 1.0) -> nn.Module:
    """Replace every square conv (see `is_square_conv`) in `model` by an `ACBlock`, in place.

    Args:
        model: any module, e.g. a CIFAR ResNet or a torchvision ResNet; convs inside
            `nn.Sequential` are found too. Existing ACBlocks are not converted again.
        side_gamma: initial BN weight of the 1 x k and k x 1 branches only.
        square_gamma: initial BN weight of the k x k branch. The authors' CIFAR setting
            (`init_gamma(1/3)` in their code) is side_gamma = square_gamma = 1/3.

    Returns:
        `model` itself, or a new `ACBlock` if `model` is itself a square conv. Dilated convs,
        even or 1 x 1 kernels and conv subclasses stay as they are, so a model without square
        convs comes back unchanged.
    """
    gammas = {"side_gamma": side_gamma, "square_gamma": square_gamma}
    if is_square_conv(model):
        return ACBlock(model, **gammas)
    # One block per conv object, so a conv registered under two names stays shared.
    made: dict[int, ACBlock] = {}
    _convert_children(model, gammas, made)
    return model


def _convert_children(
    parent: nn.Module, gammas: dict[str, float], made: dict[int, "ACBlock"]
) -> None:
    for name, child in list(parent.named_children()):
        if isinstance(child, ACBlock):
            continue
        if is_square_conv(child):
            if id(child) not in made:
                made[id(child)] = ACBlock(child, **gammas)
            setattr(parent, name, made[id(child)])
        else:
            _convert_children(child, gammas, made)


def fuse_model(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """Fuse `model` for deployment, in place (deep-copy it first to keep the training form).

    Two passes: every submodule exposing `fuse()` (an `ACBlock`) is replaced by what `fuse()`
    returns; then each conv whose output goes only into a BatchNorm2d is folded with
    `fuse_conv_bn_eval`, and that BN becomes `nn.Identity()`. Pairs are found with
    `torch.fx.symbolic_trace`; a module that cannot be traced (data-dependent control flow)
    instead pairs its direct children by registration order (a conv registered immediately
    before a BN of matching width), with a warning, and its children are tried again with fx.

    Args:
        model: a module in eval mode (all submodules), so BN running statistics are used.

    Returns:
        `(model, report)`: the fused model (the same object unless `model` itself had `fuse()`)
        and `{"acb": modules replaced via fuse(), "conv_bn": conv+BN pairs folded}`.

    Raises:
        ValueError: if any submodule is in training mode.
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"fuse_model: model must be in eval mode, but {training[0]!r} is training; call "
            "model.eval() first (fusing folds BatchNorm running statistics, which train mode "
            "ignores)"
        )
    fused: dict[int, nn.Module] = {}
    if _has_fuse(model):
        fused[id(model)] = model = model.fuse()
    else:
        _fuse_children(model, fused)
    pairs = _conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        folded = fuse_conv_bn_eval(conv, bn)
        # torch gives a bias-free conv a bias with requires_grad=False; keep it trainable like
        # the weight, so fine-tuning the fused model updates it.
        folded.bias.requires_grad_(folded.weight.requires_grad)
        _set_submodule(model, conv_name, folded)
        _set_submodule(model, bn_name, nn.Identity())
    return model, {"acb": len(fused), "conv_bn": len(pairs)}


def _fuse_children(parent: nn.Module, fused: dict[int, nn.Module]) -> None:
    for name, child in list(parent.named_children()):
        if _has_fuse(child):
            if id(child) not in fused:
                fused[id(child)] = child.fuse()
            setattr(parent, name, fused[id(child)])
        else:
            _fuse_children(child, fused)


def _has_fuse(module: nn.Module) -> bool:
    # A method, not merely callable: a submodule named `fuse` (a fusion conv) is callable too.
    return inspect.ismethod(getattr(module, "fuse", None))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name), attr, module)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """A plain Conv2d feeding a plain BatchNorm2d of its width that keeps running statistics."""
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names `(conv, bn)` of the pairs to fold, each module in at most one pair."""
    # A module registered under two names (or called twice) cannot be swapped by one name.
    seen: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        seen[id(m)] = seen.get(id(m), 0) + 1
    pairs = _find_pairs(model, "")
    unique = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if seen[id(conv)] == 1 and seen[id(bn)] == 1:
            unique.append((conv_name, bn_name))
    return unique


def _find_pairs(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...) on dynamic code
        return _pairs_by_order(module, prefix, err)
    return [(prefix + c, prefix + b) for c, b in _pairs_in_graph(module, graph)]


def _pairs_in_graph(module: nn.Module, graph: fx.Graph) -> list[tuple[str, str]]:
    """Pairs where a BN's only input is a conv call whose output nothing else uses."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    # Parameters read directly (get_attr) would no longer exist after folding.
    read = {str(node.target).rpartition(".")[0] for node in graph.nodes if node.op == "get_attr"}
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv_name, bn_name = str(src.target), str(node.target)
        if calls[conv_name] != 1 or calls[bn_name] != 1 or {conv_name, bn_name} & read:
            continue
        if _foldable(module.get_submodule(conv_name), module.get_submodule(bn_name)):
            pairs.append((conv_name, bn_name))
    return pairs


def _pairs_by_order(module: nn.Module, prefix: str, err: Exception) -> list[tuple[str, str]]:
    """Fallback for an untraceable module: adjacent conv, BN children; recurse into the rest."""
    warnings.warn(
        f"fuse_model: cannot trace {prefix.rstrip('.') or type(module).__name__!r} "
        f"({type(err).__name__}); pairing its conv and BN children by registration order",
        stacklevel=4,
    )
    children = list(module.named_children())
    pairs = [
        (prefix + conv_name, prefix + bn_name)
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children)
        if _foldable(conv, bn)
    ]
    for name, child in children:
        pairs += _find_pairs(child, f"{prefix}{name}.")
    return pairs


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Conv padding as (rows, cols), resolving 'valid' and 'same' (symmetric for odd k)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        return conv.kernel_size[0] // 2, conv.kernel_size[1] // 2
    return int(conv.padding[0]), int(conv.padding[1])


class ACBlock(nn.Module):
    """Asymmetric convolution block: k x k, 1 x k and k x 1 conv, each with BN, summed.

    Built from an existing square conv (k odd >= 3, dilation 1; any stride, padding, padding
    mode, groups, with or without bias), whose weights (and bias) become the square branch. A
    bias is folded like any conv bias; the side branches have none, their BN beta covers it.

    The side branches are placed so each output pixel sees the centre row (1 x k) or column
    (k x 1) of the square window: their padding along the long axis is the square padding p and
    across it p - k//2. When p < k//2 that would be negative, so, like the official code, the
    input of that branch is cropped by k//2 - p on both sides of that axis instead.

    Args:
        conv: the square `nn.Conv2d` to strengthen; it is copied, not shared.
        side_gamma: initial BN weight of the 1 x k and k x 1 branches.
        square_gamma: initial BN weight of the k x k branch (the authors' `init_gamma(g)`
            sets all three branches to g).

    Shapes: (N, C_in, H, W) -> (N, C_out, H_out, W_out), exactly as `conv`.
    """

    def __init__(self, conv: nn.Conv2d, side_gamma: float = 1.0, square_gamma: float = 1.0) -> None:
        super().__init__()
        if not is_square_conv(conv):
            error = TypeError if type(conv) is not nn.Conv2d else ValueError
            raise error(
                f"ACBlock: conv must be a plain nn.Conv2d with a square, odd kernel of size >= 3 "
                f"and dilation 1, got {conv!r}"
            )
        k = conv.kernel_size[0]
        c = k // 2
        ph, pw = _padding(conv)
        self.kernel_size = k
        # Rows cropped from the 1 x k branch's input, columns from the k x 1 branch's.
        self.hor_crop = max(c - ph, 0)
        self.ver_crop = max(c - pw, 0)
        self.square_conv = copy.deepcopy(conv)
        like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        common = {
            "in_channels": conv.in_channels,
            "out_channels": conv.out_channels,
            "stride": conv.stride,
            "groups": conv.groups,
            "bias": False,
            "padding_mode": conv.padding_mode,
            **like,
        }
        self.hor_conv = nn.Conv2d(kernel_size=(1, k), padding=(max(ph - c, 0), pw), **common)
        self.ver_conv = nn.Conv2d(kernel_size=(k, 1), padding=(ph, max(pw - c, 0)), **common)
        self.square_bn = nn.BatchNorm2d(conv.out_channels, **like)
        self.hor_bn = nn.BatchNorm2d(conv.out_channels, **like)
        self.ver_bn = nn.BatchNorm2d(conv.out_channels, **like)
        nn.init.constant_(self.square_bn.weight, square_gamma)
        nn.init.constant_(self.hor_bn.weight, side_gamma)
        nn.init.constant_(self.ver_bn.weight, side_gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H_out, W_out): sum of the three conv+BN branches."""
        out = self.square_bn(self.square_conv(x))
        hor_x, ver_x = x, x
        if self.hor_crop:
            hor_x = x[:, :, self.hor_crop : x.shape[2] - self.hor_crop]
        if self.ver_crop:
            ver_x = x[:, :, :, self.ver_crop : x.shape[3] - self.ver_crop]
        out = out + self.hor_bn(self.hor_conv(hor_x))
        return out + self.ver_bn(self.ver_conv(ver_x))

    def fuse(self) -> nn.Conv2d:
        """One k x k conv with bias, equal to this block in eval mode (BN running statistics).

        Raises:
            ValueError: in training mode, where BN uses batch statistics and cannot be folded.
        """
        if any(m.training for m in self.modules()):
            raise ValueError(
                "ACBlock.fuse: the block must be in eval mode (it folds BatchNorm running "
                "statistics); call model.eval() first"
            )
        branches = [
            fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                bn.running_mean,
                bn.running_var,
                bn.eps,
                bn.weight,
                bn.bias,
            )
            for conv, bn in (
                (self.square_conv, self.square_bn),
                (self.hor_conv, self.hor_bn),
                (self.ver_conv, self.ver_bn),
            )
        ]
        (w, b), (w_hor, b_hor), (w_ver, b_ver) = branches
        c = self.kernel_size // 2
        with torch.no_grad():
            # The 1 x k kernel is the centre row of the k x k window, the k x 1 its centre column;
            # padding them into place is exact because convolution is linear in the kernel.
            weight = w.detach().clone()
            weight[:, :, c : c + 1, :] += w_hor
            weight[:, :, :, c : c + 1] += w_ver
            bias = b + b_hor + b_ver
        fused = copy.deepcopy(self.square_conv)
        requires_grad = self.square_conv.weight.requires_grad
        fused.weight = nn.Parameter(weight, requires_grad)
        fused.bias = nn.Parameter(bias.detach().clone(), requires_grad)
        return fused

    def extra_repr(self) -> str:
        return f"hor_crop={self.hor_crop}, ver_crop={self.ver_crop}"


ACNET = Trick(
    "acnet",
    ("classify",),
    (
        Key("model.acnet", bool),
        Key("model.acnet_side_gamma", float, note="the 1xk and kx1 branches' initial BN weight"),
        Key("model.acnet_square_gamma", float, note="the kxk branch's initial BN weight"),
    ),
    {"model.acnet": True},
    "Ding et al. 2019",
    "https://arxiv.org/abs/1908.03930",
    "train k x k + 1 x k + k x 1 branches; `freebies fuse` folds them into one conv",
)
