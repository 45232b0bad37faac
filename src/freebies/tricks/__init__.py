"""The seed notes' training tricks, each a pure function on batched tensors."""

from freebies.tricks.targets import one_hot, smooth_targets

__all__ = ["one_hot", "smooth_targets"]
