"""Model registry: build a classifier by name.

Fixed names come from factories decorated with `register`; Wide ResNets are named by their
shape, `wrn-D-K` or `wrnD_K` (Zagoruyko & Komodakis 2016, https://arxiv.org/abs/1605.07146),
and airbench-style nets by their widths, `airnet-W1-W2-W3`, with `-kK` for a K x K whitening
patch instead of 2 x 2 (see `freebies.models.airnet`).
"""

import inspect
import re
from collections.abc import Callable

from torch import nn

from freebies.errors import nearest

Factory = Callable[..., nn.Module]

_REGISTRY: dict[str, Factory] = {}

# Accepted by create_model and listed by model_names, so that choices shown to a person include
# the usual Wide ResNets; any other valid wrn-D-K also works.
_WRN_EXAMPLES = ("wrn-16-4", "wrn-16-8", "wrn-28-10", "wrn-40-4")
_WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)|wrn(\d+)_(\d+)")
_AIRNET_EXAMPLES = ("airnet-32-128-128", "airnet-64-256-256")
_AIRNET_NAME = re.compile(r"airnet-(\d+)-(\d+)-(\d+)(?:-k(\d+))?")  # -kK: K x K whitening

# Supplied by create_model itself, never through **kwargs.
_FIXED_ARGS = ("num_classes", "in_channels", "depth", "width", "widths", "whiten_kernel")


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding `factory(num_classes, in_channels=3, **options)` under `name`."""

    def add(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def model_names() -> list[str]:
    """Registered names plus common Wide ResNet shapes; each is accepted by create_model."""
    return sorted(_registry()) + list(_WRN_EXAMPLES) + list(_AIRNET_EXAMPLES)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build model `name` with a `num_classes`-way linear head for `in_channels`-channel images.

    kwargs are model options, e.g. `norm="gn"` for all models, `dropout=0.3` for Wide ResNets.

    Raises:
        ValueError: `name` is not a model (the message lists the names, with a did-you-mean),
            or a size or option value is impossible.
        TypeError: a kwarg is not an option of that model (the message lists the ones it takes).
    """
    wrn = _WRN_NAME.fullmatch(name)
    if wrn:
        from freebies.models.resnet import wide_resnet

        depth, width = (int(g) for g in wrn.groups() if g is not None)
        _check_kwargs(name, wide_resnet, kwargs)
        return wide_resnet(depth, width, num_classes, in_channels, **kwargs)
    air = _AIRNET_NAME.fullmatch(name)
    if air:
        from freebies.models.airnet import airnet

        *widths, k = (int(g) if g else 2 for g in air.groups())
        if min(widths) < 1 or not 1 <= k <= 5:
            raise ValueError(
                f"create_model: name {name!r}: every width must be at least 1 and the "
                "whitening patch -kK between 1 and 5"
            )
        _check_kwargs(name, airnet, kwargs)
        return airnet(tuple(widths), num_classes, in_channels, whiten_kernel=k, **kwargs)
    factory = _registry().get(name)
    if factory is None:
        names = sorted(_REGISTRY)
        raise ValueError(
            f"create_model: unknown model {name!r}{nearest(name, model_names())}; "
            f"name must be one of: "
            f"{', '.join(names)}, wrn-D-K with D = 6n+4 (e.g. wrn-28-10), or airnet-W1-W2-W3[-kK] "
            "(e.g. airnet-64-256-256)"
        )
    _check_kwargs(name, factory, kwargs)
    return factory(num_classes, in_channels, **kwargs)


def _check_kwargs(name: str, factory: Factory, kwargs: dict[str, object]) -> None:
    """Reject options the factory does not take, naming them and the ones it does."""
    params = inspect.signature(factory).parameters
    allowed = [p for p in params if p not in _FIXED_ARGS]
    bad = [k for k in kwargs if k not in allowed]
    if bad:
        hint = nearest(bad[0], allowed) if len(bad) == 1 else ""
        raise TypeError(
            f"create_model: model {name!r} does not take option(s) "
            f"{', '.join(map(repr, bad))}{hint}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )


def _registry() -> dict[str, Factory]:
    """The registry, filled on first use: model modules import `register` from this package."""
    import freebies.models.resnet  # noqa: F401  (registers its factories)

    return _REGISTRY
