"""Lookahead as airbench does it (Zhang et al. 2019, "Lookahead Optimizer: k steps forward,
1 step back", https://arxiv.org/abs/1907.08610; schedule from Keller Jordan's airbench94,
https://github.com/KellerJordan/cifar10-airbench).

Every `every` steps a slow copy of the weights moves towards the live ones,
slow <- pull * slow + (1 - pull) * live, and the live weights are reset to it. The pull grows
through the run, decay^every * (t / T)^3: nothing early, strong near the end. At the last step
the live weights become the slow copy. The slow copy lives in the optimizer's state (key
"slow"), so it is checkpointed and resumed with the optimizer.
"""

from __future__ import annotations

import torch

from freebies.tricks.record import Key, Trick


@torch.no_grad()
def lookahead_step(
    opt: torch.optim.Optimizer, step: int, total_steps: int, every: int = 5, decay: float = 0.95
) -> None:
    """Call after optimizer step number `step` (1-based) of `total_steps`."""
    if every < 1 or not 0 <= decay <= 1 or total_steps < 1:
        raise ValueError(
            f"lookahead_step: need every >= 1, decay in [0, 1], total_steps >= 1, got "
            f"{every}, {decay}, {total_steps}"
        )
    last = step >= total_steps
    if step % every and not last:
        return
    pull = 1.0 if last else decay**every * (step / total_steps) ** 3
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if "slow" not in state:
                state["slow"] = p.detach().clone()
            slow = state["slow"]
            slow.lerp_(p, 1 - pull)
            p.copy_(slow)


LOOKAHEAD = Trick(
    "lookahead",
    ("classify", "detect"),
    (
        Key("optim.lookahead_every", int, "[0, inf)", note="steps; 0 = off"),
        Key("optim.lookahead_decay", float, "[0, 1]"),
    ),
    {"optim.lookahead_every": 5},
    "Zhang et al. 2019; schedule from airbench94 (Jordan 2024)",
    "https://arxiv.org/abs/1907.08610",
    "every N steps pull the weights to a slow copy, harder near the end; end on the slow copy",
)
