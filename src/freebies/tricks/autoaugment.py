"""AutoAugment and its successors, applied with each image's own random choices.

- AutoAugment: Cubuk et al. 2019, https://arxiv.org/abs/1805.09501 (cifar10, imagenet, svhn)
- RandAugment: Cubuk et al. 2020, https://arxiv.org/abs/1909.13719
- TrivialAugment: Müller & Hutter 2021, https://arxiv.org/abs/2103.10869

The policies are torchvision's (v2). Given a batch, torchvision draws one sub-policy for the
whole batch, so we apply them image by image: the op is per-image by nature. torchvision draws
from torch's global RNG, so the draws are seeded from our generator inside a forked RNG state,
which keeps runs reproducible and resumable without touching the caller's global RNG.
"""

from __future__ import annotations

import torch

from freebies.errors import nearest
from freebies.tricks.checks import scalar_device
from freebies.tricks.record import Key, Trick

POLICIES = ("none", "cifar10", "imagenet", "svhn", "randaugment", "trivialaugment")


def make_policy(name: str) -> torch.nn.Module | None:
    """The torchvision transform for a policy name, or None for "none"."""
    from torchvision.transforms import v2

    if name not in POLICIES:
        raise ValueError(
            f"make_policy: unknown augmentation policy {name!r}"
            f"{nearest(name, list(POLICIES))}; name must be one of {', '.join(POLICIES)}"
        )
    if name == "none":
        return None
    if name == "randaugment":
        return v2.RandAugment()
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    return v2.AutoAugment(v2.AutoAugmentPolicy(name))


def autoaugment(
    x: torch.Tensor, policy: torch.nn.Module | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply `policy` (from `make_policy`) to each uint8 image of x: (N, C, H, W), C = 1 or 3.

    Returns a new uint8 tensor of the same shape; `policy=None` returns x.
    """
    if policy is None:
        return x
    if x.dtype != torch.uint8 or x.ndim != 4:
        error = TypeError if x.dtype != torch.uint8 else ValueError
        raise error(f"autoaugment: x must be uint8 images (N, C, H, W), got {x.dtype} {x.ndim}-D")
    dev = scalar_device(generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return torch.stack([policy(img) for img in x])


AUTOAUGMENT = Trick(
    "autoaugment",
    ("classify",),
    (Key("aug.autoaugment", str, choices=POLICIES),),
    {"aug.autoaugment": "trivialaugment"},
    "Cubuk et al. 2019; Cubuk et al. 2020; Muller & Hutter 2021",
    "https://arxiv.org/abs/1805.09501",
    "torchvision's learned / random augmentation policies, per image",
    build=lambda s: make_policy(s["aug.autoaugment"]),
)
